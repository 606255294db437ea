"""VLLMSampler: G completions per prompt from an in-process vLLM engine (the CPU build here,
CUDA on GPUs), with the sampler's own log-prob of every token; it takes new weights in place
after each optimizer step, or (LoRA) a new adapter. Why prompts go in as token ids, which
log-probs are recorded, how rows are seeded, why a weight push must be whole, how an adapter
is synced, and how one engine per rank shares cores or a GPU with its trainer:
docs/architecture.md, "Sampler".
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from grpo.models import resolve_model
from grpo.rollouts import Rollouts
from grpo.sampler.base import (call_settings, check_first_row, check_settings, collect_weights,
                               tokenize_prompts)
from grpo.seeds import splitmix64

GiB = 1 << 30
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's MaxLoRARanks
_EMBEDDING_NAMES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")


def _row_seed(seed: int, row: int) -> int:
    """The seed of completion `row` in a call with seed `seed`: a 32-bit hash of the call seed
    plus the row. torch's CPU generator keeps only a seed's low 32 bits (5 * 2^32 and 6 * 2^32
    draw the same numbers), so every row seed must differ in those bits: rows of one call always
    do; rows of two calls collide with probability ~ rows / 2^32."""
    return (splitmix64(seed) + row) % 2**32


def _checkpoint_names(path: str) -> set[str] | None:
    """Tensor names in a local model's safetensors files (None if unknown, e.g. a hub id)."""
    files = sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    names = set()
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            names.update(handle.keys())
    return names


def _lora_rank_slot(rank: int) -> int:
    """The smallest rank vLLM accepts for `max_lora_rank` that holds an adapter of rank r."""
    fits = [r for r in _VLLM_LORA_RANKS if r >= rank]
    if rank < 1 or not fits:
        raise ValueError(f"max_lora_rank must be in 1..{_VLLM_LORA_RANKS[-1]} (vLLM's limit), "
                         f"got {rank}")
    return fits[0]


def _on_cuda() -> bool:
    return torch.cuda.is_available()


def _check_engine_options(cuda: bool, kv_cache_memory_gb: float | None, enable_sleep_mode: bool,
                          tensor_parallel_size: int) -> None:
    if kv_cache_memory_gb is None and not cuda:
        raise ValueError("kv_cache_memory_gb=None is only for CUDA (sized by "
                         "gpu_memory_utilization); on CPU vLLM would reserve 92% of RAM")
    if kv_cache_memory_gb is not None and kv_cache_memory_gb <= 0:
        raise ValueError(f"kv_cache_memory_gb must be > 0, got {kv_cache_memory_gb}")
    if enable_sleep_mode and not cuda:
        raise ValueError("enable_sleep_mode needs CUDA: vLLM's CPU build ignores sleep()")
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")


def _cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX-512 BF16 or AMX); Linux only, else assume yes."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


