"""Per-token log-probs of the chosen tokens without materialising [N, T, V] fp32 logits.

The naive way, `log_softmax(lm_head(h) / temperature).gather(targets)`, holds N*T*V floats twice
(logits and log-softmax; 3.2 GB each at N=16, T=1024, V=49152) and keeps them for backward. Here
the output projection runs on chunks of `chunk_size` tokens, only at completion positions that
count, and a custom autograd function recomputes each chunk's logits in backward instead of
storing them, so peak extra memory is O(chunk_size * V) in both passes.

Logits are divided by the sampling temperature so the log-probs are those of the distribution the
sampler drew from. Entropy is optional, computed in the same pass, and detached (for logging).

The hidden states come from `grpo.shared_prompt.completion_hidden`, which runs each group's
shared prompt through the model's body once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grpo.shared_prompt import completion_hidden

class _ChunkedSelectedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy):
        # hidden [M, H], weight [V, H], bias [V] | None, targets [M] -> logprobs [M], entropy [M]
        compute_dtype = torch.promote_types(hidden.dtype, torch.float32)
        m = hidden.shape[0]
        logprobs = hidden.new_empty(m, dtype=compute_dtype)
        lse = hidden.new_empty(m, dtype=compute_dtype)
        entropy = hidden.new_empty(m if with_entropy else 0, dtype=compute_dtype)
        for s in range(0, m, chunk_size):
            logits = _chunk_logits(hidden[s:s + chunk_size], weight, bias, temperature,
                                   compute_dtype)  # [C, V]
            chunk_lse = torch.logsumexp(logits, dim=-1)
            lse[s:s + chunk_size] = chunk_lse
            chosen = logits.gather(1, targets[s:s + chunk_size, None]).squeeze(1)
            logprobs[s:s + chunk_size] = chosen - chunk_lse
            if with_entropy:  # H = lse - sum(p * logits)
                probs = torch.exp(logits - chunk_lse[:, None])
                entropy[s:s + chunk_size] = chunk_lse - (probs * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, _grad_entropy):  # grad_logprobs: [M]
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        temperature, chunk_size = ctx.temperature, ctx.chunk_size
        compute_dtype = lse.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.zeros_like(weight, dtype=compute_dtype) if need_w else None
        grad_bias = torch.zeros_like(bias, dtype=compute_dtype) if need_b else None
        for s in range(0, hidden.shape[0], chunk_size):
            h = hidden[s:s + chunk_size]
            logits = _chunk_logits(h, weight, bias, temperature, compute_dtype)  # [C, V]
            g = grad_logprobs[s:s + chunk_size, None].to(compute_dtype)  # [C, 1]
            # d(logit_t - lse)/d logits = onehot(t) - softmax, in place on the recomputed logits
            # (each [C, V] pass costs as much as a small matmul on a CPU). The 1/temperature of
            # the chain rule is applied to the small results instead of the [C, V] block.
            grad_logits = logits.sub_(lse[s:s + chunk_size, None]).exp_().mul_(-g)
            grad_logits.scatter_add_(1, targets[s:s + chunk_size, None], g)
            if need_h:
                grad_hidden[s:s + chunk_size] = (grad_logits.to(weight.dtype) @ weight).div_(
                    temperature).to(h.dtype)
            if need_w:
                if h.dtype == compute_dtype:
                    grad_weight.addmm_(grad_logits.T, h)
                else:  # bf16 weights (DeepSpeed's bf16): a bf16 matmul, summed in fp32
                    grad_weight += (grad_logits.T.to(h.dtype) @ h).to(compute_dtype)
            if need_b:
                grad_bias += grad_logits.sum(0)
        if need_w:
            grad_weight = grad_weight.div_(temperature).to(weight.dtype)
        if need_b:
            grad_bias = grad_bias.div_(temperature).to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def _chunk_logits(hidden, weight, bias, temperature, compute_dtype) -> Tensor:
    # The matmul runs in the model's dtype (bf16 on GPU, like the model's own lm_head); the
    # softmax arithmetic in fp32 (fp64 when given fp64).
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    logits = logits.to(compute_dtype)  # a fresh tensor (the matmul's), so in place is safe
    return logits if temperature == 1.0 else logits.div_(temperature)


def chunked_logprobs(
    hidden: Tensor,  # [..., H] final hidden states at the positions that predict `targets`
    weight: Tensor,  # [V, H] output projection (lm_head) weight
    targets: Tensor,  # [...] chosen token ids
    temperature: float = 1.0,
    bias: Tensor | None = None,  # [V]
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:  # logprobs [...] (grad), entropy [...] (detached) or None
    """log_softmax(hidden @ weight.T / temperature)[targets], chunk by chunk, with autograd."""
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"targets must have hidden's leading shape {tuple(hidden.shape[:-1])}, "
                         f"got {tuple(targets.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    logprobs, entropy = _ChunkedSelectedLogprobs.apply(
        flat_hidden, weight, bias, targets.reshape(-1).long(), float(temperature), chunk_size,
        with_entropy)
    return logprobs.view(lead), (entropy.view(lead) if with_entropy else None)


def naive_logprobs(
    logits: Tensor,  # [..., V]
    targets: Tensor,  # [...]
    temperature: float = 1.0,
) -> Tensor:  # [...]
    """The reference definition the chunked path is tested against (and the memory baseline)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, keep fp64
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1).long()).squeeze(-1)


