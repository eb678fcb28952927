"""Test doubles for the executor seam: an Executor built from a plain function."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import numpy as np

from heddle.backends.base import BackendError, make_pool
from heddle.scheduler.specs import DeviceSpec, ModelSpec

__all__ = ["FunctionExecutor", "StageFn"]

StageFn = Callable[[str, Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class FunctionExecutor:
    """An Executor whose run() calls `fn(model, inputs)`, for tests that need a controllable backend.

    Like the real executors it owns a pool sized to the device's slots and turns the function's
    exceptions into BackendError (a BackendError raised by `fn` passes through unchanged, so a
    test can raise InputError). Unlike them it runs models it was never asked to load, so a test
    only loads what it wants to observe. `loaded` and `calls` record what happened, in order.
    """

    def __init__(self, device: DeviceSpec, fn: StageFn) -> None:
        self.device = device
        self.pool = make_pool(device)
        self.fn = fn
        self.loaded: dict[str, ModelSpec] = {}
        self.calls: list[tuple[str, dict[str, np.ndarray]]] = []
        self.closed = False
        self._lock = threading.Lock()

    def load(self, model: ModelSpec) -> None:
        with self._lock:
            self.loaded[model.name] = model

    def run(self, model: str, inputs: Mapping[str, np.ndarray], *, priority: int = 0,
            timeout_s: float | None = None) -> dict[str, np.ndarray]:
        with self._lock:
            self.calls.append((model, dict(inputs)))
        try:
            return dict(self.fn(model, inputs))
        except BackendError:
            raise
        except Exception as e:  # same wrapping as the python backend, so callers see one error type
            raise BackendError(f"function stage {model} on device {self.device.id}: {type(e).__name__}: {e}") from e

    def providers(self) -> list[str]:
        return ["function"]

    def close(self) -> None:
        self.closed = True
        self.pool.shutdown(wait=True)
