"""Everything distributed, in one place: process-group setup, all-reduces, a barrier.

The rest of the library calls these and never `torch.distributed` directly, so one process (no
launcher, no process group) and W processes (torchrun or the `deepspeed` launcher) run the same
code: every reduction below is the identity when there is no process group. Tensors must be on
the rank's device (CUDA under NCCL).

Backends: NCCL on GPUs (each rank on `cuda:LOCAL_RANK`), gloo on CPUs. Launch with torchrun or
DeepSpeed's launcher; there is no launcher of our own.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


def init_distributed(require_group: bool = False) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); joins the launcher's process group when there is one.

    Without a launcher (no WORLD_SIZE in the environment) this is one process: rank 0 of 1 and no
    process group, unless `require_group` (DeepSpeed needs a group even alone), in which case a
    one-process group is made on a free local port.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), _local_device()
    launched = "WORLD_SIZE" in os.environ
    if not launched and not require_group:
        return 0, 1, _local_device()
    if not launched:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                          MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    device = _local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            timeout=timedelta(minutes=30))
    return dist.get_rank(), dist.get_world_size(), device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: Tensor) -> Tensor:  # any shape; returns a new tensor, same shape
    """Sum over ranks (a copy; the input is untouched). Identity in one process."""
    if not is_distributed():
        return tensor.clone()
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(tensor: Tensor) -> Tensor:  # any shape
    if not is_distributed():
        return tensor.clone()
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_gather_ints(value: int, device: torch.device | str = "cpu") -> list[int]:
    """Every rank's `value`, in rank order (e.g. to check all ranks got the same batch size)."""
    if not is_distributed():
        return [int(value)]
    mine = torch.tensor([int(value)], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _local_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
