"""A "gloo" backend for vLLM's weight-transfer API: the CPU counterpart of its "nccl" backend.

vLLM 0.32 moves new weights into a running server through its RL endpoints
(/init_weight_transfer_engine, /start_weight_update, /update_weights, /finish_weight_update) and
a backend chosen with `--weight-transfer-config '{"backend": ...}'`; its backends (nccl, ipc,
...) need GPUs. This one has the same shape as the dense NCCL backend: the trainer is rank 0 of
a two-party group with the server's worker (rank 1), joined through a TCPStore at the address
the trainer gives; per update the trainer sends the names, dtypes and shapes over HTTP and then
broadcasts the tensors one by one, and the worker loads each through vLLM's layerwise reload
(the path its own nccl backend takes). Torch's gloo runs the broadcasts over TCP, so it works
between machines too.

Registered in vLLM's factories by `register()`, which vLLM calls in every process of the server
as a general plugin (entry point group `vllm.general_plugins`, name `grpo_gloo`). grpo ships
no installed entry point: `grpo.sampler.server.server_command` puts a generated `.dist-info`
on the server's PYTHONPATH, which importlib.metadata finds like any installed package.

Limits: one worker per server (tensor_parallel_size 1: the worker is rank 1 of a group of 2);
every byte crosses TCP (about 0.5 GB for a 135M fp32 model; measured in benchmarks/RESULTS.md);
each collective and the rendezvous time out after `timeout_s` (the trainer's choice).
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

BACKEND = "gloo"


def _group(address: str, port: int, rank: int, world_size: int, timeout_s: float):
    """A two-party gloo group of its own (not torch.distributed's default group, which a
    DeepSpeed trainer or vLLM's worker already holds)."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = torch.distributed.TCPStore(address, port, world_size, is_master=rank == 0,
                                       timeout=timeout, wait_for_workers=False)
    group = torch.distributed.ProcessGroupGloo(store, rank, world_size, timeout)
    return store, group


def _broadcast(group, tensor: torch.Tensor) -> None:
    opts = torch.distributed.BroadcastOptions()
    opts.rootRank = 0
    group.broadcast([tensor], opts).wait()


def register() -> None:
    """Add the backend to vLLM's worker and trainer factories (idempotent: vLLM may call a
    plugin several times in one process)."""
    from vllm.distributed.weight_transfer.base import (TrainerInitInfo,
                                                       TrainerWeightTransferEngine,
                                                       WeightTransferEngine,
                                                       WeightTransferInitInfo,
                                                       WeightTransferUpdateInfo)
    from vllm.distributed.weight_transfer.factory import (WeightTransferEngineFactory,
                                                          WeightTransferTrainerFactory)

    if BACKEND in WeightTransferEngineFactory._registry:
        return

    @dataclass
    class GlooInitInfo(WeightTransferInitInfo):
        master_address: str
        master_port: int
        rank_offset: int = 1
        world_size: int = 2
        timeout_s: float = 60.0

    @dataclass
    class GlooUpdateInfo(WeightTransferUpdateInfo):
        names: list
        dtype_names: list
        shapes: list

    class GlooWeightTransferEngine(WeightTransferEngine):
        """The server's side: receive each tensor and load it (layerwise reload)."""

        init_info_cls, update_info_cls = GlooInitInfo, GlooUpdateInfo
        supports_draft_weight_update = False

        def init_transfer_engine(self, init_info) -> None:
            if self.parallel_config.world_size != 1:
                raise ValueError("the gloo weight transfer serves one worker per server "
                                 "(tensor/pipeline parallel size 1)")
            self._store, self.group = _group(init_info.master_address, init_info.master_port,
                                             init_info.rank_offset, init_info.world_size,
                                             init_info.timeout_s)

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)

        def update_weights(self, update_info) -> None:
            # The base class would call torch.accelerator.synchronize(): no accelerator here.
            self.receive_weights(self.parse_update_info(update_info))

        def receive_weights(self, update_info) -> None:
            if getattr(self, "group", None) is None:
                raise RuntimeError("gloo weight transfer not initialised: call "
                                   "/init_weight_transfer_engine first")
            for name, dtype, shape in zip(update_info.names, update_info.dtype_names,
                                          update_info.shapes):
                weight = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
                _broadcast(self.group, weight)
                self.model.load_weights([(name, weight)])

        def shutdown(self) -> None:
            self.group = self._store = None

    @dataclass
    class GlooTrainerInitInfo(TrainerInitInfo):
        backend: ClassVar[str] = BACKEND
        master_address: str = "127.0.0.1"
        master_port: int = 0
        timeout_s: float = 60.0

    class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine):
        """The trainer's side (the sender, one process): open the group while the server
        joins it, then per round send the metadata over HTTP and broadcast each tensor."""

        init_info_cls = GlooTrainerInitInfo

        @classmethod
        def trainer_init(cls, init_info, *, client, source=None):
            from concurrent.futures import ThreadPoolExecutor

            if source is None:
                raise ValueError("the gloo weight transfer needs a WeightSource")
            engine = cls(client=client, source=source, is_sender=init_info.is_sender)
            if not engine.is_sender:
                return engine
            payload = asdict(GlooInitInfo(init_info.master_address, init_info.master_port,
                                          timeout_s=init_info.timeout_s))
            # The server blocks in its init until both parties joined: call it on a side
            # thread while this side opens the store (rank 0).
            with ThreadPoolExecutor(max_workers=1) as pool:
                future = pool.submit(client.init_weight_transfer_engine, payload)
                engine._store, engine.group = _group(init_info.master_address,
                                                     init_info.master_port, 0, 2,
                                                     init_info.timeout_s)
                future.result()
            return engine

        def send_weights(self) -> None:
            from concurrent.futures import ThreadPoolExecutor

            meta = self.source.metadata()
            if not self.is_sender:
                for _ in self.source:
                    pass
                return
            info = GlooUpdateInfo([m.name for m in meta],
                                  [str(m.dtype).removeprefix("torch.") for m in meta],
                                  [list(m.shape) for m in meta])
            self.client.start_weight_update()
            pool = ThreadPoolExecutor(max_workers=1)
            try:  # the server receives inside /update_weights: run it beside the broadcasts
                future = pool.submit(self.client.update_weights, asdict(info))
                for m, (name, tensor) in zip(meta, self.source):
                    if name != m.name:
                        raise RuntimeError(f"weight source yielded {name!r}, expected "
                                           f"{m.name!r}")
                    _broadcast(self.group, tensor.contiguous())
                future.result()
            finally:  # on an error the server's side times out by itself; never join it
                pool.shutdown(wait=False)
            self.client.finish_weight_update()

        def shutdown(self) -> None:
            self.group = self._store = None

    WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
    WeightTransferTrainerFactory.register_engine(BACKEND, GlooTrainerWeightTransferEngine)
