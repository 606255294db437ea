"""TorchEngine step throughput and MFU on one GPU, and chunked vs naive log-prob peak memory.

    python benchmarks/gpu_throughput.py [--out throughput.md]     (scripts/gpu_check.sh runs it)

Model: tests/test_gpu.py's Llama of Qwen2-0.5B's sizes with random weights (494 M parameters,
vocabulary 151,936, tied embeddings), written to a temporary directory (no network there).

Step: `TorchEngine` with bf16 autocast over fp32 master weights (fused AdamW), beta = 0 (no
reference pass), one update per step, every prompt distinct (so the shared-prompt forward does
not apply) of 64 tokens, completions filling each row to L tokens; `--tokens` tokens per step in
micro-batches of at most `--micro-tokens`; one untimed step, then the median of `--repeats`.

MFU = 6 N tokens / seconds / peak, N = all parameters (the tied embedding once, as the output
projection), tokens = rows x L, peak = 989 TFLOP/s: the H100/H200 SXM dense bf16 datasheet
figure. 6 N counts the forward and backward of every weight matmul; attention's own products
(about 6 x layers x hidden x L per token with the causal half: 0.13 GFLOP at L = 1024 against
6 N = 3.0) are in the next column, and the chunked head's backward recompute (another 2 x 136 M
per completion token) in neither. The table's header also gives the bf16 matmul rate measured
on this GPU (8192^3 products): the ceiling a step could reach in practice.

Log-probs: `chunked_logprobs` against `naive_logprobs` on M tokens of the model's head, forward
and backward, fp32 tensors under bf16 autocast as in TorchEngine; peak extra memory is
torch.cuda.max_memory_allocated minus what was allocated before the call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_gpu import LLAMA_05B, TINY, write_random_model  # noqa: E402  the one model recipe

PEAK_TFLOPS = 989.0  # H100/H200 SXM, dense bf16 (NVIDIA datasheet; 1979 is with sparsity)
PROMPT = 64


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: str, n: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e12


def step_batch(rows: int, length: int, vocab: int, seed: int):
    from grpo.rollouts import Rollouts

    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(3, vocab, (rows, PROMPT), generator=g).tolist()
    completions = torch.randint(3, vocab, (rows, length - PROMPT), generator=g).tolist()
    rollouts = Rollouts.from_lists(prompts, completions, [[-12.0] * len(c) for c in completions],
                                   [False] * rows, [""] * rows, [""] * rows, 1, pad_id=0)
    return rollouts, torch.randn(rows, generator=g)


def step_rows(args, model_dir: str, shape: dict) -> list[str]:
    from grpo.engine import StepSettings, TorchEngine

    engine = TorchEngine(model_dir, StepSettings(bf16=True, beta=0.0, learning_rate=1e-6),
                         device=args.device)
    params = sum(p.numel() for p in engine.model.parameters())
    layers, hidden = shape["num_hidden_layers"], shape["hidden_size"]
    out = [f"Model: {params / 1e6:.1f} M parameters; {args.tokens} tokens per step.", "",
           "| L | rows | micro-batch | step s | tokens/s | MFU (6N) | MFU (+attention) "
           "| peak GiB |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for length in args.lengths:
        rows = max(1, args.tokens // length)
        micro = max(1, args.micro_tokens // length)
        engine.settings = replace(engine.settings, micro_batch_size=micro)
        rollouts, advantages = step_batch(rows, length, shape["vocab_size"], seed=length)
        try:
            engine.train_step(rollouts, advantages)  # warm-up: allocator, kernel choice
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.repeats):
                sync(args.device)
                start = time.perf_counter()
                engine.train_step(rollouts, advantages)
                sync(args.device)
                times.append(time.perf_counter() - start)
        except torch.OutOfMemoryError:
            out.append(f"| {length} | {rows} | {micro} | OOM | | | | |")
            torch.cuda.empty_cache()
            continue
        seconds, tokens = statistics.median(times), rows * length
        model_flops = 6 * params * tokens
        attention_flops = 6 * layers * hidden * length * tokens  # causal: half of 12 L h
        mfu = (f"{model_flops / seconds / 1e12 / PEAK_TFLOPS:.1%} | "
               f"{(model_flops + attention_flops) / seconds / 1e12 / PEAK_TFLOPS:.1%}"
               if args.device == "cuda" else "n/a | n/a")
        peak = (f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if args.device == "cuda"
                else "n/a")
        out.append(f"| {length} | {rows} | {micro} | {seconds:.3f} | {tokens / seconds:,.0f} "
                   f"| {mfu} | {peak} |")
        print(out[-1], flush=True)
    return out


def logprob_rows(args, shape: dict) -> list[str]:
    from grpo.logprobs import chunked_logprobs, naive_logprobs

    hidden_size, vocab = shape["hidden_size"], shape["vocab_size"]
    weight = (0.02 * torch.randn(vocab, hidden_size, device=args.device)).requires_grad_()
    out = ["| M tokens | path | peak extra GiB | forward+backward s |",
           "| ---: | --- | ---: | ---: |"]
    for m in args.logprob_tokens:
        hidden = torch.randn(m, hidden_size, device=args.device).requires_grad_()
        targets = torch.randint(0, vocab, (m,), device=args.device)
        for path in ("naive", "chunked"):
            def run():
                with torch.autocast(args.device, dtype=torch.bfloat16):
                    if path == "naive":
                        lp = naive_logprobs(hidden @ weight.T, targets, 0.7)
                    else:
                        lp, _ = chunked_logprobs(hidden, weight, targets, 0.7)
                lp.sum().backward()
                hidden.grad = weight.grad = None

            try:
                run()  # warm-up
                sync(args.device)
                base = torch.cuda.memory_allocated() if args.device == "cuda" else 0
                if args.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                run()
                sync(args.device)
                seconds = time.perf_counter() - start
            except torch.OutOfMemoryError:
                out.append(f"| {m} | {path} | OOM | |")
                torch.cuda.empty_cache()
                continue
            peak = (f"{(torch.cuda.max_memory_allocated() - base) / 2**30:.2f}"
                    if args.device == "cuda" else "n/a")
            out.append(f"| {m} | {path} | {peak} | {seconds:.3f} |")
            print(out[-1], flush=True)
    return out


def main() -> None:
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=ints, default=[512, 1024, 2048, 4096])
    p.add_argument("--tokens", type=int, default=32768, help="tokens per step")
    p.add_argument("--micro-tokens", type=int, default=16384, help="tokens per micro-batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--logprob-tokens", type=ints, default=[4096, 16384])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shape", choices=["llama-0.5b", "tiny"], default="llama-0.5b",
                   help="tiny: a check of this script on a CPU, nothing measured")
    p.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark is for the GPU machine (docs/gpu.md)")
    shape = LLAMA_05B if args.shape == "llama-0.5b" else TINY
    lines = [f"# GPU throughput ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", ""]
    if args.device == "cuda":
        lines += [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA "
                  f"{torch.version.cuda}. MFU against {PEAK_TFLOPS:.0f} TFLOP/s (datasheet, "
                  f"dense bf16); an 8192^3 bf16 matmul measured "
                  f"{matmul_tflops(args.device):.0f} TFLOP/s here.", ""]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_random_model(tmp, shape, args.device)
        lines += ["## TorchEngine step (bf16 autocast, beta = 0)", ""]
        lines += step_rows(args, model_dir, shape)
    if args.device == "cuda":
        torch.cuda.empty_cache()
    lines += ["", f"## Log-probs of the head (V = {shape['vocab_size']}, H = "
                  f"{shape['hidden_size']}, bf16 autocast, forward + backward)", ""]
    lines += logprob_rows(args, shape)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
