"""Checkpoints that a kill can't corrupt.

`output_dir/checkpoint-N` is written under a temporary name (`.checkpoint-N.tmp`) and renamed
into place only when complete; a rename within one filesystem is atomic, so a SIGKILL at any
moment leaves either the finished directory or an ignored temporary one, and the previous
checkpoint whole. Only complete checkpoints (those holding `trainer_state.json`) are listed.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def resolve_checkpoint(spec: str, output_dir: str | Path) -> Path:
    """"latest" -> the newest complete checkpoint in output_dir; else the given directory."""
    path = latest_checkpoint(output_dir) if spec == "latest" else Path(spec)
    if path is None:
        raise FileNotFoundError(f"resume_from_checkpoint='latest' but {output_dir} holds no "
                                "complete checkpoint-N directory")
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"resume_from_checkpoint={spec!r}: {path} is not a complete "
                                f"checkpoint (no {STATE_FILE})")
    return path


def save_atomically(output_dir: str | Path, step: int, write: Callable[[Path], None],
                    state: dict, keep: int, is_main: bool = True,
                    barrier: Callable[[], None] = lambda: None) -> Path:
    """Call `write(tmp_dir)` (on every rank), then publish `checkpoint-{step}` and rotate.

    `state` (JSON) is written last, by the main rank, after `write` has finished everywhere:
    its presence is what marks a checkpoint complete.
    """
    root = Path(output_dir)
    final, tmp = root / f"checkpoint-{step}", root / f".checkpoint-{step}.tmp"
    if is_main:
        for stale in root.glob(".checkpoint-*.tmp"):  # left by an earlier kill
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    write(tmp)
    barrier()
    if is_main:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step after a resume: move the old one aside first
            old = root / f".checkpoint-{step}.old.tmp"
            os.replace(final, old)
            shutil.rmtree(old)
        os.replace(tmp, final)
        for stale in checkpoints(root)[:-keep]:
            shutil.rmtree(stale)
    barrier()
    return final


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
