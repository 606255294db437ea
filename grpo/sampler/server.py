"""Start vLLM's own OpenAI-compatible server (`vllm serve`) with what VLLMServerSampler needs, and
wait for it. No server of our own: this only builds the command line and watches /health.

    python -m grpo.sampler.server --model DIR --port 8000 [--gpu 3] [-- extra vllm serve flags]

prints the command and runs it in the foreground (the README's 3+1 GPU layout starts it this
way on the sampling GPU). The flags it sets, and why:

- `VLLM_SERVER_DEV_MODE=1`: registers the RL endpoints (/pause, /resume,
  /init_weight_transfer_engine, /update_weights, /weight_checker, /reset_prefix_cache, ...).
- `--weight-transfer-config {"backend": "nccl"}` on GPUs, `"gloo"` on CPU (grpo's backend,
  grpo/sampler/gloo_transfer.py, loaded as a vLLM general plugin from a generated .dist-info).
- `--logprobs-mode processed_logprobs`: log-probs of the distribution sampled (after temperature
  and top-p), what the trainer's importance weights need; the in-process sampler uses the same.
- CPU only: `--no-enable-chunked-prefill` (per-request seeds crash vLLM's CPU build with chunked
  prefill) and a KV cache size (`VLLM_CPU_KVCACHE_SPACE`; vLLM would take most of the RAM).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

_PLUGIN_DIST = "grpo_vllm_plugin-0.0.0.dist-info"
_ENTRY_POINTS = "[vllm.general_plugins]\ngrpo_gloo = grpo.sampler.gloo_transfer:register\n"


def plugin_path() -> str:
    """A folder holding a .dist-info whose entry point registers grpo's gloo backend, so that
    vLLM's plugin loader (importlib.metadata) finds it in every server process."""
    root = Path(tempfile.gettempdir()) / "grpo-vllm-plugin"
    dist = root / _PLUGIN_DIST
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: grpo-vllm-plugin\n"
                                   "Version: 0.0.0\n")
    (dist / "entry_points.txt").write_text(_ENTRY_POINTS)
    return str(root)


def server_command(model: str, *, port: int, host: str = "127.0.0.1", dtype: str = "auto",
                   max_model_len: int | None = None, kv_cache_gb: float = 1.0,
                   enforce_eager: bool = False, cuda: bool | None = None,
                   extra: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of `vllm serve` for VLLMServerSampler. (vllm-cpu's `vllm`
    console script fails on its own distribution name, so this runs the same entry point as a
    module.)"""
    import torch

    from grpo.models import resolve_model

    cuda = torch.cuda.is_available() if cuda is None else cuda
    path = resolve_model(model)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
            "--host", host, "--port", str(port), "--dtype", dtype,
            "--logprobs-mode", "processed_logprobs",
            "--weight-transfer-config", json.dumps({"backend": "nccl" if cuda else "gloo"})]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if enforce_eager:
        argv.append("--enforce-eager")
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    if not cuda:
        argv += ["--no-enable-chunked-prefill",
                 "--max-num-batched-tokens", str(max(max_model_len or 0, 8192))]
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, round(kv_cache_gb)))
        repo = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (plugin_path(), repo, os.environ.get("PYTHONPATH")) if p)
    return argv + list(extra or []), env


def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen | None = None,
                 every_s: float = 15.0, log=print) -> None:
    """Poll `url`/health until it answers 200; a progress line every `every_s` seconds. Raises
    RuntimeError naming the URL when `timeout_s` passes or the server process exits."""
    start = last = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        now = time.monotonic()
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the vLLM server for {url} exited with status "
                               f"{process.returncode} before it was healthy")
        if now - start > timeout_s:
            raise RuntimeError(f"the vLLM server at {url} was not healthy after {timeout_s:.0f} s "
                               "(server_startup_timeout): is it started, and is the URL right?")
        if now - last >= every_s:
            log(f"waiting for the vLLM server at {url} ({now - start:.0f} s of "
                f"{timeout_s:.0f} s)")
            last = now
        time.sleep(1.0)


def start_server(model: str, *, port: int, timeout_s: float = 300.0, log_file=None,
                 **options) -> subprocess.Popen:
    """Start `vllm serve` (server_command's) as a child process in a process group of its own and
    wait until it is healthy; the caller ends it with `stop_server`. Its output goes to
    `log_file` (default: inherited)."""
    argv, env = server_command(model, port=port, **options)
    process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT
                               if log_file is not None else None, start_new_session=True)
    try:
        wait_healthy(f"http://{options.get('host', '127.0.0.1')}:{port}", timeout_s, process)
    except BaseException:
        stop_server(process)
        raise
    return process


def stop_server(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the server's whole process group (the API server and vLLM's engine-core
    process, which would outlive a signal to the API server alone) and reap the API server."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m grpo.sampler.server",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model directory (default: SmolLM2)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max_model_len", type=int, default=None)
    parser.add_argument("--kv_cache_gb", type=float, default=1.0, help="CPU only")
    parser.add_argument("--enforce_eager", action="store_true")
    parser.add_argument("--gpu", default=None, help="CUDA_VISIBLE_DEVICES for the server")
    args, extra = parser.parse_known_args(argv)
    command, env = server_command(args.model, port=args.port, host=args.host, dtype=args.dtype,
                                  max_model_len=args.max_model_len, kv_cache_gb=args.kv_cache_gb,
                                  enforce_eager=args.enforce_eager,
                                  extra=[a for a in extra if a != "--"])
    if args.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = args.gpu
    print(" ".join(command), flush=True)
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
