"""Chunked log-probs (grpo.logprobs) vs the naive full log-softmax: peak extra memory and time.

    .venv/bin/python benchmarks/logprobs.py [--n 16 --t 1024 --v 49152 --h 576 --repeats 2]

Each measurement runs in a fresh child process (peak RSS is a high-water mark, so variants must
not share a process); children alternate naive/chunked so both see the same machine load. Peak
extra memory = the child's peak RSS minus its RSS once the inputs exist. Time is the median of
`--repeats` timed calls after one untimed call. Both are done for a no-grad forward (how the old
and reference log-probs are computed) and for forward + backward (the policy).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def child(args) -> None:
    import torch

    from grpo.logprobs import chunked_logprobs, naive_logprobs

    torch.manual_seed(0)
    m = args.n * args.t
    hidden = torch.randn(m, args.h) * 0.5
    weight = (torch.randn(args.v, args.h) * 0.05).requires_grad_()
    targets = torch.randint(0, args.v, (m,))

    def run():
        h = hidden.detach().requires_grad_(args.grad)
        with torch.set_grad_enabled(args.grad):
            if args.variant == "naive":
                out = naive_logprobs(h @ weight.T, targets, 0.7)
            else:
                out, _ = chunked_logprobs(h, weight, targets, 0.7, chunk_size=args.chunk)
            if args.grad:
                out.sum().backward()
                weight.grad = None

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    print(json.dumps({"extra_mib": (peak - rss0) / 1024, "seconds": statistics.median(times)}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--t", type=int, default=1024)
    p.add_argument("--v", type=int, default=49152)  # SmolLM2's vocabulary
    p.add_argument("--h", type=int, default=576)  # SmolLM2's hidden size
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--variant", choices=["naive", "chunked"])
    p.add_argument("--grad", type=lambda s: bool(int(s)), default=False)
    args = p.parse_args()
    if args.variant:
        return child(args)

    base = [sys.executable, __file__, "--n", str(args.n), "--t", str(args.t), "--v", str(args.v),
            "--h", str(args.h), "--chunk", str(args.chunk), "--repeats", str(args.repeats)]
    rows = []
    for grad in (0, 1):
        res = {}
        for variant in ("naive", "chunked"):
            out = subprocess.run(base + ["--variant", variant, "--grad", str(grad)],
                                 capture_output=True, text=True, check=True)
            res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((grad, res))
    print(f"N={args.n} T={args.t} V={args.v} H={args.h} chunk={args.chunk} fp32, "
          f"torch threads={__import__('torch').get_num_threads()}")
    print("| pass | naive peak extra MiB | chunked peak extra MiB | memory ratio "
          "| naive s | chunked s | time ratio |")
    print("|---|---|---|---|---|---|---|")
    for grad, res in rows:
        nv, ch = res["naive"], res["chunked"]
        print(f"| {'forward+backward' if grad else 'forward (no grad)'} | {nv['extra_mib']:.0f} "
              f"| {ch['extra_mib']:.0f} | {ch['extra_mib'] / nv['extra_mib']:.3f} "
              f"| {nv['seconds']:.2f} | {ch['seconds']:.2f} "
              f"| {ch['seconds'] / nv['seconds']:.2f}x |")


if __name__ == "__main__":
    main()
