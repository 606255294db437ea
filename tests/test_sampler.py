"""The group samplers on real vLLM (its CPU build) and the real packaged SmolLM2-135M-Instruct.

One engine per module (enforce_eager: starts in seconds), fp32 so that its log-probs can be held
to the trainer's (grpo.logprobs on the transformers model) at a tight, measured tolerance.
"""

import pytest
import torch

from grpo.logprobs import sequence_logprobs
from grpo.models import resolve_model
from grpo.sampler import GroupSampler, HFSampler, Rollouts, VLLMSampler
from grpo.sampler.vllm import _row_seed

EOS = 2  # SmolLM2's <|im_end|>, also its pad token


@pytest.fixture(scope="module")
def sampler():
    threads = torch.get_num_threads()
    # One thread: the machine is shared (spin-waiting OMP threads collapse under contention).
    s = VLLMSampler(None, group_size=3, max_tokens=16, temperature=1.0, seed=0, dtype="float32",
                    enforce_eager=True, kv_cache_memory_gb=1.0, num_threads=1)
    yield s
    s.close()
    torch._C.set_num_threads(threads)  # vLLM locks torch.set_num_threads; give other tests theirs


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(None), dtype=torch.float32).eval()


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def check_rollouts(r: Rollouts, prompts, tokenizer, group_size, max_tokens):
    """Invariants every sampler's output must hold."""
    n = len(prompts) * group_size
    assert len(r) == n and r.group_size == group_size
    assert r.completion_ids.shape == r.completion_mask.shape == r.sampler_logprobs.shape
    assert r.completion_ids.shape[0] == n and r.completion_ids.shape[1] <= max_tokens
    for row in range(n):
        prompt = prompts[row // group_size]  # grouped contiguously
        assert r.prompts[row] == prompt
        want = tokenizer(prompt, add_special_tokens=False)["input_ids"]  # no extra BOS
        assert r.prompt_ids[row][r.prompt_mask[row].bool()].tolist() == want
        length = int(r.completion_mask[row].sum())
        assert r.completion_mask[row, :length].all() and not r.completion_mask[row, length:].any()
        ids = r.completion_ids[row, :length].tolist()
        if r.truncated[row]:
            assert length == max_tokens and EOS not in ids
        else:  # stopped by EOS: it is the last counted token, so the loss sees it
            assert ids[-1] == EOS and EOS not in ids[:-1] and length <= max_tokens
        assert r.texts[row] == tokenizer.decode(ids, skip_special_tokens=True)
        lp = r.sampler_logprobs[row]
        assert (lp[:length] <= 0).all() and (lp[length:] == 0).all()


def test_row_seeds_are_distinct_in_their_low_32_bits():
    # torch's CPU generator keeps a seed's low 32 bits only, so distinct must mean distinct there
    seeds = {_row_seed(s, row) % 2**32 for s in range(100) for row in range(64)}
    assert len(seeds) == 6400  # 100 consecutive call seeds (steps) x 64 rows, no collision


def test_shapes_masks_groups_and_truncation(sampler):
    tok = sampler.tokenizer
    prompts = [chat(tok, "What is the capital of France? One word."),
               chat(tok, "Write a long essay about the history of Rome.")]
    r = sampler.sample(prompts)
    check_rollouts(r, prompts, tok, group_size=3, max_tokens=16)
    assert r.truncated[3:].all()  # a long essay never fits 16 tokens
    short = sampler.sample(prompts, max_tokens=4, group_size=2)
    check_rollouts(short, prompts, tok, group_size=2, max_tokens=4)
    assert short.completion_ids.shape[1] <= 4 and short.truncated[2:].all()
    assert isinstance(sampler, GroupSampler)


def test_groups_are_in_prompt_order_greedy(sampler):
    tok = sampler.tokenizer
    a, b = chat(tok, "What is 2 + 2?"), chat(tok, "Name a color.")
    one_a = sampler.sample([a], group_size=1, temperature=0)
    one_b = sampler.sample([b], group_size=1, temperature=0)
    both = sampler.sample([a, b], group_size=2, temperature=0)
    assert one_a.texts[0] != one_b.texts[0]
    assert both.texts == [one_a.texts[0]] * 2 + [one_b.texts[0]] * 2


def test_same_seed_same_samples_other_seed_differs(sampler):
    prompts = [chat(sampler.tokenizer, "Tell me a story about a cat.")]
    first = sampler.sample(prompts, seed=5)
    again = sampler.sample(prompts, seed=5)
    other = sampler.sample(prompts, seed=6)
    assert torch.equal(first.completion_ids, again.completion_ids)
    assert torch.equal(first.sampler_logprobs, again.sampler_logprobs)
    assert not torch.equal(first.completion_ids, other.completion_ids)
    assert len(set(first.texts)) > 1  # each row has its own seed, so a group is not 3 copies


def test_a_batch_split_over_calls_draws_what_one_call_draws(sampler):
    """Two ranks sampling halves of a step's batch with the same seed, each with its first_row,
    get exactly the rows one process gets (row r is seeded by (seed, first_row + r))."""
    tok = sampler.tokenizer
    prompts = [chat(tok, q) for q in ("Tell me a story about a cat.", "Name three rivers.",
                                      "Why is the sky blue?", "Describe a dog.")]
    whole = sampler.sample(prompts, seed=11)
    halves = [sampler.sample(prompts[:2], seed=11),
              sampler.sample(prompts[2:], seed=11, first_row=2 * 3)]
    assert whole.texts == halves[0].texts + halves[1].texts
    for k, half in enumerate(halves):
        rows = slice(6 * k, 6 * k + 6)
        t = half.completion_ids.shape[1]
        assert torch.equal(whole.completion_ids[rows, :t], half.completion_ids)
        torch.testing.assert_close(whole.sampler_logprobs[rows, :t], half.sampler_logprobs)
    # The second half without its offset draws the first half's noise: different completions.
    assert sampler.sample(prompts[2:], seed=11).texts != halves[1].texts
    with pytest.raises(ValueError, match="first_row must be an int >= 0"):
        sampler.sample(prompts, first_row=-1)


def test_greedy_repeats_and_matches_transformers_greedy(sampler, hf_model):
    prompt = chat(sampler.tokenizer, "What is the capital of France?")
    one = sampler.sample([prompt], group_size=1, temperature=0, max_tokens=12)
    two = sampler.sample([prompt], group_size=1, temperature=0, max_tokens=12)
    assert one.texts == two.texts and one.texts[0].startswith("The capital of France is Paris")
    hf = HFSampler(hf_model, group_size=2, max_tokens=12)
    ref = hf.sample([prompt], group_size=1, temperature=0)
    assert ref.completion_ids[0, :8].tolist() == one.completion_ids[0, :8].tolist()


def _max_mean_gap(model, r: Rollouts, temperature: float) -> tuple[float, float]:
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask,
                                  temperature=temperature)
    gap = (lp - r.sampler_logprobs)[r.completion_mask.bool()].abs()
    return gap.max().item(), gap.mean().item()


