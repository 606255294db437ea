"""VLLMServerSampler: the GroupSampler interface on a separate `vllm serve` process (its own
GPUs, or another machine), the Mini-R1 layout: N-k GPUs train, k sample.

The same `Rollouts` as VLLMSampler, from vLLM's own OpenAI-compatible server:
- prompts go in as token ids (`/v1/completions` takes a list of ids) and come back with
  `return_token_ids`, so nothing is re-tokenised;
- each completion is one request with n = 1 and the seed VLLMSampler would give its row,
  `_row_seed(seed, first_row + r)`, so with the same weights both samplers draw the same
  completions (a request's draws depend on its seed, not on what else the server batches);
- `logprobs=0` returns each sampled token's log-prob; the server runs with
  `--logprobs-mode processed_logprobs` (grpo.sampler.server), the distribution sampled.

Weights move through vLLM's weight-transfer API (/init_weight_transfer_engine,
/start_weight_update, /update_weights, /finish_weight_update) driven by vLLM's trainer-side
engine: its "nccl" backend on GPUs, grpo's "gloo" backend on CPU (grpo/sampler/gloo_transfer.py).
The ranks share the server(s): rank r sends its requests to urls[r % len(urls)]; vLLM batches
concurrent requests from all ranks. Only rank 0 sends weights, to every server; the other ranks
take part in the gather (`engine.named_weights()` is collective under ZeRO-3) and then wait at a
barrier, so no rank samples before the new weights are in.

Failures: every HTTP call has a timeout, the weight transfer's rendezvous and broadcasts too;
a refused or dropped connection (a dead server) raises at once; errors name the URL. A rank that
raises ends its process, and torchrun (or the deepspeed launcher) then stops the other ranks.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import torch
from torch import Tensor

from grpo.models import resolve_model
from grpo.rollouts import Rollouts
from grpo.sampler.base import (call_settings, check_first_row, check_settings, collect_weights,
                               tokenize_prompts)
from grpo.sampler.server import wait_healthy
from grpo.sampler.vllm import _EMBEDDING_NAMES, _checkpoint_names, _row_seed


class ServerError(RuntimeError):
    """A vLLM server failed, timed out or could not be reached; the message names its URL."""


def _post(url: str, path: str, payload: dict | None, timeout: float) -> dict:
    body = json.dumps(payload or {}).encode()
    request = urllib.request.Request(f"{url}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:500]
        raise ServerError(f"vLLM server {url}{path} answered {e.code}: {detail}") from e
    except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
        reason = getattr(e, "reason", e)
        raise ServerError(f"vLLM server {url}{path} failed: {reason} (timeout {timeout:.0f} s)"
                          ) from e


def _get(url: str, path: str, timeout: float) -> dict:
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=timeout) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError) as e:
        raise ServerError(f"vLLM server {url}{path} failed: {getattr(e, 'reason', e)}") from e


class _HTTPClient:
    """vLLM's VLLMWeightSyncClient protocol over the server's RL routes, with our timeout and
    errors that name the URL (vLLM's HTTPVLLMWeightSyncClient needs `requests`)."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url, timeout

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        _post(self.url, "/init_weight_transfer_engine", {"init_info": init_info}, self.timeout)

    def start_weight_update(self) -> None:
        _post(self.url, "/start_weight_update", None, self.timeout)

    def update_weights(self, update_info) -> None:
        _post(self.url, "/update_weights", {"update_info": update_info}, self.timeout)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        _post(self.url, "/finish_weight_update", None, self.timeout)


def _dict_source(device: torch.device):
    """vLLM's WeightSource over the push's dict (re-pointed each round), one tensor at a time
    on `device`."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class DictSource(WeightSource):
        weights: dict[str, Tensor] = {}

        def metadata(self):
            return [ParamMeta(k, v.dtype, tuple(v.shape)) for k, v in self.weights.items()]

        def __iter__(self):
            for name, tensor in self.weights.items():
                yield name, tensor.to(device)

    return DictSource()


def _local_address(url: str) -> str:
    """This machine's address as the server sees it (the interface that routes to its host)."""
    host = urllib.parse.urlparse(url).hostname or "127.0.0.1"
    if host in ("localhost", "127.0.0.1", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))  # UDP: no packet is sent
        return s.getsockname()[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class VLLMServerSampler:
    """G completions per prompt from `vllm serve` process(es) at `urls`; see the module docstring.

    `request_timeout` bounds each generation request and each weight-transfer call (and the
    transfer's rendezvous and broadcasts), `startup_timeout` the wait for /health at start.
    `rank`/`world_size` default to torch.distributed's (0 and 1 without a process group).
    The servers outlive a run (`outlives_the_run`), so the trainer pushes its weights before the
    first step, not only after each.
    """

    outlives_the_run = True

    def __init__(self, model: str | None, group_size: int, max_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, *,
                 urls: list[str], request_timeout: float = 300.0,
                 startup_timeout: float = 600.0, stop: list[str] | None = None,
                 max_concurrency: int = 256, rank: int | None = None,
                 world_size: int | None = None):
        from transformers import AutoTokenizer

        check_settings(group_size, max_tokens, temperature, top_p)
        if isinstance(urls, str) or not urls:
            raise ValueError(f"urls must be a non-empty list of server URLs, got {urls!r}")
        for u in urls:
            if urllib.parse.urlparse(str(u)).scheme not in ("http", "https"):
                raise ValueError(f"vllm server URL must start with http:// or https://, got {u!r}")
        for name, value in (("request_timeout", request_timeout),
                            ("startup_timeout", startup_timeout)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value}")
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.world_size = world_size if world_size is not None else (
            torch.distributed.get_world_size() if dist else 1)
        self.urls = [str(u).rstrip("/") for u in urls]
        self.url = self.urls[self.rank % len(self.urls)]  # where this rank's requests go
        self.model_path = resolve_model(model)
        self.group_size, self.max_tokens, self.seed = group_size, max_tokens, seed
        self.temperature, self.top_p, self.stop = temperature, top_p, stop
        self.request_timeout, self.max_concurrency = request_timeout, max_concurrency
        self.last_load_seconds: float | None = None
        for u in (self.urls if self.rank == 0 else [self.url]):
            wait_healthy(u, startup_timeout, log=lambda m: print(f"[rank {self.rank}] {m}",
                                                                 flush=True))
        served = _get(self.url, "/v1/models", request_timeout)["data"][0]
        self.served_model, self.max_model_len = served["id"], int(served["max_model_len"])
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        pad = self.tokenizer.pad_token_id
        self.pad_id = self.tokenizer.eos_token_id if pad is None else pad
        self._required = _checkpoint_names(self.model_path)
        from transformers import AutoConfig

        self._tied = bool(getattr(AutoConfig.from_pretrained(self.model_path),
                                  "tie_word_embeddings", False))
        self._transfers: dict[str, object] = {}  # url -> vLLM trainer-side transfer engine
        self._source = None

    # ------------------------------------------------------------------ sampling
    def sample(self, prompts: list[str], *, seed: int | None = None, first_row: int = 0,
               group_size: int | None = None, temperature: float | None = None,
               max_tokens: int | None = None) -> Rollouts:
        """G completions of each prompt, rows [i*G, (i+1)*G) answering prompts[i]; row r seeded
        `_row_seed(seed, first_row + r)` as in VLLMSampler.sample."""
        g, temp, m = call_settings(self, group_size, temperature, max_tokens)
        check_first_row(first_row)
        ids = tokenize_prompts(self.tokenizer, prompts, self.max_model_len)
        call_seed = self.seed if seed is None else seed
        payloads = [{"model": self.served_model, "prompt": row_ids, "n": 1, "max_tokens": m,
                     "temperature": temp, "top_p": self.top_p, "logprobs": 0,
                     "seed": _row_seed(call_seed, first_row + i * g + j),
                     "return_token_ids": True, "stop": self.stop}
                    for i, row_ids in enumerate(ids) for j in range(g)]
        with ThreadPoolExecutor(min(self.max_concurrency, len(payloads))) as pool:
            futures = [pool.submit(_post, self.url, "/v1/completions", p, self.request_timeout)
                       for p in payloads]
            try:
                answers = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return self._to_rollouts(answers, prompts, ids, g)

    def _to_rollouts(self, answers, prompts, ids, g) -> Rollouts:
        completions, logprobs, truncated, texts = [], [], [], []
        for answer in answers:
            choice = answer["choices"][0]
            token_ids = list(choice["token_ids"])
            lps = (choice.get("logprobs") or {}).get("token_logprobs") or []
            if len(lps) != len(token_ids):
                raise ServerError(f"vLLM server {self.url} returned {len(lps)} log-probs for "
                                  f"{len(token_ids)} tokens")
            completions.append(token_ids)
            logprobs.append([float(x) for x in lps])
            truncated.append(choice["finish_reason"] == "length")
            texts.append(choice["text"])
        return Rollouts.from_groups(ids, prompts, completions, logprobs, truncated, texts, g,
                                    self.pad_id)

    # ------------------------------------------------------------------ weights
    def load_weights(self, named_tensors: Iterable[tuple[str, Tensor]]) -> None:
        """Every rank calls this with its engine's `named_weights()` (collective under ZeRO-3);
        rank 0 sends the whole state dict to every server, the others wait for it."""
        from grpo import distributed

        start = time.perf_counter()
        if self.rank != 0:
            for _ in named_tensors:  # take part in the gathers, one tensor at a time
                pass
        else:
            weights = collect_weights(((k, v.detach().cpu()) for k, v in named_tensors),
                                      self._required)
            if self._tied:  # as VLLMSampler.load_weights: the output layer's copy too
                emb = [k for k in weights if k.endswith(_EMBEDDING_NAMES)]
                if len(emb) == 1:
                    weights["lm_head.weight"] = weights[emb[0]]
            for url in self.urls:
                self._send(url, weights)
        distributed.barrier()  # nobody samples before the servers have the new weights
        self.last_load_seconds = time.perf_counter() - start

    def _send(self, url: str, weights: dict[str, Tensor]) -> None:
        cuda = torch.cuda.is_available()
        if self._source is None:
            self._source = _dict_source(torch.device("cuda") if cuda else torch.device("cpu"))
        self._source.weights = weights
        if url not in self._transfers:
            self._transfers[url] = self._init_transfer(url, cuda)
        try:
            self._transfers[url].send_weights()
        except Exception as e:
            self._transfers.pop(url, None)  # the group is unusable after a failed round
            if isinstance(e, ServerError):
                raise
            raise ServerError(f"weight transfer to the vLLM server {url} failed: "
                              f"{type(e).__name__}: {e}") from e
        # Cached prompt blocks hold the old weights' keys and values.
        _post(url, "/reset_prefix_cache", None, self.request_timeout)

    def _init_transfer(self, url: str, cuda: bool):
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        client = _HTTPClient(url, self.request_timeout)
        address, port = _local_address(url), _free_port()
        if cuda:
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            workers = int(_get(url, "/get_world_size?include_dp=false",
                               self.request_timeout)["world_size"])
            info = NCCLTrainerInitInfo(address, port, 1 + workers, rank=0)
        else:
            from grpo.sampler import gloo_transfer

            gloo_transfer.register()
            info = WeightTransferTrainerFactory._registry[gloo_transfer.BACKEND]() \
                .init_info_cls(master_address=address, master_port=port,
                               timeout_s=self.request_timeout, rank=0)
        try:
            return WeightTransferTrainerFactory.trainer_init(info, client=client,
                                                             source=self._source)
        except ServerError:
            raise
        except Exception as e:
            raise ServerError(f"could not open the weight transfer to the vLLM server {url} "
                              f"(trainer side {address}:{port}): {type(e).__name__}: {e}") from e

    def load_adapter(self, named_tensors, config) -> None:
        raise RuntimeError("the vllm_server sampler takes whole weights: set lora_sync='merged'")

    def close(self) -> None:
        """Drop the transfer groups (the servers keep running: they are not ours)."""
        for engine in self._transfers.values():
            engine.shutdown()
        self._transfers.clear()
