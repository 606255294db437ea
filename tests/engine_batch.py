"""A small, fixed GRPO batch of real SmolLM2 token ids, shared by the engine tests and the
two-process worker (tests/engine_worker.py) so that both sides train on exactly the same rows."""

from __future__ import annotations

import torch

from grpo.models import resolve_model
from grpo.rollouts import Rollouts

PROMPTS = ["What is 2 + 3?", "Name a colour of the sky.", "Say hi.", "Count to three."]
# Two completions per prompt (G = 2), of different lengths so that padding is exercised.
ANSWERS = [["2 + 3 = 5.", "The answer is five"], ["Blue.", "The sky is often blue"],
           ["Hi!", "Hello there, hi"], ["One, two, three.", "1 2 3"]]
# One group with equal rewards (A = 0) and the others with both signs.
ADVANTAGES = [0.7, -0.7, 1.0, -1.0, 0.0, 0.0, -0.4, 0.4]
GROUP_SIZE = 2


def make_batch() -> tuple[Rollouts, torch.Tensor]:
    """(rollouts [8 rows], advantages [8]) from the packaged tokenizer; deterministic."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(None))
    prompt_ids, completion_ids, logprobs, texts, prompts = [], [], [], [], []
    for prompt, answers in zip(PROMPTS, ANSWERS):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        for answer in answers:
            c = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            prompt_ids.append(p)
            completion_ids.append(c)
            # A sampler's log-probs only feed the logprob_gap metric; any fixed values do.
            logprobs.append([-1.0 - 0.1 * i for i in range(len(c))])
            texts.append(answer)
            prompts.append(prompt)
    rollouts = Rollouts.from_lists(prompt_ids, completion_ids, logprobs,
                                   [False] * len(texts), texts, prompts, GROUP_SIZE,
                                   pad_id=tok.pad_token_id if tok.pad_token_id is not None
                                   else tok.eos_token_id)
    return rollouts, torch.tensor(ADVANTAGES)


def rank_rows(num_rows: int, rank: int, world_size: int) -> list[int]:
    """Rank r's contiguous share of the rows (whole groups, as a trainer splits prompts)."""
    per = num_rows // world_size
    return list(range(rank * per, (rank + 1) * per))


def gradients(engine, rollouts: Rollouts, advantages: torch.Tensor,
              loss_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The full gradient of the engine's first update on this batch, without the optimizer step:
    the engine's own step pieces (grpo.engine.step), read back and then dropped. Collective under
    DeepSpeed: every rank calls it, with its own rows."""
    from grpo.engine.step import _SUMS

    batch = engine._prepare(rollouts, advantages, loss_mask)
    engine._accumulate(batch, dict.fromkeys(_SUMS, torch.zeros((), dtype=torch.float64)), True)
    if hasattr(engine, "ds"):  # DeepSpeedEngine: each gradient gathered and averaged over ranks
        from deepspeed.utils import safe_get_full_grad

        grads = {n: safe_get_full_grad(p) for n, p in engine.model.named_parameters()}
        engine.ds.optimizer.zero_grad(set_to_none=True)
    else:
        grads = {n: p.grad for n, p in engine.model.named_parameters()}
        engine.optimizer.zero_grad(set_to_none=True)
    return {n: None if g is None else g.detach().clone() for n, g in grads.items()}
