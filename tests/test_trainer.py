"""GRPOTrainer end to end with the real parts: vLLM (CPU build), TorchEngine, packaged SmolLM2."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import load_file

from grpo.checkpoint import latest_checkpoint
from grpo.config import GRPOConfig
from grpo.tracking import read_metrics
from grpo.seeds import prompt_indices

# vLLM in fp32 on every CPU: with dtype auto a CPU with AVX-512 BF16 samples in bf16, whose
# rounding depends on the batch's shape, so a one-process and a two-rank run would draw
# different tokens and a short run's reward would move differently.
SMALL = dict(
    vllm_dtype="float32", num_train=40, num_test=4, countdown_num_numbers=[3], countdown_number_range=[1, 10],
    countdown_target_range=[10, 30], max_prompt_length=256, max_completion_length=16,
    num_generations=2, per_device_train_batch_size=4, gradient_accumulation_steps=1,
    beta=0.0, learning_rate=1e-5, vllm_enforce_eager=True, vllm_kv_cache_gb=0.5,
    report_to="none", log_completions_steps=1, eval_steps=0, seed=3,
)


def _run(config: dict, out: Path, threads: int = 2, env: dict | None = None,
         **popen) -> subprocess.Popen:
    """A trainer run in a child process (tests/trainer_worker.py: a dense reward)."""
    recipe = out.with_suffix(".yaml")
    recipe.write_text(yaml.safe_dump({**config, "output_dir": str(out)}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VLLM_LOGGING_LEVEL": "WARNING",
           **(env or {})}
    worker = Path(__file__).parent / "trainer_worker.py"
    return subprocess.Popen([sys.executable, str(worker), "--config", str(recipe)], env=env,
                            **popen)


def kill_at_first_checkpoint(child: subprocess.Popen, out: Path, timeout: float = 600) -> None:
    """SIGKILL a trainer run right after it publishes its first checkpoint (while it trains the
    next step)."""
    deadline = time.time() + timeout
    while latest_checkpoint(out) is None:
        assert child.poll() is None and time.time() < deadline, f"{out} ended before a checkpoint"
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()


def _metrics_without_timing(out: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/") and k != "tokens_per_second"}
            for row in read_metrics(out)]


def test_prompt_order_is_a_permutation_per_epoch_and_the_same_for_any_world_size():
    # 10 prompts, 2 per step: steps 0-4 are epoch 0, steps 5-9 epoch 1
    one = [prompt_indices(step, 10, 2, seed=7) for step in range(10)]
    epoch0, epoch1 = sum(one[:5], []), sum(one[5:], [])
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1  # each epoch its own order (derive_seed(seed, epoch))
    for step in range(10):  # two ranks with 1 prompt each cover the same 2 prompts, in order
        assert [prompt_indices(step, 10, 1, 7, rank, 2)[0] for rank in (0, 1)] == one[step]
    # Each seed its own order: 20 seeds, 20 different epoch-0 permutations (of 10! possible).
    orders = {tuple(i for step in range(5) for i in prompt_indices(step, 10, 2, seed))
              for seed in range(20)}
    assert len(orders) == 20


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    # Dynamic sampling on: groups tie unless the target is a multiple of 4 (targets in the data
    # order of seed 3: 16 28 | 18 12 | 10 10 | 17 16 | 19 14 ...), so some steps read extra rounds of prompts and
    # the resumed run must continue from where the data order was, not from 2 prompts a step.
    config = dict(SMALL, max_steps=4, save_steps=2, save_total_limit=3, dynamic_sampling=True,
                  dynamic_sampling_max_rounds=2)
    # 1. The uninterrupted run.
    assert _run(config, tmp_path / "a").wait(timeout=600) == 0
    # 2. The same run, SIGKILLed while it trains step 3 (right after checkpoint-2 is published)...
    child = _run(config, tmp_path / "b")
    kill_at_first_checkpoint(child, tmp_path / "b")
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-2"
    # 3. ...and resumed from its last checkpoint.
    resumed = dict(config, resume_from_checkpoint="latest")
    assert _run(resumed, tmp_path / "b").wait(timeout=600) == 0

    a, b = _metrics_without_timing(tmp_path / "a"), _metrics_without_timing(tmp_path / "b")
    assert [r["step"] for r in a] == [1, 2, 3, 4] and a == b
    assert any(r["dynamic_sampling/rounds"] > 1 for r in a[2:])  # after the resume point
    assert all(r["skipped_zero_advantage"] == 0 and r["grad_norm"] > 0 for r in a)
    wa = load_file(tmp_path / "a" / "checkpoint-4" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoint-4" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    # The run really trained: the weights moved away from the start.
    start = load_file(Path(_model_path()) / "model.safetensors")
    assert any(not torch.equal(wa[n], start[n]) for n in wa if n in start)
    # The checkpoint is a Hugging Face directory vLLM serves as it is: greedy decoding there
    # gives the same tokens as transformers on the same directory.
    from transformers import AutoModelForCausalLM

    from grpo.sampler import VLLMSampler

    ckpt_dir = str(tmp_path / "a" / "checkpoint-4")
    sampler = VLLMSampler(ckpt_dir, group_size=2, max_tokens=8, enforce_eager=True,
                          kv_cache_memory_gb=0.25, dtype="float32", max_model_len=512)
    out = sampler.sample(["<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"],
                         group_size=1, temperature=0.0)
    sampler.close()
    model = AutoModelForCausalLM.from_pretrained(ckpt_dir)
    want = model.generate(out.prompt_ids, attention_mask=out.prompt_mask, max_new_tokens=8,
                          do_sample=False)[0, out.prompt_ids.shape[1]:]
    n = int(out.completion_mask[0].sum())
    assert out.completion_ids[0, :n].tolist() == want[:n].tolist()


def _model_path() -> str:
    from grpo.models import resolve_model

    return resolve_model(None)


def test_negative_control_all_truncated_and_masked_changes_nothing(tmp_path):
    # Every completion is cut at 4 tokens; with mask_truncated_completions nothing counts, so the
    # loss is 0 and AdamW (weight_decay 0) leaves every weight exactly where it was.
    from grpo.trainer import GRPOTrainer

    config = GRPOConfig(**dict(SMALL, max_completion_length=4, max_steps=1, save_steps=0,
                               mask_truncated_completions=True, output_dir=str(tmp_path)))
    trainer = GRPOTrainer(config)
    before = {k: v.clone() for k, v in trainer.engine.model.state_dict().items()}
    history = trainer.train()
    trainer.sampler.close()
    assert history[0]["truncated_ratio"] == 1.0
    assert history[0]["loss"] == 0.0 and history[0]["num_tokens"] == 0  # nothing in the loss
    # ...but the metrics describe the completions as sampled: 4 tokens each.
    assert history[0]["completion_length/mean"] == history[0]["completion_length/max"] == 4.0
    assert history[0]["tokens_per_second"] > 0
    for name, value in trainer.engine.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # The final checkpoint is a Hugging Face directory transformers loads as it is.
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(latest_checkpoint(tmp_path))
    assert torch.equal(saved.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    logged = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert len(logged) == 4 and all(row["truncated"] for row in logged)


def test_config_errors_before_any_work(tmp_path):
    from grpo.trainer import GRPOTrainer

    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        GRPOTrainer(GRPOConfig(**dict(SMALL, output_dir=str(tmp_path),
                                      resume_from_checkpoint="latest")))
    no_target = Dataset.from_dict({"prompt": ["p"], "nums": [[1, 2, 3]]})
    with pytest.raises(ValueError, match="'target'.*countdown"):
        GRPOTrainer(GRPOConfig(**dict(SMALL, output_dir=str(tmp_path))),
                    train_dataset=no_target)
    with pytest.raises(ValueError, match="exceeds the model's context of 8192"):
        GRPOTrainer(GRPOConfig(**dict(SMALL, max_prompt_length=8000, max_completion_length=1000,
                                      output_dir=str(tmp_path))))


def test_no_two_runs_steps_or_rounds_share_a_sampling_seed():
    """`seed + step` would give run s + 1 at step t the noise of run s at step t + 1 (coupled
    draws across a seed sweep); derived seeds are distinct over runs, steps and rounds, and so
    are the low 32 bits torch's CPU generator keeps. (Ranks share a call seed: their rows are
    told apart by first_row.)"""
    from grpo.seeds import derive_seed

    seeds = [derive_seed(run, step, round_) for run in range(20) for step in range(200)
             for round_ in range(4)]
    assert len(set(seeds)) == len(seeds)
    assert len({s % 2**32 for s in seeds}) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    # A pure function of its arguments: another process (another hash seed) derives the same
    # value, so a resumed run redraws the same noise.
    code = "from grpo.seeds import derive_seed; print(derive_seed(1, 5, 0))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"}, check=True)
    assert int(other.stdout) == derive_seed(1, 5, 0)
    # The data order too: run 7's second epoch is not run 8's first.
    assert [prompt_indices(s, 10, 2, seed=7) for s in range(5, 10)] != \
        [prompt_indices(s, 10, 2, seed=8) for s in range(5)]


def test_splitmix64_matches_the_reference_generator():
    """Vigna's SplitMix64: state 0 gives 0xE220A8397B1DCDAF first; state 1234567 gives
    6457827717110365317, 3203168211198807973, 9817491932198370423 (the state advances by the
    golden gamma 0x9E3779B97F4A7C15 per output, which splitmix64(x) adds itself)."""
    from grpo.seeds import splitmix64

    gamma, mask = 0x9E3779B97F4A7C15, (1 << 64) - 1
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert [splitmix64((1234567 + i * gamma) & mask) for i in range(3)] == [
        6457827717110365317, 3203168211198807973, 9817491932198370423]


@pytest.mark.slow
def test_two_zero3_ranks_needing_different_rounds_both_finish(tmp_path):
    """Dynamic sampling with two DeepSpeed ZeRO-3 ranks (torchrun, gloo, HF sampler): one rank
    full after a round samples nothing more while the other samples on, both agree on the number
    of rounds, and both reach every train step (whose ZeRO-3 collectives would otherwise hang)."""
    out = tmp_path / "run"
    config = dict(SMALL, engine="deepspeed", zero_stage=3, sampler="hf", max_steps=3,
                  per_device_train_batch_size=2, save_steps=0, dynamic_sampling=True,
                  dynamic_sampling_max_rounds=2, output_dir=str(out))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(config))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRPO_TEST_CALLS": str(tmp_path)}
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(_port()),
                           str(Path(__file__).parent / "trainer_worker.py"), "--config",
                           str(recipe)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    calls = [json.loads((tmp_path / f"calls_rank{r}.json").read_text()) for r in (0, 1)]
    rows = [r for r in read_metrics(out) if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # Targets in the data order of seed 3: 16 28 | 18 12 | 10 10 | 17 16 | 19 14 ..., rank r
    # reading the r-th of each pair; a group has signal when the target is a multiple of 4.
    # Step 2: rank 1 is full after one round (12), rank 0 samples 18, 10, 17 and stays short.
    # Every call samples the rank's 1 prompt; each step read rounds * 2 prompts.
    from grpo.seeds import derive_seed

    rounds = [r["dynamic_sampling/rounds"] for r in rows]
    assert rounds[:2] == [1, 3] and {n for n, *_ in calls[0] + calls[1]} == {1}
    # Rank r's rows start at row r * 1 prompt * G = 2 of each round's batch over both ranks.
    assert [{first_row for _, _, first_row, _ in calls[r]} for r in (0, 1)] == [{0}, {2}]

    def rounds_sampled(rank: int, step: int) -> int:  # round k draws derive_seed(3, step, k)
        seeds = {seed for _, seed, *_ in calls[rank]}
        return sum(derive_seed(3, step, k) in seeds for k in range(3))

    assert [rounds_sampled(0, 1), rounds_sampled(1, 1)] == [3, 1]
    assert all(rounds_sampled(r, s) <= rounds[s] for r in (0, 1) for s in range(3))
    assert [r["dynamic_sampling/prompts"] for r in rows] == [2 * n for n in rounds]


def _port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_one_process_and_two_zero3_ranks_run_the_same_experiment(tmp_path):
    """Three steps in one process (TorchEngine, 4 prompts a step) and on two DeepSpeed ZeRO-3
    ranks (2 prompts each), both with the colocated vLLM sampler: every step draws the same
    completions (a completion's seed is (run seed, step, round, its row in the step's batch),
    never the rank) and the final weights agree to fp32 roundoff (the gradient is the whole
    batch's for any split)."""
    from grpo.models import resolve_model

    config = dict(SMALL, max_steps=3, save_steps=0, log_completions_steps=0)
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    child = _run(dict(config, per_device_train_batch_size=8), one / "run", threads=1,
                 env={"GRPO_TEST_CALLS": str(one)}, stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT, text=True)
    output = child.communicate(timeout=900)[0]
    assert child.returncode == 0, output[-5000:]
    recipe = two / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dict(config, engine="deepspeed", zero_stage=3,
                                          output_dir=str(two / "run"))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRPO_TEST_CALLS": str(two),
           "VLLM_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node",
                           "2", "--master_port", str(_port()),
                           str(Path(__file__).parent / "trainer_worker.py"), "--config",
                           str(recipe)], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]

    single = json.loads((one / "calls_rank0.json").read_text())
    ranks = [json.loads((two / f"calls_rank{r}.json").read_text()) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 3  # one call a step
    for step in range(3):
        (n, seed, first, rows), (n0, seed0, first0, rows0), (n1, seed1, first1, rows1) = (
            single[step], ranks[0][step], ranks[1][step])
        assert (n, n0, n1) == (4, 2, 2) and seed == seed0 == seed1
        assert (first, first0, first1) == (0, 0, 4)  # rank 1's rows: 2 prompts x G = 2 on
        assert rows == rows0 + rows1, f"step {step + 1}: the completions differ"
    assert len({tuple(r) for r in single[0][3]}) > 4  # not a batch of copies

    start = load_file(str(Path(resolve_model(None)) / "model.safetensors"))
    a = load_file(str(one / "run" / "checkpoint-3" / "model.safetensors"))
    b = load_file(str(two / "run" / "checkpoint-3" / "model.safetensors"))
    assert a.keys() == b.keys()
    moved = torch.cat([(a[k] - start[k]).abs().flatten() for k in a])
    gap = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    print(f"change max {moved.max():.3g} mean {moved.mean():.3g}; gap between the runs max "
          f"{gap.max():.3g} mean {gap.mean():.3g}")
    assert moved.max() > 2e-5  # three Adam steps at lr 1e-5 moved the weights ~lr a step...
    # ...and the runs differ by roundoff (measured: mean 7e-11 against a mean change of 1.5e-5).
    # Adam divides each gradient element by its own RMS, so an element whose gradient is
    # roundoff-sized takes a step set by that roundoff: the largest gap (measured 1.1e-6, in
    # 0.001 % of the elements above 1e-7) is a few percent of the change, not a drift.
    assert gap.mean() < 1e-4 * moved.mean() and gap.max() < 0.1 * moved.max()