class VLLMSampler:
    """G completions per prompt from an in-process vLLM engine that takes new weights in place.

    Memory: on CPU the KV cache is `kv_cache_memory_gb` (required: vLLM's default would reserve
    92 % of the machine); on CUDA, None sizes it from `gpu_memory_utilization`, and
    `enable_sleep_mode` allows `sleep()`/`wake_up()`. Threads (CPU): the engine computes on the
    process's torch threads; `num_threads` sets them (None keeps the current count), which vLLM
    would otherwise cut to 1 and lock. `max_lora_rank` (the adapter's r) starts the engine with
    LoRA support, so that `load_adapter` can take a LoRA adapter instead of whole weights.
    """

    def __init__(self, model: str, group_size: int, max_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, *, dtype: str = "auto",
                 kv_cache_memory_gb: float | None = 1.0, enforce_eager: bool = False,
                 gpu_memory_utilization: float = 0.5, enable_sleep_mode: bool = False,
                 tensor_parallel_size: int = 1, max_model_len: int | None = None,
                 stop: list[str] | None = None, num_threads: int | None = None,
                 max_lora_rank: int | None = None):
        check_settings(group_size, max_tokens, temperature, top_p)
        cuda = _on_cuda()
        _check_engine_options(cuda, kv_cache_memory_gb, enable_sleep_mode, tensor_parallel_size)
        self.model_path = resolve_model(model)
        self.group_size, self.max_tokens, self.seed = group_size, max_tokens, seed
        self.temperature, self.top_p, self.stop = temperature, top_p, stop
        self.tensor_parallel_size = tensor_parallel_size
        self.enable_sleep_mode, self._asleep = enable_sleep_mode, False
        self.last_load_seconds: float | None = None  # wall time of the last load_weights
        # In-process engine: weights can be pushed as tensors, failures raise here instead of in
        # a child process, and nothing can hang on a dead engine core.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        # Unless OMP_NUM_THREADS is set, vLLM drops torch to 1 thread for the whole process (the
        # trainer's too) and then makes torch.set_num_threads a no-op; setting the variable keeps
        # the thread count we choose here (the process's current one by default).
        if num_threads is not None:
            torch._C.set_num_threads(num_threads)  # not the public call: vLLM may have patched it
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        from vllm import LLM

        if dtype == "auto" and not cuda and not _cpu_has_bf16():
            dtype = "float32"  # vLLM's CPU default is bf16, emulated (~2x slower) without AVX-512
        kwargs = dict(model=self.model_path, dtype=dtype, seed=seed, enforce_eager=enforce_eager,
                      tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                      gpu_memory_utilization=gpu_memory_utilization,
                      enable_sleep_mode=enable_sleep_mode, logprobs_mode="processed_logprobs")
        if not cuda:
            # Per-request seeds + chunked prefill crash the CPU build: a partly prefilled request
            # rewinds its torch.Generator offset, which CPU generators don't support ("CPU
            # Generator does not use offset"). Whole prompts only, and room for the longest.
            kwargs.update(enable_chunked_prefill=False,
                          max_num_batched_tokens=max(max_model_len or 0, 8192))
        if kv_cache_memory_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_gb * GiB)
        if max_lora_rank is not None:
            kwargs.update(enable_lora=True, max_lora_rank=_lora_rank_slot(max_lora_rank),
                          max_loras=1)
        self._lora_request, self._lora_dir = None, None  # the adapter sampled with, its files
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:  # keep vLLM's own message, say which model failed
            raise RuntimeError(f"vLLM could not start {self.model_path}: "
                               f"{type(e).__name__}: {e}") from e
        self.tokenizer = self.llm.get_tokenizer()
        model_config = self.llm.llm_engine.model_config
        self.max_model_len = model_config.max_model_len
        self._required = _checkpoint_names(self.model_path)
        self._tied = bool(getattr(model_config.hf_config, "tie_word_embeddings", False))
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.tokenizer.eos_token_id if pad is None else pad

    def sample(self, prompts: list[str], *, seed: int | None = None, first_row: int = 0,
               group_size: int | None = None, temperature: float | None = None,
               max_tokens: int | None = None) -> Rollouts:
        """G completions of each prompt, rows [i*G, (i+1)*G) answering prompts[i].

        `seed` overrides the sampler's seed for this call (the trainer passes
        `derive_seed(seed, step, round)`); row r draws with `_row_seed(seed, first_row + r)`,
        so a batch split over calls (ranks) with the same seed and each call's `first_row`
        draws what one call would. `temperature=0` samples greedily (use group_size=1 for
        evaluation).
        """
        from vllm import SamplingParams

        g, temp, m = call_settings(self, group_size, temperature, max_tokens)
        check_first_row(first_row)
        if self._asleep:
            raise RuntimeError("the engine is asleep: call wake_up() before sample()")
        ids = tokenize_prompts(self.tokenizer, prompts, self.max_model_len)
        call_seed = self.seed if seed is None else seed
        requests, params = [], []
        for i, row_ids in enumerate(ids):
            for j in range(g):
                requests.append({"prompt_token_ids": row_ids})
                params.append(SamplingParams(
                    n=1, temperature=temp, top_p=self.top_p, max_tokens=m, logprobs=0,
                    seed=_row_seed(call_seed, first_row + i * g + j), stop=self.stop))
        outputs = self.llm.generate(requests, params, use_tqdm=False,
                                    lora_request=self._lora_request)
        return self._to_rollouts(outputs, prompts, ids, g)

    def _to_rollouts(self, outputs, prompts, ids, g) -> Rollouts:
        completions, logprobs, truncated, texts = [], [], [], []
        for out in outputs:
            c = out.outputs[0]
            token_ids = list(c.token_ids)
            if c.logprobs is None or len(c.logprobs) != len(token_ids):
                raise RuntimeError(f"vLLM returned {len(c.logprobs or [])} log-probs for "
                                   f"{len(token_ids)} tokens")
            completions.append(token_ids)
            logprobs.append([step[t].logprob for step, t in zip(c.logprobs, token_ids)])
            truncated.append(c.finish_reason == "length")
            texts.append(c.text)
        return Rollouts.from_groups(ids, prompts, completions, logprobs, truncated, texts, g,
                                    self.pad_id)

    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Replace the engine's weights in place (checkpoint names, e.g. an HF state dict).

        The whole state dict is collected first and reloaded in one call, then the prefix cache
        is reset (cached KV was computed by the old weights). With tied embeddings the
        embedding is also sent as `lm_head.weight`; dtypes are converted to the engine's. An
        adapter loaded with `load_adapter` stays on top of the new weights.
        """
        if self._asleep:
            raise RuntimeError("the engine is asleep: call wake_up() before load_weights()")
        start = time.perf_counter()
        weights = collect_weights(named_tensors, self._required)
        if self._tied:
            # Measured on the CPU build: a push without lm_head.weight leaves the output layer's
            # repacked copy stale (the old embedding), and one with a different lm_head wins
            # over the embedding. Tied means equal: send the new embedding under both names.
            emb = [k for k in weights if k.endswith(_EMBEDDING_NAMES)]
            if len(emb) == 1:
                weights["lm_head.weight"] = weights[emb[0]]
        if self.tensor_parallel_size > 1:
            self._reload_from_disk(weights)
        else:  # in-process workers: pass the tensors themselves, no copy
            self.llm.collective_rpc("reload_weights",
                                    kwargs={"weights_iterator": list(weights.items())})
        self._reset_prefix_cache()
        self.last_load_seconds = time.perf_counter() - start

    def load_adapter(self, named_tensors: Iterable[tuple[str, Tensor]], config: dict) -> None:
        """Sample from now on with this LoRA adapter on the engine's base weights (PEFT's tensor
        names and adapter_config.json content, e.g. `engine.adapter_weights()` and
        `engine.adapter_config()`). The engine needs `max_lora_rank` >= the adapter's r.

        vLLM loads adapters from a directory: the adapter is written to a private temporary
        folder (a few MB) and loaded under a new name and id; the previous one is removed. The
        prefix cache needs no reset: vLLM keys cached blocks by the adapter's name."""
        from vllm.lora.request import LoRARequest

        from grpo.engine.lora import write_adapter

        if self.llm.llm_engine.vllm_config.lora_config is None:
            raise RuntimeError("load_adapter needs VLLMSampler(..., max_lora_rank=r): this "
                               "engine was started without LoRA support")
        start = time.perf_counter()
        if self._lora_dir is None:
            self._lora_dir = tempfile.TemporaryDirectory(prefix="grpo-adapter-")
        old = self._lora_request
        new_id = 1 if old is None else old.lora_int_id + 1
        path = os.path.join(self._lora_dir.name, f"adapter-{new_id}")
        write_adapter(path, {k: v.detach().cpu().contiguous() for k, v in named_tensors}, config)
        request = LoRARequest(f"policy-{new_id}", new_id, path)
        self.llm.llm_engine.add_lora(request)  # loads (and checks) it now, not at sample time
        self._lora_request = request
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)
        self.last_load_seconds = time.perf_counter() - start

    def _reset_prefix_cache(self) -> None:
        # vLLM refuses (returns False, logs a warning) while any KV block is still held; the
        # cached prompt blocks would then keep the old weights' keys and values, and the next
        # samples would come from a mix of old and new policy with nothing else to show it.
        if self.llm.reset_prefix_cache() is False:  # (None from vLLM versions that never tell)
            raise RuntimeError("vLLM could not reset its prefix cache after new weights (KV "
                               "blocks still in use: is a request still running?); the cached "
                               "prompts would be scored with the old weights")

    def _reload_from_disk(self, weights: dict[str, Tensor]) -> None:
        """For workers in other processes (tensor parallelism), which can't receive tensors."""
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory(prefix="grpo-weights-") as tmp:
            # clone: safetensors refuses tensors that share memory (views of one buffer)
            save_file({k: v.cpu().clone(memory_format=torch.contiguous_format)
                       for k, v in weights.items()},
                      os.path.join(tmp, "model.safetensors"))
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": tmp})

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory for the train step. Level 1 keeps the weights in CPU memory; level 2
        drops them, so call load_weights after wake_up (what a trainer does anyway)."""
        if not self.enable_sleep_mode:
            raise RuntimeError("sleep() needs VLLMSampler(..., enable_sleep_mode=True) on CUDA")
        self.llm.sleep(level=level)
        self._asleep = True

    def wake_up(self) -> None:
        if not self.enable_sleep_mode:
            raise RuntimeError("wake_up() needs VLLMSampler(..., enable_sleep_mode=True) on CUDA")
        self.llm.wake_up()
        self._reset_prefix_cache()
        self._asleep = False

    def close(self) -> None:
        """Shut the engine down and free its memory (the object is unusable afterwards)."""
        llm = self.__dict__.pop("llm", None)
        if self._lora_dir is not None:
            self._lora_dir.cleanup()
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()

