"""`RewardSet`: call several reward functions, check what they return, weight and sum them.

What a step gets is one finite float per completion, always. How we differ from TRL's
`_calculate_rewards`, which Mini-R1 relies on:

* Every function must return exactly N values (Mini-R1's accuracy reward skips wrong answers,
  so its list drifts out of line): another length is an error, never a silent `zip` truncation.
* A reward receives the dataset columns its signature names (all with `**kwargs`);
  `check_columns` fails before the first step, naming the column and the reward.
* `None` means "not applicable": out of the weighted sum and the stats, NaN in `per_function`.
* A function that raises or returns NaN/inf fails the step by default (a reward bug that silently
  scores 0.0 trains on noise); `on_error="zero"` scores it 0.0 and counts it.
* Slow or untrusted functions can run in a process pool with a per-call `timeout`; a stuck worker
  is killed (a C-level big-integer power cannot be interrupted any other way).
The failure table: docs/architecture.md, "Rewards and prompts".
"""

from __future__ import annotations

import importlib
import inspect
import math
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

ON_ERROR = ("raise", "zero")


class RewardOutput(NamedTuple):
    total: Tensor  # [N] float32: weighted sum of the applicable rewards, always finite
    per_function: dict[str, Tensor]  # name -> [N] float32, NaN where the function returned None
    metrics: dict[str, float]  # rewards/<name>/{mean,std,errors,timeouts}, rewards/total/{mean,std}


class RewardError(RuntimeError):
    """A reward function raised or returned a non-finite value (with on_error="raise")."""


class _Spec(NamedTuple):
    name: str
    func: Callable
    weight: float
    accepts_any: bool  # takes **kwargs: gets every column
    required: tuple[str, ...]  # columns without defaults
    optional: tuple[str, ...]  # columns with defaults: passed when present


def _inspect(func: Callable, name: str) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    params = list(inspect.signature(func).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in positional:
        raise ValueError(f"reward {name!r} must take the completions as its first positional "
                         f"argument, got signature {inspect.signature(func)}")
    accepts_any, required, optional = False, [], []
    for p in params[1:]:
        if p.kind == inspect.Parameter.VAR_KEYWORD:
            accepts_any = True
        elif p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL):
            raise ValueError(f"reward {name!r}: parameter {p.name!r} cannot be passed as a "
                             "dataset column (make it a keyword parameter)")
        elif p.default is inspect.Parameter.empty:
            required.append(p.name)
        else:
            optional.append(p.name)
    return accepts_any, tuple(required), tuple(optional)


def _name_of(func: Callable) -> str:
    inner = getattr(func, "func", func)  # functools.partial
    return getattr(inner, "__name__", type(inner).__name__)


