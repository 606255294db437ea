"""VLLMServerSampler against a real `vllm serve` process (vLLM's CPU build, the packaged
SmolLM2-135M-Instruct, fp32), started by grpo.sampler.server with grpo's gloo weight-transfer
backend loaded as a vLLM plugin.

One server for the module (it starts in about 50 s on a quiet machine, 2 minutes under load);
the last test kills it. The tests with a server are marked slow: CI (CI=true) runs them.
"""

import os
import socket
import time

import pytest
import torch

from grpo.config import GRPOConfig
from grpo.logprobs import sequence_logprobs
from grpo.models import resolve_model
from grpo.sampler.server import start_server, stop_server
from test_trainer import kill_at_first_checkpoint



def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _port()
    log = open(tmp_path_factory.mktemp("server") / "vllm.log", "w")
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the server's: the machine is shared
    try:
        process = start_server(None, port=port, dtype="float32", max_model_len=512,
                               kv_cache_gb=1, enforce_eager=True, log_file=log, timeout_s=600)
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    yield process, f"http://127.0.0.1:{port}"
    stop_server(process)  # the whole group, engine core included, even after the kill test
    log.close()


@pytest.fixture(scope="module")
def remote(server):
    from grpo.sampler.vllm_server import VLLMServerSampler

    s = VLLMServerSampler(None, group_size=3, max_tokens=16, seed=0, urls=[server[1]],
                          request_timeout=120, startup_timeout=60)
    yield s
    s.close()


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(None), dtype=torch.float32).eval()


def _prompts(tokenizer) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                          add_generation_prompt=True)
            for q in ("Tell me a story about a cat.", "Name three rivers.",
                      "Why is the sky blue?")]


def _gap(model, r) -> tuple[float, float]:
    """Largest and mean |trainer log-prob - sampler log-prob| over the sampled tokens."""
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, r.input_ids, r.attention_mask, r.completion_mask,
                                  temperature=1.0)
    gap = (lp - r.sampler_logprobs)[r.completion_mask.bool()].abs()
    return gap.max().item(), gap.mean().item()


@pytest.mark.slow
def test_server_sampler_draws_what_the_in_process_sampler_draws(remote):
    """Same weights, same seeds: the same completions (token ids) and log-probs as VLLMSampler,
    a batch split over two calls (two ranks) included."""
    from grpo.sampler import GroupSampler, VLLMSampler

    threads = torch.get_num_threads()
    local = VLLMSampler(None, group_size=3, max_tokens=16, seed=0, dtype="float32",
                        enforce_eager=True, kv_cache_memory_gb=0.5, num_threads=1,
                        max_model_len=512)
    try:
        prompts = _prompts(remote.tokenizer)
        want = local.sample(prompts, seed=7)
    finally:
        local.close()
        torch._C.set_num_threads(threads)
    got = remote.sample(prompts, seed=7)
    assert isinstance(remote, GroupSampler)
    assert got.texts == want.texts and torch.equal(got.completion_ids, want.completion_ids)
    assert torch.equal(got.prompt_ids, want.prompt_ids)  # token ids in, no re-tokenising
    assert torch.equal(got.truncated, want.truncated)
    torch.testing.assert_close(got.sampler_logprobs, want.sampler_logprobs, atol=1e-4, rtol=0)
    halves = [remote.sample(prompts[:1], seed=7), remote.sample(prompts[1:], seed=7,
                                                                first_row=3)]
    assert halves[0].texts + halves[1].texts == want.texts
    assert len(set(got.texts)) > 3  # rows have their own seeds


@pytest.mark.slow
def test_weights_sync_through_the_weight_transfer_api(remote, hf_model):
    """After a push through /init_weight_transfer_engine + /update_weights (gloo), the server
    scores its samples as transformers does with the pushed weights (fp32: measured max ~5e-5),
    not as the old ones; pushing the originals back restores the first samples exactly.
    (vLLM's /weight_checker checksums can't show this on CPU: its repacked linear layers hash
    as empty tensors.)"""
    import copy

    prompts = _prompts(remote.tokenizer)
    before = remote.sample(prompts, seed=3)
    assert _gap(hf_model, before)[0] < 1e-3
    changed = copy.deepcopy(hf_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a step-sized change in every tensor
        for p in changed.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05 * p.std())
    remote.load_weights(changed.state_dict().items())
    assert remote.last_load_seconds > 0
    after = remote.sample(prompts, seed=3)
    worst, mean = _gap(changed, after)
    assert worst < 1e-3 and mean < 1e-4, (worst, mean)
    assert _gap(hf_model, after)[1] > 10 * mean  # the old weights no longer explain them
    assert after.texts != before.texts
    remote.load_weights(hf_model.state_dict().items())
    assert remote.sample(prompts, seed=3).texts == before.texts
    with pytest.raises(ValueError, match="misses"):  # a partial push never reaches the server
        remote.load_weights(list(hf_model.state_dict().items())[:5])


def test_unreachable_server_fails_start_up_with_its_url():
    from grpo.sampler.vllm_server import VLLMServerSampler

    url = f"http://127.0.0.1:{_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=f"{url} was not healthy after 3 s"):
        VLLMServerSampler(None, group_size=2, max_tokens=4, urls=[url], startup_timeout=3)
    assert time.monotonic() - start < 30


def test_config_checks_the_server_settings(tmp_path):
    with pytest.raises(ValueError, match="needs vllm_server_urls"):
        GRPOConfig(sampler="vllm_server", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="vllm_server_timeout must be > 0"):
        GRPOConfig(sampler="vllm_server", vllm_server_urls=["http://h:1"],
                   vllm_server_timeout=0, output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="lora_sync='adapter' needs sampler='vllm'"):
        GRPOConfig(sampler="vllm_server", vllm_server_urls=["http://h:1"], lora_r=8,
                   lora_sync="adapter", output_dir=str(tmp_path))


