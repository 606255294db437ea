"""The shared-prompt forward: each group's prompt through the model's body once, not G times.

The G completions of a group share their prompt. Per micro-batch, the U distinct prompts (equal
ids and mask) run first with `use_cache=True`; their KV cache is expanded to the N rows with
`index_select` (differentiable: backward sums the rows' gradients into the prompt) and the
completions run on top of it with the full 2D mask. Log-probs and gradients equal the full
forward's up to float reassociation, at (U*P + N*T) / (N*(P + T)) of its body's cost for U
distinct prompts of P tokens. The full forward runs instead when no prompt repeats, and for
models where the cached path is not exact (`_cached_forward_is_exact`).

Both paths move each prompt's left padding to its right end (`pads_after_prompt`) before the body
runs, so that no query row is fully masked: a left pad sees only pads, and CUDA's bf16 attention
kernels return non-finite gradients for such rows (measured on an H200, torch 2.11), which reach
every weight through 0 x NaN in the backward, and the step is skipped. A pad after the prompt
sees the prompt. Attention depends only on the mask and the positions, which are counted from
the mask, so the real tokens' hidden states are the same as in the left-padded layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Attention backends whose cached forward (T new queries on P cached keys, a 2D padding mask) is
# exact for left-padded prompts and right-padded completions: eager and sdpa build the 4D mask
# from the cache length; the flash-attention varlen kernels (FA >= 2.1) align the causal mask
# bottom-right, so completion query j of a row sees its unpadded prompt plus completion keys up
# to j. Anything else (flex, paged, hub kernels) takes the full forward: not checked here.
SHARED_PROMPT_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3",
                           "flash_attention_4")


def completion_hidden(
    base_model: torch.nn.Module,  # a transformers decoder body (`causal_lm.base_model`)
    input_ids: Tensor,  # [N, P + T] left-padded prompt followed by the completion
    attention_mask: Tensor,  # [N, P + T]
    num_completion_tokens: int,  # T
    share_prompts: bool = True,
) -> Tensor:  # [N, T, H]: row n, column i is the final hidden state that predicts token P + i
    """Final hidden states at the positions that predict each completion token (P - 1 + i).

    Positions are counted from each row's first real token (cumsum of the attention mask), so a
    left-padded prompt scores exactly as the same prompt unpadded does in the sampler. With
    `share_prompts`, rows whose prompt (ids and mask) is equal run it once (module docstring);
    the full forward is used when no prompt repeats, or the model cannot take the cached path.
    """
    t = num_completion_tokens
    p = input_ids.shape[1] - t
    last = None  # [N] the column of each row's last prompt token, once the pads are moved
    if p > 0 and t > 0:
        input_ids, attention_mask, last = pads_after_prompt(input_ids, attention_mask, p)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    groups = None
    if last is not None and share_prompts and _cached_forward_is_exact(base_model):
        groups = prompt_groups(input_ids[:, :p], attention_mask[:, :p])
    if groups is None:
        hidden = base_model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids, use_cache=False).last_hidden_state
        if last is None:  # no prompt, or nothing to predict
            return hidden[:, -t - 1:-1]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return torch.cat([hidden[rows, last].unsqueeze(1), hidden[:, p:p + t - 1]], dim=1)
    first, inverse = groups  # [U] a row holding each distinct prompt, [N] its prompt's index
    prefix = base_model(input_ids=input_ids[first, :p], attention_mask=attention_mask[first, :p],
                        position_ids=position_ids[first, :p], use_cache=True)
    from transformers import DynamicCache

    # A fresh cache of the prompt's keys and values per row: index_select is differentiable
    # (its backward sums the rows into the prompt), and the prefix cache is left untouched.
    cache = DynamicCache(ddp_cache_data=[
        (layer.keys.index_select(0, inverse), layer.values.index_select(0, inverse))
        for layer in prefix.past_key_values.layers])
    completion = base_model(input_ids=input_ids[:, p:], attention_mask=attention_mask,
                            position_ids=position_ids[:, p:], past_key_values=cache,
                            use_cache=True).last_hidden_state  # [N, T, H]
    last_prompt = prefix.last_hidden_state[torch.arange(len(first), device=first.device),
                                           last[first]].index_select(0, inverse)  # [N, H]
    return torch.cat([last_prompt.unsqueeze(1), completion[:, :-1]], dim=1)


def pads_after_prompt(
    input_ids: Tensor,  # [N, P + T] left-padded prompt followed by the completion
    attention_mask: Tensor,  # [N, P + T]
    p: int,  # P > 0
) -> tuple[Tensor, Tensor, Tensor]:  # ids, mask (the prompt's pads at its right end), last [N]
    """Rotates each row's first P columns so that the prompt's left padding follows it; `last[n]`
    is the column of row n's last prompt token."""
    pads = (p - attention_mask[:, :p].long().sum(-1)).clamp(max=p - 1)  # an empty prompt: as is
    if not pads.any():
        return input_ids, attention_mask, torch.full_like(pads, p - 1)
    index = (torch.arange(p, device=input_ids.device) + pads.unsqueeze(1)) % p  # [N, P]
    ids = torch.cat([input_ids[:, :p].gather(1, index), input_ids[:, p:]], dim=1)
    mask = torch.cat([attention_mask[:, :p].gather(1, index), attention_mask[:, p:]], dim=1)
    return ids, mask, p - 1 - pads


def prompt_groups(
    prompt_ids: Tensor,  # [N, P]
    prompt_mask: Tensor,  # [N, P]
) -> tuple[Tensor, Tensor] | None:  # first [U], inverse [N]; None when all N prompts differ
    """The distinct prompts: `first[u]` is the first row holding prompt u, `inverse[n]` the
    prompt of row n, in order of first appearance (deterministic)."""
    n = prompt_ids.shape[0]
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)
    unique, sorted_inverse = torch.unique(rows, dim=0, return_inverse=True)  # sorted order
    u = unique.shape[0]
    if u == n:
        return None
    arange = torch.arange(n, device=prompt_ids.device)
    first = torch.full((u,), n, device=prompt_ids.device).scatter_reduce(
        0, sorted_inverse, arange, "amin")
    order = first.argsort()  # renumber the prompts by first appearance
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(u, device=order.device))
    return first[order], rank[sorted_inverse]


def _cached_forward_is_exact(base_model: torch.nn.Module) -> bool:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = base_model.config
    if getattr(config, "_attn_implementation", "eager") not in SHARED_PROMPT_ATTENTION:
        return False
    # Checkpointed decoder layers drop past_key_values in training mode (transformers'
    # GradientCheckpointingLayer: a layer that writes the cache would write it again when
    # replayed in backward), so the completions would not see the prompt at all.
    if getattr(base_model, "is_gradient_checkpointing", False) and base_model.training:
        return False
    # Plain full-attention layers only: a sliding-window or linear-attention layer keeps a
    # different state than the prompt's keys and values.
    layers = DynamicCache(config=config).layers
    return all(type(layer) is DynamicLayer for layer in layers)
