"""Forward + backward of one micro-batch with the shared-prompt forward on and off.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shared_prompt.py [--group-size 8 ...]

One prompt of P tokens and G completions of about T tokens (the Countdown recipe's shape:
~150 + ~100), SmolLM2-135M in fp32 on the CPU: `sequence_logprobs(...).sum().backward()`, with
`share_prompts` True and False interleaved, so load from other processes hits both alike. The
body's predicted ratio is (U*P + N*T) / (N*(P + T)) for U = 1 distinct prompt and N = G rows; the
output projection (the same in both) pulls the measured ratio toward 1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from grpo.logprobs import sequence_logprobs
from grpo.models import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=150)
    parser.add_argument("--completion-tokens", type=int, default=100)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(None), dtype=torch.float32)
    model.train()
    p, t, n = args.prompt_tokens, args.completion_tokens, args.group_size
    prompt = torch.randint(100, 20000, (p,))
    input_ids = torch.cat([prompt.expand(n, p), torch.randint(100, 20000, (n, t))], dim=1)
    attention = torch.ones_like(input_ids)
    completion_mask = torch.ones(n, t, dtype=torch.long)
    for row in range(n):  # ragged completions: T, T-3, T-6, ... tokens (right padding)
        length = max(1, t - 3 * row)
        attention[row, p + length:] = 0
        completion_mask[row, length:] = 0

    def step(share: bool) -> float:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        logprobs, _ = sequence_logprobs(model, input_ids, attention, completion_mask,
                                        share_prompts=share)
        logprobs.sum().backward()
        return time.perf_counter() - start

    step(True)  # warm-up (allocator, first-call overheads), not timed
    times = {True: [], False: []}
    for _ in range(args.repeats):
        for share in (False, True):
            times[share].append(step(share))
    full, shared = statistics.median(times[False]), statistics.median(times[True])
    predicted = (p + n * t) / (n * (p + t))
    print(f"P={p} T={t} G={n} torch threads={torch.get_num_threads()}")
    print("| forward | runs (s) | median (s) |")
    print("| --- | --- | --- |")
    for name, share in (("full", False), ("shared prompt", True)):
        runs = ", ".join(f"{s:.2f}" for s in times[share])
        print(f"| {name} | {runs} | {statistics.median(times[share]):.2f} |")
    ratios = [s / f for s, f in zip(times[True], times[False])]
    print(f"shared / full: {shared / full:.3f} (medians); per interleaved pair: "
          f"{', '.join(f'{r:.3f}' for r in ratios)}; body alone predicted {predicted:.3f}")


if __name__ == "__main__":
    main()
