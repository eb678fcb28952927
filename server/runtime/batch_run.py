"""One executor call for a batch (dynamic batching, scheduler/batching.py): the members' inputs
joined on axis 0, one run, the outputs split back on axis 0 by each member's rows.

Runs in the device's worker thread. A pass that fails for a reason one member's input may cause
(anything but a timeout or a lost device) is run again one member at a time, so only the members
concerned fail; a timeout or a lost device ends every member alike, as one run would.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from heddle.backends.base import BackendError, BackendTimeout, DeviceUnavailable, Executor

__all__ = ["MemberResult", "join_inputs", "run_batch", "split_outputs"]

Tensors = Mapping[str, NDArray[Any]]
# Each member's end: (outputs, compute seconds of the pass it was in), or what it failed with.
MemberResult = tuple[Tensors, float] | BaseException


def join_inputs(inputs: Sequence[Tensors]) -> dict[str, NDArray[Any]]:
    """The members' inputs, each tensor concatenated on axis 0 in member order."""
    return {name: np.concatenate([one[name] for one in inputs], axis=0) for name in inputs[0]}


def split_outputs(outputs: Tensors, rows: Sequence[int]) -> list[dict[str, NDArray[Any]]]:
    """Each member's rows of every output (views, no copy); BackendError when an output's first
    dim is not the batch's rows (the model did not keep the batch axis, so nothing can be split)."""
    total = sum(rows)
    bounds = np.cumsum([0, *rows])
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            raise BackendError(f"output {name!r} has shape {list(arr.shape)}, not the batch's {total} rows "
                               "on its first dim: it cannot be split per request")
    return [{name: arr[bounds[i]:bounds[i + 1]] for name, arr in outputs.items()} for i in range(len(rows))]


def run_batch(executor: Executor, model: str, inputs: Sequence[Tensors], *, priority: int,
              timeout_s: float | None) -> list[MemberResult]:
    """Run the members as one pass (their input tensors' first dims are their rows)."""
    rows = [_rows(one) for one in inputs]
    t0 = time.perf_counter()
    try:
        outputs = executor.run(model, join_inputs(inputs), priority=priority, timeout_s=timeout_s)
        compute_s = time.perf_counter() - t0
        return [(part, compute_s) for part in split_outputs(outputs, rows)]
    except (BackendTimeout, DeviceUnavailable) as exc:
        return [exc] * len(inputs)
    except Exception:  # a member's input may be the cause: run each alone, so only it fails
        return [_alone(executor, model, one, priority, timeout_s) for one in inputs]


def _alone(executor: Executor, model: str, inputs: Tensors, priority: int, timeout_s: float | None) -> MemberResult:
    t0 = time.perf_counter()
    try:
        return executor.run(model, inputs, priority=priority, timeout_s=timeout_s), time.perf_counter() - t0
    except Exception as exc:
        return exc


def _rows(inputs: Tensors) -> int:
    first = next(iter(inputs.values()))
    return int(first.shape[0]) if first.ndim else 1
