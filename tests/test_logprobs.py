"""The chunked log-prob path against the naive full log-softmax; the shared-prompt forward
against the full one."""

import pytest
import torch
from torch.testing import assert_close

from grpo.logprobs import chunked_logprobs, naive_logprobs, sequence_logprobs
from grpo.shared_prompt import pads_after_prompt, prompt_groups

F64 = torch.float64


def _inputs(dtype, m=37, h=16, v=101, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, h, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(v, generator=g, dtype=dtype, requires_grad=True) if bias else None
    targets = torch.randint(0, v, (m,), generator=g)
    return hidden, weight, b, targets


def _naive(hidden, weight, bias, targets, temperature):
    logits = hidden @ weight.T + (0 if bias is None else bias)
    return naive_logprobs(logits.to(torch.promote_types(hidden.dtype, torch.float32)), targets,
                          temperature)


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 37, 1000])  # 5 and 16 don't divide 37
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_equals_naive_in_float64_values_and_gradients(chunk_size, temperature):
    hidden, weight, bias, targets = _inputs(F64)
    upstream = torch.randn(37, dtype=F64)
    naive = _naive(hidden, weight, bias, targets, temperature)
    naive_grads = torch.autograd.grad((naive * upstream).sum(), (hidden, weight, bias))
    fast, _ = chunked_logprobs(hidden, weight, targets, temperature, bias=bias,
                               chunk_size=chunk_size)
    fast_grads = torch.autograd.grad((fast * upstream).sum(), (hidden, weight, bias))
    assert fast.dtype == F64
    assert_close(fast, naive)
    for got, want in zip(fast_grads, naive_grads):
        assert_close(got, want)


def test_chunked_within_1e6_of_naive_in_float32():
    hidden, weight, _, targets = _inputs(torch.float32, m=64, h=64, v=4096, bias=False)
    weight = weight.detach() * 0.1  # logits of std ~0.8, log-probs near -log(V) = -8.3, as in an LM
    naive = _naive(hidden, weight, None, targets, 0.9)
    fast, _ = chunked_logprobs(hidden, weight, targets, 0.9, chunk_size=24)
    assert (fast - naive).abs().max() <= 1e-6


def test_bf16_weights_backward_sums_the_weight_gradient_in_fp32():
    """DeepSpeed's bf16 holds hidden states and weights in bf16: the weight gradient is a bf16
    matmul per chunk added into an fp32 buffer, then cast to bf16. Against the fp32 gradient of
    the same (bf16-rounded) inputs it is off by bf16 rounding only: relative error a few 2^-8."""
    hidden, weight, _, targets = _inputs(torch.float32, m=64, h=32, v=512, bias=False)
    hidden, weight = hidden.detach().bfloat16(), (weight.detach() * 0.1).bfloat16()
    upstream = torch.randn(64)
    want = torch.autograd.grad(
        (_naive(hidden.float().requires_grad_(), w32 := weight.float().requires_grad_(), None,
                targets, 0.9) * upstream).sum(), w32)[0]
    w16 = weight.requires_grad_()
    fast, _ = chunked_logprobs(hidden, w16, targets, 0.9, chunk_size=24)
    got = torch.autograd.grad((fast * upstream).sum(), w16)[0]
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).norm() <= 2 ** -6 * want.norm()


def test_gradcheck_through_the_custom_backward():
    hidden, weight, bias, targets = _inputs(F64, m=7, h=4, v=9)
    fn = lambda h, w, b: chunked_logprobs(h, w, targets, 0.8, bias=b, chunk_size=3)[0]  # noqa
    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


def test_entropy_matches_naive_and_is_detached():
    hidden, weight, bias, targets = _inputs(F64)
    logits = (hidden @ weight.T + bias) / 0.7
    logp = torch.log_softmax(logits, -1)
    want = -(logp.exp() * logp).sum(-1)
    _, entropy = chunked_logprobs(hidden, weight, targets, 0.7, bias=bias, chunk_size=8,
                                  with_entropy=True)
    assert_close(entropy, want.detach())
    assert not entropy.requires_grad


def test_leading_dims_are_kept():
    hidden, weight, _, targets = _inputs(F64, m=12, bias=False)
    out, _ = chunked_logprobs(hidden.view(3, 4, -1), weight, targets.view(3, 4), chunk_size=5)
    assert out.shape == (3, 4)
    assert_close(out.flatten(), _naive(hidden, weight, None, targets, 1.0))