def test_sampler_logprobs_match_the_trainers(sampler, hf_model):
    """Measured here (fp32 vLLM vs fp32 transformers, T=0.7, 96 tokens): max 3.8e-5, mean 7.5e-6;
    the raw (unscaled) log-probs would differ by ~0.1-1 per token, so 1e-3 tells them apart."""
    tok = sampler.tokenizer
    prompts = [chat(tok, "Explain photosynthesis briefly."), chat(tok, "What is 17 * 3?")]
    r = sampler.sample(prompts, temperature=0.7, seed=1)
    worst, mean = _max_mean_gap(hf_model, r, 0.7)
    assert worst < 1e-3 and mean < 1e-4, (worst, mean)
    unscaled, _ = _max_mean_gap(hf_model, r, 1.0)
    assert unscaled > 1e-2  # the check can fail: the wrong temperature is far off


def _calibration(model, r: Rollouts, temperature: float) -> tuple[float, float]:
    """mean over tokens of log p_T(x_t) + H(p_T(. | x_<t)), and its standard error.

    If every token was drawn from p_T, each term has expectation 0 given its prefix (the log-prob
    of a draw averages to minus the entropy), whatever the prefix was. A sampler that draws from
    another distribution (a different temperature, a truncation, stale weights) moves it away
    from 0. Standard error from the per-completion sums (tokens of one completion are dependent).
    """
    with torch.no_grad():
        lp, ent = sequence_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask,
                                    temperature=temperature, with_entropy=True)
    mask = r.completion_mask.bool()
    per_row = ((lp + ent) * mask).sum(dim=1).double()
    tokens = mask.sum().item()
    n = len(per_row)
    return per_row.sum().item() / tokens, (per_row.std() * n ** 0.5 / tokens).item()


