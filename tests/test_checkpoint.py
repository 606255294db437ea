"""Checkpoints are published atomically: a SIGKILL mid-write leaves the previous one whole."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from grpo.checkpoint import latest_checkpoint, resolve_checkpoint, save_atomically


def _write(payload):
    def write(directory):
        (directory / "weights.bin").write_bytes(payload)
    return write


def test_rotation_keeps_the_last_k(tmp_path):
    for step in (1, 2, 3):
        save_atomically(tmp_path, step, _write(b"x" * step), {"step": step}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert latest_checkpoint(tmp_path).name == "checkpoint-3"
    assert resolve_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-3"


def test_kill_during_save_leaves_the_previous_checkpoint_whole(tmp_path):
    save_atomically(tmp_path, 1, _write(b"good"), {"step": 1}, keep=3)
    # A child process starts checkpoint 2, writes part of it, and is SIGKILLed mid-write.
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from grpo.checkpoint import save_atomically
        def slow(directory):
            (directory / "weights.bin").write_bytes(b"half")
            Path({str(tmp_path / "started")!r}).touch()
            time.sleep(60)
        save_atomically({str(tmp_path)!r}, 2, slow, {{"step": 2}}, keep=3)
    """)])
    deadline = time.time() + 60
    while not (tmp_path / "started").exists():
        assert time.time() < deadline and child.poll() is None, "child never started writing"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "checkpoint-1"
    assert (latest / "weights.bin").read_bytes() == b"good"
    assert json.loads((latest / "trainer_state.json").read_text()) == {"step": 1}
    # The next save clears the debris and publishes normally.
    save_atomically(tmp_path, 2, _write(b"new"), {"step": 2}, keep=3)
    assert not list(tmp_path.glob(".*tmp"))
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_checkpoint("latest", tmp_path)
    (tmp_path / "checkpoint-5").mkdir()  # incomplete: no trainer_state.json
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_checkpoint(str(tmp_path / "checkpoint-5"), tmp_path)