def test_bad_input():
    hidden, weight, _, targets = _inputs(F64, m=5, bias=False)
    with pytest.raises(ValueError, match="targets"):
        chunked_logprobs(hidden, weight, targets[:4])
    with pytest.raises(ValueError, match="temperature"):
        chunked_logprobs(hidden, weight, targets, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logprobs(hidden, weight, targets, chunk_size=0)


def test_sequence_logprobs_on_a_left_padded_batch_equals_each_row_alone():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(F64).eval()
    prompts = [[5, 6, 7, 8], [9, 10]]
    completions = [[11, 12, 13], [14, 15]]  # the second is one token shorter (padded)
    p, t_len = 4, 3
    input_ids = torch.zeros(2, p + t_len, dtype=torch.long)
    attention = torch.zeros(2, p + t_len, dtype=torch.long)
    completion_mask = torch.zeros(2, t_len, dtype=torch.long)
    for i, (pr, co) in enumerate(zip(prompts, completions)):
        input_ids[i, p - len(pr):p] = torch.tensor(pr)  # left padding
        input_ids[i, p:p + len(co)] = torch.tensor(co)  # right padding
        attention[i, p - len(pr):p + len(co)] = 1
        completion_mask[i, :len(co)] = 1
    got, entropy = sequence_logprobs(model, input_ids, attention, completion_mask,
                                     temperature=0.7, chunk_size=2, with_entropy=True)
    for i, (pr, co) in enumerate(zip(prompts, completions)):
        ids = torch.tensor([pr + co])
        logits = model(ids).logits[0, len(pr) - 1:-1]  # positions that predict the completion
        assert_close(got[i, :len(co)], naive_logprobs(logits, torch.tensor(co), 0.7))
    assert (got[1, 2] == 0) and (entropy[1, 2] == 0)


# ---- the shared-prompt forward (completion_hidden) against the full one ----------------------

def _grouped_batch(prompt_lengths=(5, 3, 7), group_size=3, t=6, seed=0, ragged=True):
    """Distinct prompts of different lengths (so left padding differs), each repeated
    `group_size` times (GRPO's groups), with completions of 1..t tokens (right padding) or,
    not `ragged`, all of t tokens."""
    g = torch.Generator().manual_seed(seed)
    p, n = max(prompt_lengths), len(prompt_lengths) * group_size
    input_ids = torch.zeros(n, p + t, dtype=torch.long)
    attention = torch.zeros(n, p + t, dtype=torch.long)
    completion_mask = torch.zeros(n, t, dtype=torch.long)
    for b, length in enumerate(prompt_lengths):
        prompt = torch.randint(100, 2000, (length,), generator=g)
        for row in range(b * group_size, (b + 1) * group_size):
            c = 1 + (5 * row) % t if ragged else t
            input_ids[row, p - length:p] = prompt
            input_ids[row, p:p + c] = torch.randint(100, 2000, (c,), generator=g)
            attention[row, p - length:p + c] = 1
            completion_mask[row, :c] = 1
    return input_ids, attention, completion_mask


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM

    from grpo.models import resolve_model

    return AutoModelForCausalLM.from_pretrained(resolve_model(None), dtype=torch.float32).eval()


@pytest.fixture
def smollm2_f64(smollm2, monkeypatch):
    """SmolLM2 in true float64. LlamaRMSNorm computes in float32 whatever its input, so in a
    .double() model the backward of the shared prompt (one pass fed the sum of G rows' upstream
    gradients) and of G separate passes differ by fp32 rounding (~1e-6 relative) although the
    forward values are bit-equal; with the norm in float64 they agree to ~1e-12."""
    import copy

    from transformers.models.llama import modeling_llama

    def rms_norm(self, x):
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)
                                              + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", rms_norm)
    return copy.deepcopy(smollm2).to(F64)


def test_prompt_groups_by_first_appearance():
    ids = torch.tensor([[0, 7, 8], [5, 6, 7], [5, 6, 7], [0, 7, 8], [0, 7, 8]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1]])
    first, inverse = prompt_groups(ids, mask)
    # rows 0 and 3 are one prompt; row 4 has its ids but attends to the pad (another prompt)
    assert first.tolist() == [0, 1, 4] and inverse.tolist() == [0, 1, 1, 0, 2]
    assert prompt_groups(ids[:2], mask[:2]) is None  # all distinct: the full forward