class RewardSet:
    """Weighted sum of reward functions `f(completions, **columns) -> list[float | None]`.

    funcs: a list of functions (named by `__name__`, duplicates get "_2", "_3"...) or a dict
    {name: function}. weights: one float per function, default 1.0 each.
    """

    def __init__(
        self,
        funcs: Sequence[Callable] | Mapping[str, Callable],
        weights: Sequence[float] | None = None,
        *,
        on_error: str = "raise",
        num_workers: int = 0,
        timeout: float | None = None,
        mp_context: str = "spawn",
    ):
        named = list(funcs.items()) if isinstance(funcs, Mapping) else self._auto_names(funcs)
        if not named:
            raise ValueError("funcs must hold at least one reward function, got none")
        weights = [1.0] * len(named) if weights is None else list(weights)
        if len(weights) != len(named):
            raise ValueError(f"weights has {len(weights)} entries but there are {len(named)} "
                             f"reward functions ({[n for n, _ in named]})")
        if not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
            raise ValueError(f"weights must be finite numbers, got {weights}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if timeout is not None and (num_workers == 0 or timeout <= 0):
            raise ValueError(f"timeout={timeout} needs num_workers > 0 and a positive value "
                             f"(got num_workers={num_workers}): only a process can be stopped")
        self._specs = []
        for (name, func), weight in zip(named, weights):
            if not callable(func):
                raise ValueError(f"reward {name!r} must be callable, got {type(func).__name__}")
            self._specs.append(_Spec(name, func, float(weight), *_inspect(func, name)))
            if num_workers > 0:
                _check_picklable(func, name)
        self.on_error, self.num_workers, self.timeout = on_error, num_workers, timeout
        self._mp_context, self._pool = mp_context, None

    @staticmethod
    def _auto_names(funcs) -> list[tuple[str, Callable]]:
        if callable(funcs) or isinstance(funcs, (str, bytes)):
            raise ValueError(f"funcs must be a list or dict of reward functions, got {funcs!r}")
        named, seen = [], {}
        for func in funcs:
            base = _name_of(func)
            seen[base] = seen.get(base, 0) + 1
            named.append((base if seen[base] == 1 else f"{base}_{seen[base]}", func))
        return named

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._specs]

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self._specs]

    @property
    def required_columns(self) -> dict[str, list[str]]:
        """{column: [names of the rewards that need it]}, in the order the rewards name them."""
        needed: dict[str, list[str]] = {}
        for spec in self._specs:
            for column in spec.required:
                needed.setdefault(column, []).append(spec.name)
        return needed

    def check_columns(self, columns) -> None:
        """Raise ValueError naming each required column missing from `columns` and its rewards."""
        present = set(columns)
        missing = {c: r for c, r in self.required_columns.items() if c not in present}
        if missing:
            detail = "; ".join(f"column {c!r} (needed by {', '.join(map(repr, r))})"
                               for c, r in missing.items())
            raise ValueError(f"the dataset lacks {detail}; it has columns {sorted(present)}")

    def __call__(self, completions: list[str], **columns) -> RewardOutput:
        n = len(completions)
        for column, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column {column!r} has {len(values)} rows but there are {n} "
                                 "completions: repeat each dataset row once per completion")
        self.check_columns(columns)
        per_function, metrics = {}, {}
        total = torch.zeros(n, dtype=torch.float64)
        for spec in self._specs:
            kwargs = {c: v for c, v in columns.items()
                      if spec.accepts_any or c in spec.required or c in spec.optional}
            values, errors, timeouts = self._run(spec, completions, kwargs)
            rewards = torch.tensor([math.nan if v is None else v for v in values],
                                   dtype=torch.float64)
            applicable = ~torch.isnan(rewards)
            total += torch.where(applicable, rewards * spec.weight, 0.0)
            per_function[spec.name] = rewards.float()
            metrics.update(_stats(f"rewards/{spec.name}", rewards[applicable]))
            metrics[f"rewards/{spec.name}/errors"] = float(errors)
            metrics[f"rewards/{spec.name}/timeouts"] = float(timeouts)
        metrics.update(_stats("rewards/total", total))
        return RewardOutput(total.float(), per_function, metrics)

    def _run(self, spec: _Spec, completions, kwargs) -> tuple[list, int, int]:
        if self.num_workers > 0:
            return self._run_pooled(spec, completions, kwargs)
        try:
            raw = spec.func(list(completions), **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported by name, or scored per on_error
            if self.on_error == "raise":
                raise RewardError(
                    f"reward {spec.name!r} raised {type(exc).__name__}: {exc}") from exc
            return [0.0] * len(completions), len(completions), 0
        values = _check_values(raw, spec.name, len(completions))
        return self._handle_nonfinite(values, spec.name)

    def _handle_nonfinite(self, values: list, name: str) -> tuple[list, int, int]:
        bad = [i for i, v in enumerate(values) if v is not None and not math.isfinite(v)]
        if bad and self.on_error == "raise":
            raise RewardError(f"reward {name!r} returned non-finite values at completions "
                              f"{bad[:10]} ({[values[i] for i in bad[:3]]}); return None for "
                              "'not applicable'")
        for i in bad:
            values[i] = 0.0
        return values, len(bad), 0

    def _run_pooled(self, spec: _Spec, completions, kwargs) -> tuple[list, int, int]:
        """One call per completion, in waves of `num_workers` calls that share one deadline.

        Waves keep the timeout per call: every call of a wave starts at once on an idle worker.
        """
        n, values, errors, timeouts = len(completions), [None] * len(completions), 0, 0
        for start in range(0, n, self.num_workers):
            pool = self._get_pool()
            rows = range(start, min(n, start + self.num_workers))
            pending = [(i, pool.apply_async(_call_one, (spec.func, completions[i],
                                                        {c: v[i] for c, v in kwargs.items()})))
                       for i in rows]
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            stalled = False
            for i, result in pending:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    raw = result.get(wait)
                except multiprocessing.TimeoutError:
                    values[i], timeouts, stalled = 0.0, timeouts + 1, True
                except Exception as exc:  # noqa: BLE001 - reported by name, or scored 0.0
                    if self.on_error == "raise":
                        self.close()
                        raise RewardError(f"reward {spec.name!r} raised {type(exc).__name__}: "
                                          f"{exc}") from exc
                    values[i], errors = 0.0, errors + 1
                else:
                    values[i] = _check_values(raw, spec.name, 1)[0]
            if stalled:
                self.close()  # the stuck worker cannot be interrupted; start fresh ones
        values, nonfinite, _ = self._handle_nonfinite(values, spec.name)
        return values, errors + nonfinite, timeouts

    def _get_pool(self):
        """Start the workers and wait until each has imported the reward modules.

        Timing starts only when the workers are ready: a spawned worker imports torch (grpo's
        package import) for seconds, which must not count against the first calls' timeout.
        """
        if self._pool is None:
            ctx = multiprocessing.get_context(self._mp_context)
            ready = ctx.Queue()
            modules = sorted({getattr(getattr(s.func, "func", s.func), "__module__", None)
                              for s in self._specs} - {None})
            self._pool = ctx.Pool(self.num_workers, initializer=_worker_init,
                                  initargs=(ready, modules))
            for _ in range(self.num_workers):
                ready.get(timeout=_WORKER_START_TIMEOUT)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> RewardSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __repr__(self) -> str:
        inner = ", ".join(f"{s.name}*{s.weight:g}" for s in self._specs)
        return f"RewardSet({inner})"


_WORKER_START_TIMEOUT = 300.0


def _worker_init(ready, modules: list[str]) -> None:
    for module in modules:
        importlib.import_module(module)
    ready.put(os.getpid())


def _check_picklable(func: Callable, name: str) -> None:
    try:
        pickle.dumps(func)
    except Exception as exc:  # noqa: BLE001 - lambdas, closures, local functions
        raise ValueError(f"reward {name!r} must be picklable to run in a process pool "
                         f"(a module-level function or a partial of one): {exc}") from exc


def _call_one(func: Callable, completion: str, row: dict):
    """Worker side: score one completion, with each column as a one-row list."""
    return func([completion], **{c: [v] for c, v in row.items()})


def _check_values(raw, name: str, n: int) -> list:
    if isinstance(raw, Tensor):
        raw = raw.detach().cpu().tolist()
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__"):
        raise ValueError(f"reward {name!r} must return a list of floats, got {type(raw).__name__}")
    if len(raw) != n:
        raise ValueError(f"reward {name!r} returned {len(raw)} values for {n} completions: "
                         "return one float (or None) per completion")
    values = []
    for i, v in enumerate(raw):
        if v is None:
            values.append(None)
        elif isinstance(v, (int, float)) or (hasattr(v, "__float__") and not isinstance(v, str)):
            values.append(float(v))
        else:
            raise ValueError(f"reward {name!r} returned {v!r} for completion {i}: expected a "
                             "float or None")
    return values


def join_outputs(outputs: Sequence[RewardOutput]) -> RewardOutput:
    """Several calls' outputs as one, their rows in order (a step that sampled in rounds).
    Means and stds are over all the rows; errors and timeouts add up."""
    total = torch.cat([o.total for o in outputs])
    per_function = {name: torch.cat([o.per_function[name] for o in outputs])
                    for name in outputs[0].per_function}
    metrics = {}
    for name, rewards in per_function.items():
        rewards = rewards.double()
        metrics.update(_stats(f"rewards/{name}", rewards[~torch.isnan(rewards)]))
        for count in ("errors", "timeouts"):
            key = f"rewards/{name}/{count}"
            metrics[key] = sum(o.metrics[key] for o in outputs)
    metrics.update(_stats("rewards/total", total.double()))
    return RewardOutput(total, per_function, metrics)


def _stats(prefix: str, values: Tensor) -> dict[str, float]:  # values: [M] float64
    if values.numel() == 0:
        return {}
    # Population std (correction=0): defined for a single value, as logging wants.
    return {f"{prefix}/mean": values.mean().item(),
            f"{prefix}/std": values.std(correction=0).item()}
