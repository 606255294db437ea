"""HFSampler: the GroupSampler interface on transformers `generate`.

For models vLLM can't run, and the baseline vLLM is measured against. Same `sample` /
`load_weights` / `close` / `tokenizer` as VLLMSampler.
"""

from __future__ import annotations

import gc
import time
from typing import Iterable

import torch
from torch import Tensor

from grpo.models import resolve_model
from grpo.rollouts import Rollouts
from grpo.sampler.base import (call_settings, check_first_row, check_settings, collect_weights,
                               tokenize_prompts)
from grpo.seeds import derive_seed


class _RecordChosenLogprobs:
    """A logits processor run last in `generate`: it keeps the final (temperature-scaled, top-p
    masked) log-softmax of one step and, at the next step, picks the token that was sampled.
    Holds [N, V] for one step only; `output_scores` would hold all T steps (3.2 GB at 64 x 256)."""

    def __init__(self):
        self.previous: Tensor | None = None  # [N, V]
        self.chosen: list[Tensor] = []  # T of [N]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:  # [N, L], [N, V]
        self._pick(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _pick(self, tokens: Tensor) -> None:  # [N]
        if self.previous is not None:
            self.chosen.append(self.previous.gather(1, tokens[:, None]).squeeze(1))

    def finish(self, last_tokens: Tensor) -> Tensor:  # [N] -> [N, T]
        self._pick(last_tokens)
        return torch.stack(self.chosen, dim=1)


class HFSampler:
    """The same interface on transformers `generate`: for models vLLM can't run, and the baseline.

    Log-probs are those of the processed distribution (temperature, then top-p), like vLLM's;
    top_k is switched off (transformers would default to 50). Prompts are left-padded and
    generated together; rows stop at the model's EOS. One generator draws the whole call's noise,
    so unlike VLLMSampler a batch split over ranks does not draw what one process would.
    """

    def __init__(self, model, group_size: int, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, *, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

        check_settings(group_size, max_tokens, temperature, top_p)
        if isinstance(model, PreTrainedModel):
            self.model, path = model, model.config._name_or_path
        else:
            path = resolve_model(model)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
        if device is not None or dtype is not None:
            self.model.to(device=device, dtype=dtype)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.group_size, self.max_tokens, self.seed = group_size, max_tokens, seed
        self.temperature, self.top_p = temperature, top_p
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos_ids)
        self.max_model_len = getattr(self.model.config, "max_position_embeddings", 1 << 30)
        self.last_load_seconds: float | None = None

    @torch.no_grad()
    def sample(self, prompts: list[str], *, seed: int | None = None, first_row: int = 0,
               group_size: int | None = None, temperature: float | None = None,
               max_tokens: int | None = None) -> Rollouts:
        """G completions per prompt, grouped contiguously (see VLLMSampler.sample).

        Not split-invariant: `generate` draws the whole call's noise from one generator, so a
        row's completion depends on the other rows of its call. The generator is seeded with
        `seed` (first_row 0) or `derive_seed(seed, first_row)`, so calls of different ranks
        with the same seed still draw different noise, but two ranks do not draw what one
        process would."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        g, temp, m = call_settings(self, group_size, temperature, max_tokens)
        check_first_row(first_row)
        call_seed = self.seed if seed is None else seed
        if first_row:
            call_seed = derive_seed(call_seed, first_row)
        ids = tokenize_prompts(self.tokenizer, prompts, self.max_model_len)
        rows = [i for i in range(len(ids)) for _ in range(g)]
        p = max(len(x) for x in ids)
        device = self.model.device
        input_ids = torch.full((len(rows), p), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for r, i in enumerate(rows):
            input_ids[r, p - len(ids[i]):] = torch.tensor(ids[i])
            attention_mask[r, p - len(ids[i]):] = 1
        # generate runs custom processors before its own warpers, so the warpers are ours and
        # the recorder comes after them; generate's are off (temperature 1, top_p 1, top_k 0).
        recorder, processors = _RecordChosenLogprobs(), []
        sampling = dict(do_sample=temp > 0)
        if temp > 0:
            sampling.update(temperature=1.0, top_p=1.0, top_k=0)
            processors.append(TemperatureLogitsWarper(temp))
            if self.top_p < 1:
                processors.append(TopPLogitsWarper(self.top_p))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(call_seed)
            out = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=m, pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids),
                logits_processor=LogitsProcessorList(processors + [recorder]), **sampling)
        generated = out[:, p:].cpu()  # [N, T']
        logprobs = recorder.finish(generated[:, -1].to(device)).cpu()  # [N, T']
        completions, lps, truncated = [], [], []
        for r in range(len(rows)):
            row = generated[r].tolist()
            end = next((k + 1 for k, t in enumerate(row) if t in self.eos_ids), None)
            truncated.append(end is None)
            end = len(row) if end is None else end
            completions.append(row[:end])
            lps.append(logprobs[r, :end].tolist())
        texts = self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        return Rollouts.from_groups(ids, prompts, completions, lps, truncated, texts, g,
                                    self.pad_id)

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Copy new weights into the model (names as in its state dict); all of them required."""
        start = time.perf_counter()
        required = set(self.model.state_dict().keys())
        if getattr(self.model.config, "tie_word_embeddings", False):
            required.discard("lm_head.weight")
        weights = collect_weights(named_tensors, required)
        unknown = sorted(weights.keys() - self.model.state_dict().keys())
        if unknown:
            raise ValueError(f"load_weights: names not in the model: {unknown[:5]}")
        self.model.load_state_dict(weights, strict=False)
        self.last_load_seconds = time.perf_counter() - start

    def close(self) -> None:
        self.__dict__.pop("model", None)
        gc.collect()