@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_samples_are_drawn_from_the_temperature_scaled_policy(kind, sampler, hf_model):
    """The samplers' draws, not only their reported log-probs, follow p_T (T = 0.7). Measured
    here (64 completions of up to 16 tokens, fp32): vLLM -0.04 +- 0.04, HF +0.02 +- 0.04; draws
    at T = 1.0 scored as T = 0.7 give -1.1 +- 0.1 (vLLM) and -1.2 +- 0.14 (HF), so a sampler at
    the wrong temperature fails."""
    tok = sampler.tokenizer
    prompts = [chat(tok, "Tell me a story about a cat."), chat(tok, "What is 17 * 3?")]
    if kind == "vllm":
        draw = lambda temperature: sampler.sample(prompts, group_size=32, temperature=temperature,
                                                  seed=5)
    else:
        hf = HFSampler(hf_model, group_size=32, max_tokens=16, seed=5)
        draw = lambda temperature: hf.sample(prompts, temperature=temperature)
    mean, se = _calibration(hf_model, draw(0.7), 0.7)
    assert abs(mean) < 4 * se, (mean, se)
    hot_mean, hot_se = _calibration(hf_model, draw(1.0), 0.7)
    assert hot_mean < -4 * hot_se, (hot_mean, hot_se)  # the check can fail


def test_load_weights_changes_outputs_and_originals_restore_them(sampler, hf_model):
    prompt = chat(sampler.tokenizer, "What is the capital of France?")
    greedy = lambda: sampler.sample([prompt], group_size=1, temperature=0).texts[0]  # noqa
    before = greedy()
    original = {k: v.clone() for k, v in hf_model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=g) if v.dim() == 2 else v
             for k, v in original.items()}  # noise of half each matrix's own spread
    noisy.pop("lm_head.weight")  # a push without the tied head must still update it
    sampler.load_weights(noisy.items())
    changed = greedy()
    assert changed != before
    try:  # the engine now decodes exactly as transformers does with the same noisy weights
        hf_model.load_state_dict(noisy, strict=False)
        hf = HFSampler(hf_model, group_size=2, max_tokens=8).sample([prompt], group_size=1,
                                                                     temperature=0)
    finally:
        hf_model.load_state_dict(original)
    assert sampler.sample([prompt], group_size=1, temperature=0, max_tokens=8
                          ).completion_ids[0, :4].tolist() == hf.completion_ids[0, :4].tolist()
    sampler.load_weights(original.items())
    assert greedy() == before
    # The path taken with tensor parallelism (workers in other processes): via a safetensors file.
    # (load_weights adds the tied head; called directly, we do; the two names share memory)
    sampler._reload_from_disk({**noisy, "lm_head.weight": noisy["model.embed_tokens.weight"]})
    assert greedy() == changed
    sampler.load_weights(original.items())
    assert sampler.last_load_seconds is not None and sampler.last_load_seconds > 0
    partial = [(k, v) for k, v in original.items() if "k_proj" not in k]
    with pytest.raises(ValueError, match="misses 30 of the checkpoint"):  # one per layer
        sampler.load_weights(partial)
    assert greedy() == before  # the refused push left the engine untouched