def test_pads_after_prompt_moves_the_left_padding_behind_each_prompt():
    # P = 4: row 0 has 2 pads, row 1 none, row 2 only pads (left as it is, but for P - 1 = 3);
    # the completion columns never move.
    ids = torch.tensor([[0, 0, 5, 6, 7, 0], [1, 2, 3, 4, 8, 9], [0, 0, 0, 0, 3, 0]])
    mask = (ids != 0).long()
    got_ids, got_mask, last = pads_after_prompt(ids, mask, 4)
    assert got_ids.tolist() == [[5, 6, 0, 0, 7, 0], [1, 2, 3, 4, 8, 9], [0, 0, 0, 0, 3, 0]]
    assert got_mask.tolist() == [[1, 1, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 0]]
    assert last.tolist() == [1, 3, 0]
    # No left padding anywhere: the same tensors back.
    same = pads_after_prompt(ids[1:2], mask[1:2], 4)
    assert torch.equal(same[0], ids[1:2])
    assert same[2].tolist() == [3]


@pytest.mark.parametrize("share", [True, False])
def test_no_attention_row_is_fully_masked(smollm2, share, monkeypatch):
    """CUDA's bf16 cuDNN attention gives non-finite gradients for a query that sees no key
    (measured on an H200, torch 2.11), so every query row the model's sdpa calls get, pads
    included, must see at least one key."""
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(smollm2.config, "_attn_implementation", "sdpa")
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    input_ids, attention, completion_mask = _grouped_batch()
    assert not attention[:, 0].all()  # left padding: the old layout had fully masked rows
    with torch.no_grad():
        sequence_logprobs(smollm2, input_ids, attention, completion_mask, 0.7,
                          share_prompts=share)
    assert len(masks) == (2 if share else 1) * smollm2.config.num_hidden_layers
    for mask in masks:
        assert mask is not None and mask.dtype == torch.bool
        assert mask.any(-1).all(), "a query row attends to no key"


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [True, False])  # without padding sdpa gets no mask at all
def test_shared_prompt_logprobs_equal_the_full_forward_in_float32(smollm2, attn, padded,
                                                                   monkeypatch):
    monkeypatch.setattr(smollm2.config, "_attn_implementation", attn)
    input_ids, attention, completion_mask = (_grouped_batch() if padded else
                                             _grouped_batch((6,), group_size=4, ragged=False))
    assert attention.all() != padded
    with torch.no_grad():
        full, _ = sequence_logprobs(smollm2, input_ids, attention, completion_mask, 0.7,
                                    share_prompts=False)
        shared, _ = sequence_logprobs(smollm2, input_ids, attention, completion_mask, 0.7,
                                      share_prompts=True)
    assert_close(shared, full, rtol=1e-5, atol=1e-5)  # log-probs of -1 to -40
    assert (shared[completion_mask == 0] == 0).all()


def test_shared_prompt_logprobs_and_gradients_equal_the_full_forward_in_float64(smollm2_f64):
    model = smollm2_f64
    input_ids, attention, completion_mask = _grouped_batch((4, 2), group_size=2, t=4)
    upstream = torch.randn(completion_mask.shape, generator=torch.Generator().manual_seed(1),
                           dtype=F64)
    params = list(model.parameters())
    got = {}
    for share in (False, True):
        logprobs, entropy = sequence_logprobs(model, input_ids, attention, completion_mask, 0.7,
                                              with_entropy=True, share_prompts=share)
        grads = torch.autograd.grad((logprobs * upstream).sum(), params)
        got[share] = logprobs.detach(), entropy, grads
    assert_close(got[True][0], got[False][0], rtol=0, atol=1e-10)
    assert_close(got[True][1], got[False][1], rtol=0, atol=1e-10)
    for shared, full in zip(got[True][2], got[False][2]):  # |grad| up to ~100: 1e-10 is 1e-12
        assert_close(shared, full, rtol=0, atol=1e-10)


def test_distinct_prompts_take_the_full_forward(smollm2):
    input_ids, attention, completion_mask = _grouped_batch(group_size=1)
    assert prompt_groups(input_ids[:, :7], attention[:, :7]) is None
    with torch.no_grad():
        shared, _ = sequence_logprobs(smollm2, input_ids, attention, completion_mask,
                                      share_prompts=True)
        full, _ = sequence_logprobs(smollm2, input_ids, attention, completion_mask,
                                    share_prompts=False)
    assert_close(shared, full, rtol=0, atol=0)  # the same computation


def test_gradient_checkpointing_falls_back_to_the_full_forward(smollm2):
    """Checkpointed layers drop the KV cache in training mode; sharing must not be taken then."""
    import copy

    model = copy.deepcopy(smollm2).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    input_ids, attention, completion_mask = _grouped_batch((4, 2), group_size=2, t=4)
    with torch.no_grad():
        shared, _ = sequence_logprobs(model, input_ids, attention, completion_mask,
                                      share_prompts=True)
        full, _ = sequence_logprobs(smollm2, input_ids, attention, completion_mask,
                                    share_prompts=False)
    assert_close(shared, full, rtol=0, atol=0)
