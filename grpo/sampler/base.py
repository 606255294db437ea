"""What a group sampler is (`GroupSampler`) and what both samplers (VLLMSampler, HFSampler)
accept: argument checks, prompt tokenisation against the engine's context, and the one-dict
weight push. Each check raises a ValueError or TypeError that names the bad argument."""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

from torch import Tensor

from grpo.rollouts import Rollouts


@runtime_checkable
class GroupSampler(Protocol):
    """What a training loop needs from a sampler."""

    tokenizer: object
    group_size: int  # G in DeepSeekMath

    def sample(self, prompts: list[str], *, seed: int | None = None, first_row: int = 0,
               group_size: int | None = None, temperature: float | None = None,
               max_tokens: int | None = None) -> Rollouts:
        """N = B*G completions, rows [i*G, (i+1)*G) answering prompts[i]. `first_row` is the
        index of this call's first row in the whole batch that `seed` was drawn for (a rank's
        offset in the step's batch over all ranks): a split-invariant sampler seeds row r by
        (seed, first_row + r), so one call or several calls with the same seed draw the same
        completions."""

    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None: ...

    def close(self) -> None: ...


def check_settings(group_size: int, max_tokens: int, temperature: float, top_p: float) -> None:
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2 (GRPO compares completions within a "
                         f"group), got {group_size!r}")
    check_call(group_size, max_tokens, temperature)
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def call_settings(sampler, group_size, temperature, max_tokens) -> tuple[int, float, int]:
    """A `sample` call's (G, temperature, max_tokens): the sampler's own where None, checked."""
    g = sampler.group_size if group_size is None else group_size
    temp = sampler.temperature if temperature is None else temperature
    m = sampler.max_tokens if max_tokens is None else max_tokens
    check_call(g, m, temp)
    return g, temp, m


def check_first_row(first_row: int) -> None:
    if not isinstance(first_row, int) or isinstance(first_row, bool) or first_row < 0:
        raise ValueError(f"first_row must be an int >= 0, got {first_row!r}")


def check_call(group_size: int, max_tokens: int, temperature: float) -> None:
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")


def tokenize_prompts(tokenizer, prompts: list[str], context: int) -> list[list[int]]:
    """Token ids of each rendered prompt, checked against the context the engine allows."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: nothing to sample")
    ids = []
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompts[{i}] must be a non-empty string, got {prompt!r:.60}")
        row = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(row) >= context:
            raise ValueError(f"prompts[{i}] has {len(row)} tokens, but the model's context is "
                             f"{context}: no room for a completion")
        ids.append(row)
    return ids


def collect_weights(named_tensors: Iterable[tuple[str, Tensor]], required: set[str] | None
                    ) -> dict[str, Tensor]:
    """The whole push as one dict; refuses a partial one, which corrupts fused layers."""
    weights = {}
    for name, tensor in named_tensors:
        if not isinstance(tensor, Tensor):
            raise TypeError(f"load_weights: {name!r} is a {type(tensor).__name__}, not a Tensor")
        weights[name] = tensor.detach()
    if not weights:
        raise ValueError("load_weights got no tensors")
    if required is not None:
        missing = sorted(required - weights.keys())
        if missing:
            raise ValueError(
                f"load_weights got {len(weights)} tensors but misses {len(missing)} of the "
                f"checkpoint's (e.g. {missing[:3]}): push the whole state dict, a partial push "
                "of a fused weight (q without k, v) corrupts the layer on vLLM's CPU build")
    return weights
