"""`Rollouts`: the one batch type that flows from the sampler to the engine.

N = B * G completions, grouped contiguously (rows [g*G, (g+1)*G) answer prompt g). Prompts are
left-padded to P, completions right-padded to T, so `input_ids` = prompt ++ completion puts every
completion at the same columns [P, P+T).

`completion_mask` is built from each completion's length, never from `ids != pad_id`: many
tokenizers pad with their EOS id, and a mask built from the pad id would hide the real EOS (the
token that teaches the model to stop) from the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class Rollouts:
    prompt_ids: Tensor  # [N, P] left-padded prompt token ids (each prompt repeated G times)
    prompt_mask: Tensor  # [N, P] 1 on real prompt tokens
    completion_ids: Tensor  # [N, T] right-padded completion token ids
    completion_mask: Tensor  # [N, T] 1 on generated tokens (EOS included), 0 on padding
    sampler_logprobs: Tensor  # [N, T] the sampler's log-prob of each sampled token (0 on padding)
    truncated: Tensor  # [N] bool: stopped by max_tokens, not by EOS / a stop string
    texts: list[str]  # [N] decoded completions
    prompts: list[str]  # [N] the prompt text each completion answers
    group_size: int  # G in DeepSeekMath

    def __post_init__(self):
        n = self.completion_ids.shape[0]
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "group_size" and len(value) != n:
                raise ValueError(f"Rollouts.{f.name} has {len(value)} rows, expected N={n}")
        if self.completion_mask.shape != self.completion_ids.shape:
            raise ValueError(f"completion_mask shape {tuple(self.completion_mask.shape)} != "
                             f"completion_ids shape {tuple(self.completion_ids.shape)}")

    def __len__(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def input_ids(self) -> Tensor:  # [N, P + T]
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:  # [N, P + T]
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def completion_lengths(self) -> Tensor:  # [N]
        return self.completion_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> Rollouts:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if isinstance(getattr(self, f.name), Tensor)})

    def select(self, rows: Sequence[int] | slice | Tensor) -> Rollouts:
        """A subset of rows (a micro-batch, or one rank's share). Columns are not trimmed."""
        index = torch.arange(len(self))[rows] if isinstance(rows, slice) else torch.as_tensor(rows)
        index = index.long().flatten()
        picked = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                picked[f.name] = value[index.to(value.device)]
            elif isinstance(value, list):
                picked[f.name] = [value[i] for i in index.tolist()]
        return replace(self, **picked)

    @classmethod
    def cat(cls, parts: Sequence[Rollouts], pad_id: int = 0) -> Rollouts:
        """The rows of several batches (same group size) in order, re-padded to the widest
        prompt (on the left) and completion (on the right). Any pad id will do: the masks hide
        padding from the model and the loss."""
        if len({r.group_size for r in parts}) != 1:
            raise ValueError(f"cannot join rollouts of group sizes {[r.group_size for r in parts]}")
        p = max(r.prompt_ids.shape[1] for r in parts)
        t = max(r.completion_ids.shape[1] for r in parts)

        def left(x: Tensor, width: int, value) -> Tensor:
            return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

        def right(x: Tensor, width: int, value) -> Tensor:
            return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

        return cls(prompt_ids=torch.cat([left(r.prompt_ids, p, pad_id) for r in parts]),
                   prompt_mask=torch.cat([left(r.prompt_mask, p, 0) for r in parts]),
                   completion_ids=torch.cat([right(r.completion_ids, t, pad_id) for r in parts]),
                   completion_mask=torch.cat([right(r.completion_mask, t, 0) for r in parts]),
                   sampler_logprobs=torch.cat([right(r.sampler_logprobs, t, 0.0) for r in parts]),
                   truncated=torch.cat([r.truncated for r in parts]),
                   texts=[x for r in parts for x in r.texts],
                   prompts=[x for r in parts for x in r.prompts], group_size=parts[0].group_size)

    @classmethod
    def from_groups(
        cls,
        prompt_ids: list[list[int]],  # [B] token ids of each prompt
        prompts: list[str],  # [B]
        completion_ids: list[list[int]],  # [B * G] prompt b's completions are rows b*G..b*G+G-1
        logprobs: list[list[float]],  # [B * G]
        truncated: list[bool],  # [B * G]
        texts: list[str],  # [B * G]
        group_size: int,
        pad_id: int,
    ) -> Rollouts:
        """`from_lists` for a sampler's output: each of the B prompts followed by its G rows."""
        rows = [b for b in range(len(prompt_ids)) for _ in range(group_size)]
        return cls.from_lists([prompt_ids[b] for b in rows], completion_ids, logprobs, truncated,
                              texts, [prompts[b] for b in rows], group_size, pad_id)

    @classmethod
    def from_lists(
        cls,
        prompt_ids: list[list[int]],  # [N] token ids of each completion's prompt
        completion_ids: list[list[int]],  # [N] generated ids, EOS included when generated
        logprobs: list[list[float]],  # [N] log-prob of each generated id
        truncated: list[bool],  # [N]
        texts: list[str],  # [N]
        prompts: list[str],  # [N]
        group_size: int,
        pad_id: int,
    ) -> Rollouts:
        n = len(completion_ids)
        p = max((len(x) for x in prompt_ids), default=0)
        t = max(1, max((len(x) for x in completion_ids), default=0))
        out = dict(prompt_ids=torch.full((n, p), pad_id, dtype=torch.long),
                   prompt_mask=torch.zeros(n, p, dtype=torch.long),
                   completion_ids=torch.full((n, t), pad_id, dtype=torch.long),
                   completion_mask=torch.zeros(n, t, dtype=torch.long),
                   sampler_logprobs=torch.zeros(n, t, dtype=torch.float32))
        for i, (pr, co, lp) in enumerate(zip(prompt_ids, completion_ids, logprobs)):
            if len(lp) != len(co):
                raise ValueError(f"completion {i}: {len(co)} tokens but {len(lp)} log-probs")
            if pr:
                out["prompt_ids"][i, p - len(pr):] = torch.tensor(pr)
                out["prompt_mask"][i, p - len(pr):] = 1
            if co:
                out["completion_ids"][i, :len(co)] = torch.tensor(co)
                out["completion_mask"][i, :len(co)] = 1  # from the length, not from pad_id
                out["sampler_logprobs"][i, :len(co)] = torch.tensor(lp, dtype=torch.float32)
        return cls(**out, truncated=torch.tensor(truncated, dtype=torch.bool), texts=list(texts),
                   prompts=list(prompts), group_size=group_size)
