"""VLLMSampler vs HFSampler: generated tokens per second on the same prompts, side by side.

    .venv/bin/python benchmarks/sampler.py [--prompts 8 --group-size 8 --max-tokens 256
                                            --dtype bfloat16 --threads 2 --repeats 1 --eager]

Both samplers live in this one process, with the same torch threads, and are timed in turns
(vLLM, HF, vLLM, HF, ...) so both see the same machine load. Tokens per second counts the
tokens that are kept (EOS included, padding not), which is what a training step gets.

Bandwidth bound: a decode step must read every weight once (and the KV cache of every running
sequence), so steps/s can't beat copy bandwidth / bytes read per step. We measure the copy
bandwidth in this run (a 512 MiB tensor copy: read + write bytes / time) and report
  weight bandwidth used = decode steps x weight bytes / time   (steps = longest completion)
as a fraction of it, for the batched run and for one greedy sequence (batch 1, where decoding
is bandwidth-bound; at batch 64 a 135M model on 2 cores is compute-bound instead). The KV column
adds the cache bytes read per step (a sequence of L tokens reads L x layers x 2 x kv_heads x
head_dim elements), averaged over the run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTIONS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how photosynthesis works, step by step.",
    "Describe the history of the Roman Empire.",
    "What are the benefits of regular exercise? Give details.",
    "Explain the difference between a list and a tuple in Python.",
    "Write a letter to a friend about your summer holiday.",
    "How does a refrigerator work?",
    "Describe your ideal city and why.",
]


def copy_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (each byte read once and written once)."""
    import torch

    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def timed(sampler, prompts, **kw):
    start = time.perf_counter()
    r = sampler.sample(prompts, seed=0, **kw)
    return r, time.perf_counter() - start


def kv_bytes_per_step(r, cfg, elem: int) -> float:
    """Average KV-cache bytes read per decode step over the run."""
    per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * (
        cfg.hidden_size // cfg.num_attention_heads) * elem
    p = r.prompt_mask.sum(1).float()  # [N]
    lengths = r.completion_mask.sum(1).float()  # [N]
    # a running sequence at step s reads p + s cached tokens; summed over its steps, / all steps
    total = (lengths * p + lengths * (lengths - 1) / 2).sum()
    return float(total) * per_token / max(1, int(lengths.max()))


def row(name, r, seconds, weight_bytes, kv_step, bandwidth):
    tokens = int(r.completion_mask.sum())
    steps = int(r.completion_mask.sum(1).max())
    used = steps * weight_bytes / seconds
    used_kv = steps * (weight_bytes + kv_step) / seconds
    print(f"{name}: {tokens} tokens in {seconds:.1f} s", file=sys.stderr, flush=True)
    return (f"| {name} | {len(r)} | {tokens} | {seconds:.1f} | {tokens / seconds:.0f} | "
            f"{used / 1e9:.2f} | {used / bandwidth:.0%} | {used_kv / bandwidth:.0%} |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--eager", action="store_true", help="vLLM enforce_eager (starts faster)")
    args = p.parse_args()

    import torch

    from grpo.sampler import HFSampler, VLLMSampler

    threads = args.threads or torch.get_num_threads()
    torch._C.set_num_threads(threads)
    bandwidth = copy_bandwidth()
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    vllm = VLLMSampler(args.model, args.group_size, args.max_tokens, temperature=1.0,
                       dtype=args.dtype, enforce_eager=args.eager, num_threads=threads)
    vllm_start = time.perf_counter() - start
    hf = HFSampler(args.model, args.group_size, args.max_tokens, temperature=1.0, dtype=dtype)
    cfg, elem = hf.model.config, torch.finfo(dtype).bits // 8
    weight_bytes = sum(t.numel() for t in hf.model.parameters()) * elem  # tied: counted once
    prompts = [hf.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                add_generation_prompt=True)
               for q in (QUESTIONS * args.prompts)[:args.prompts]]
    for s in (vllm, hf):  # warm-up (first-call allocations, oneDNN kernel selection)
        s.sample(prompts[:1], group_size=2, max_tokens=8)

    lines = []
    for rep in range(args.repeats):
        runs = {}
        for name, s in (("VLLMSampler", vllm), ("HFSampler", hf)):
            runs[name] = timed(s, prompts)
            lines.append(row(name, *runs[name], weight_bytes,
                             kv_bytes_per_step(runs[name][0], cfg, elem), bandwidth))
        speedup = (runs["VLLMSampler"][0].completion_mask.sum() / runs["VLLMSampler"][1]) / (
            runs["HFSampler"][0].completion_mask.sum() / runs["HFSampler"][1])
        lines.append(f"| speed-up (repeat {rep + 1}) | | | | **{speedup:.2f}x** | | | |")
    for name, s in (("VLLMSampler batch 1", vllm), ("HFSampler batch 1", hf)):
        r, sec = timed(s, prompts[:1], group_size=1, temperature=0)
        lines.append(row(name, r, sec, weight_bytes, kv_bytes_per_step(r, cfg, elem), bandwidth))

    original = dict(hf.model.state_dict())
    sync = []
    for _ in range(3):
        vllm.load_weights(original.items())
        sync.append(vllm.last_load_seconds)
    vllm.close()

    print(f"{args.prompts} prompts x G={args.group_size} x up to {args.max_tokens} new tokens, "
          f"{args.dtype}, {threads} threads, vLLM {'eager' if args.eager else 'compiled'} "
          f"(start {vllm_start:.0f} s); weights {weight_bytes / 1e6:.0f} MB; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s\n")
    print("| sampler | completions | tokens | seconds | tokens/s | weight GB/s | of copy bw | "
          "with KV |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(lines))
    print(f"\nWhole-model weight sync (VLLMSampler.load_weights, {len(original)} tensors): "
          + ", ".join(f"{x:.2f}" for x in sync) + " s")


if __name__ == "__main__":
    main()