class LogprobModel(torch.nn.Module):
    """A transformers causal LM as a module that returns its completion tokens' log-probs: the
    body's hidden states from `completion_hidden`, then `chunked_logprobs`, only where
    completion_mask is 1. Both engines run their policy and reference through it.

    The output projection runs inside a module (`head`, holding the output-embedding Parameter
    itself, tied or not) because ZeRO-3 materialises a weight only inside the forward and
    backward of a module that owns it.
    """

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        if getattr(lm.config, "final_logit_softcapping", None) or getattr(
                lm.config, "logit_scale", None):
            raise ValueError(f"{type(lm).__name__} post-processes its logits (soft-capping or "
                             "scaling), which chunked_logprobs does not apply")
        self.lm = lm
        self.head = _ChunkedHead(lm.get_output_embeddings())

    def forward(
        self,
        input_ids: Tensor,  # [N, P + T] left-padded prompt followed by the completion
        attention_mask: Tensor,  # [N, P + T]
        completion_mask: Tensor,  # [N, T] 1 on completion tokens that count
        temperature: float = 1.0,
        chunk_size: int = 1024,
        with_entropy: bool = False,
        share_prompts: bool = True,
    ) -> tuple[Tensor, Tensor | None]:  # logprobs [N, T] (0 where masked), entropy [N, T] or None
        t = completion_mask.shape[1]
        hidden = completion_hidden(self.lm.base_model, input_ids, attention_mask, t,
                                   share_prompts)  # [N, T, H]
        mask = completion_mask.bool()
        logprobs, entropy = self.head(hidden[mask], input_ids[:, -t:][mask], temperature,
                                      chunk_size, with_entropy)
        out = logprobs.new_zeros(mask.shape).masked_scatter(mask, logprobs)
        if entropy is not None:
            entropy = logprobs.new_zeros(mask.shape).masked_scatter(mask, entropy)
        return out, entropy


class _ChunkedHead(torch.nn.Module):
    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.weight = head.weight  # the same Parameter (tied to the input embedding in SmolLM2)
        self.bias = getattr(head, "bias", None)

    def forward(self, hidden, targets, temperature, chunk_size, with_entropy):
        # hidden [M, H], targets [M] -> logprobs [M], entropy [M] or None
        return chunked_logprobs(hidden, self.weight, targets, temperature, bias=self.bias,
                                chunk_size=chunk_size, with_entropy=with_entropy)


def sequence_logprobs(
    model: torch.nn.Module,  # a transformers causal LM
    input_ids: Tensor,  # [N, P + T]
    attention_mask: Tensor,  # [N, P + T]
    completion_mask: Tensor,  # [N, T]
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
    share_prompts: bool = True,
) -> tuple[Tensor, Tensor | None]:  # logprobs [N, T] (0 where masked), entropy [N, T] or None
    """`LogprobModel(model)(...)`: log-probs of each completion token under `model`."""
    return LogprobModel(model)(input_ids, attention_mask, completion_mask, temperature,
                               chunk_size, with_entropy, share_prompts)