def test_load_weights_refuses_to_keep_a_stale_prefix_cache(sampler, hf_model, monkeypatch):
    """vLLM answers False (and only logs) when it cannot drop its cached prompt blocks; sampling
    on would reuse keys and values of the old weights, so the push must fail loudly."""
    assert sampler.llm.reset_prefix_cache() is True  # the real answer when nothing is running
    monkeypatch.setattr(sampler.llm, "reset_prefix_cache", lambda *a, **k: False)
    with pytest.raises(RuntimeError, match="could not reset its prefix cache"):
        sampler.load_weights(hf_model.state_dict().items())


def test_hf_sampler_interface_logprobs_and_seed(hf_model):
    hf = HFSampler(hf_model, group_size=2, max_tokens=10, temperature=0.7, top_p=1.0, seed=3)
    tok = hf.tokenizer
    prompts = [chat(tok, "Say hello."), chat(tok, "Write a long essay about the history of Rome.")]
    r = hf.sample(prompts)
    check_rollouts(r, prompts, tok, group_size=2, max_tokens=10)
    worst, mean = _max_mean_gap(hf_model, r, 0.7)
    assert worst < 1e-4, (worst, mean)  # same model, same fp32 math: measured max ~1e-6
    assert torch.equal(hf.sample(prompts).completion_ids, r.completion_ids)
    assert isinstance(hf, GroupSampler)
    # generate draws the call's noise jointly: another first_row (another rank's share with the
    # same call seed) must still draw other noise, seeded derive_seed(seed, first_row).
    other = hf.sample(prompts, first_row=4)
    assert not torch.equal(other.completion_ids, r.completion_ids)
    from grpo.seeds import derive_seed
    hf.seed = derive_seed(3, 4)
    assert torch.equal(hf.sample(prompts).completion_ids, other.completion_ids)


def test_hf_sampler_load_weights_round_trip(hf_model):
    import copy

    model = copy.deepcopy(hf_model)
    hf = HFSampler(model, group_size=2, max_tokens=8)
    prompt = chat(hf.tokenizer, "What is the capital of France?")
    before = hf.sample([prompt], group_size=1, temperature=0).texts
    original = {k: v.clone() for k, v in model.state_dict().items()}
    hf.load_weights((k, torch.zeros_like(v)) for k, v in original.items())
    assert hf.sample([prompt], group_size=1, temperature=0).texts != before
    hf.load_weights(original.items())
    assert hf.sample([prompt], group_size=1, temperature=0).texts == before
    with pytest.raises(ValueError, match="misses"):
        hf.load_weights([("model.norm.weight", original["model.norm.weight"])])


def test_bad_input_raises_clear_errors(sampler):
    with pytest.raises(ValueError, match="prompts is empty"):
        sampler.sample([])
    with pytest.raises(TypeError, match="list of strings"):
        sampler.sample("a bare string")
    too_long = "hello " * (sampler.max_model_len + 10)
    with pytest.raises(ValueError, match=r"prompts\[0\] has \d+ tokens, but the model's context"):
        sampler.sample([too_long])
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        VLLMSampler(None, group_size=1, max_tokens=8)
    with pytest.raises(ValueError, match="max_tokens"):
        VLLMSampler(None, group_size=2, max_tokens=0)
    with pytest.raises(FileNotFoundError, match="neither an existing directory"):
        VLLMSampler("/no/such/model", group_size=2, max_tokens=8)
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        HFSampler(None, group_size=1, max_tokens=8)


def test_a_vllm_failure_surfaces_with_vllms_message():
    # SmolLM2's context is 8192; vLLM itself refuses a longer one while building its config.
    with pytest.raises(RuntimeError, match=r"(?s)could not start.*max_model_len \(100000\) is gr"):
        VLLMSampler(None, group_size=2, max_tokens=8, enforce_eager=True, max_model_len=100_000)