def _train(config: dict, out, env_extra=None, nproc: int = 1):
    """A trainer run through the module's server in child processes (tests/trainer_worker.py
    with the length reward: every group has signal), one process or torchrun with nproc
    ranks."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    recipe = Path(str(out) + ".yaml")
    recipe.write_text(yaml.safe_dump({**config, "output_dir": str(out)}))
    worker = str(Path(__file__).parent / "trainer_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_LOGGING_LEVEL": "WARNING",
           "GRPO_TEST_REWARD": "length", **(env_extra or {})}
    if nproc == 1:
        argv = [sys.executable, worker]
    else:
        argv = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(nproc),
                "--master_port", str(_port()), worker]
    # Output to a file, not a pipe: nobody reads a pipe while the test waits, and a child that
    # fills one blocks forever.
    with open(str(out) + ".log", "w") as log:
        return subprocess.Popen(argv + ["--config", str(recipe)], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def _output(out) -> str:
    from pathlib import Path
    return Path(str(out) + ".log").read_text()[-5000:]


SERVER_RUN = dict(
    num_train=40, num_test=4, countdown_num_numbers=[3], countdown_number_range=[1, 10],
    countdown_target_range=[10, 30], max_prompt_length=256, max_completion_length=16,
    num_generations=2, per_device_train_batch_size=8, beta=0.0, learning_rate=1e-4,
    report_to="none", log_completions_steps=0, eval_steps=0, seed=3, sampler="vllm_server",
    vllm_server_timeout=120, vllm_server_startup_timeout=60)


@pytest.mark.slow
def test_training_through_the_server_learns_and_resumes_exactly(server, tmp_path):
    """One process: the dense toy reward (length) rises over 4 steps; a run SIGKILLed after its step-2
    checkpoint and resumed logs the same metrics and ends with the same weights (the trainer
    pushes its weights to the server at start and on resume)."""
    from safetensors.torch import load_file

    from grpo.tracking import read_metrics

    config = dict(SERVER_RUN, vllm_server_urls=[server[1]], max_steps=4, save_steps=2,
                  save_total_limit=3)
    a = _train(config, tmp_path / "a")
    assert a.wait(timeout=900) == 0, _output(tmp_path / "a")
    b = _train(config, tmp_path / "b")
    kill_at_first_checkpoint(b, tmp_path / "b", timeout=900)
    resumed = _train(dict(config, resume_from_checkpoint="latest"), tmp_path / "b")
    assert resumed.wait(timeout=900) == 0, _output(tmp_path / "b")

    def metrics(out):
        return [{k: v for k, v in r.items() if not k.startswith("time/")
                 and k != "tokens_per_second"} for r in read_metrics(out)]

    ma, mb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    assert [r["step"] for r in ma] == [1, 2, 3, 4] and ma == mb
    rewards = [r["reward"] for r in ma]
    print("rewards", rewards)
    assert sum(rewards[2:]) > sum(rewards[:2])  # the reward rises
    wa = load_file(tmp_path / "a" / "checkpoint-4" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "checkpoint-4" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_two_zero3_ranks_share_the_server(server, tmp_path):
    """DeepSpeed ZeRO-3 on two ranks, both sampling from one server, rank 0 syncing it: the
    same completions as one process would draw (rows seeded by their place in the step's
    batch), and the dense reward rises."""
    import json

    from grpo.tracking import read_metrics

    config = dict(SERVER_RUN, vllm_server_urls=[server[1]], max_steps=4, save_steps=0,
                  engine="deepspeed", zero_stage=3, per_device_train_batch_size=4)
    run = _train(config, tmp_path / "run", {"GRPO_TEST_CALLS": str(tmp_path)}, nproc=2)
    assert run.wait(timeout=1200) == 0, _output(tmp_path / "run")
    rewards = [r["reward"] for r in read_metrics(tmp_path / "run")]
    print("rewards", rewards)
    assert len(rewards) == 4 and sum(rewards[2:]) > sum(rewards[:2])
    calls = [json.loads((tmp_path / f"calls_rank{r}.json").read_text()) for r in (0, 1)]
    assert [c[2] for c in calls[0]] == [0] * 4 and [c[2] for c in calls[1]] == [4] * 4


@pytest.mark.slow
def test_killing_the_server_mid_run_ends_the_run_within_a_minute_naming_it(server, remote,
                                                                           hf_model, tmp_path):
    """Runs last: kills the module's server while a training run uses it. The run exits with an
    error naming the server's URL within a minute, and so does each sampler call."""
    from grpo.sampler.vllm_server import ServerError
    from grpo.tracking import read_metrics

    process, url = server
    run = _train(dict(SERVER_RUN, vllm_server_urls=[url], max_steps=100, save_steps=0),
                 tmp_path / "run")
    deadline = time.time() + 900
    while not (tmp_path / "run" / "metrics.jsonl").exists() or not read_metrics(tmp_path / "run"):
        assert run.poll() is None and time.time() < deadline, _output(tmp_path / "run")
        time.sleep(0.5)
    stop_server(process)  # SIGKILL to the API server and its engine core
    killed = time.monotonic()
    run.wait(timeout=120)
    output = _output(tmp_path / "run")
    assert run.returncode != 0 and time.monotonic() - killed < 60
    assert "ServerError" in output and url in output, output[-3000:]
    start = time.monotonic()
    with pytest.raises(ServerError, match=url):
        remote.sample(_prompts(remote.tokenizer), seed=1)
    with pytest.raises(ServerError, match=url):
        remote.load_weights(hf_model.state_dict().items())
    assert time.monotonic() - start < 60
