"""The executor seam: the Executor protocol, backend errors, input checks, dtype mapping, device pools."""

from __future__ import annotations

import concurrent.futures
import contextvars
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from heddle.backends.power.dvfs_cgroup import cgroup_joiner

if TYPE_CHECKING:
    from heddle.scheduler.specs import DeviceSpec, ModelSpec

__all__ = [
    "CALL_HEADERS",
    "CALL_PARAMETERS",
    "BackendError",
    "BackendTimeout",
    "DeviceUnavailable",
    "Executor",
    "InputError",
    "InputCheck",
    "check_inputs",
    "datatype_of",
    "make_pool",
    "numpy_dtype",
]

# Headers for the remote calls of the run under way in this worker thread: the W3C trace context a
# client sent with its request (traceparent, tracestate), so a Triton server's trace joins the
# caller's. Set around one run by the runtime's stage runner; executors that call no server ignore it.
CALL_HEADERS: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("heddle_call_headers",
                                                                                       default=None)
# The request's per-request parameters (a python stage takes the ones it declares as keyword
# arguments), set the same way around one run.
CALL_PARAMETERS: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "heddle_call_parameters", default=None)


class BackendError(Exception):
    """A stage failed inside a backend; the message names the model and the device."""


class InputError(BackendError):
    """Inputs do not match the model's IO spec; the message names the tensor, expected vs got."""


class DeviceUnavailable(BackendError):
    """The device (e.g. a remote Triton server) cannot be reached: the stage may be retried elsewhere."""


class BackendTimeout(BackendError):
    """The stage ran out of its time (the request's timeout or the backend's own deadline)."""


class Executor(Protocol):
    """Runs models on one device. `run` blocks; callers submit it to `pool` (sized to the slots)."""

    device: DeviceSpec
    pool: concurrent.futures.ThreadPoolExecutor

    def load(self, model: ModelSpec) -> None:
        """Prepare (and warm with one run) this model on this device; blocks, so call it off the loop."""

    def run(self, model: str, inputs: Mapping[str, np.ndarray], *, priority: int = 0,
            timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Run a loaded model; safe for `device.slots` concurrent callers.

        priority (heddle's scale) is for backends that can use it, like a Triton server's queue.
        timeout_s is the run's limit (its model's timeout_ms or the time left to the request's
        deadline, the smaller; None = none): a backend that can stop a run there raises
        BackendTimeout (ONNX Runtime terminates it, Triton's call times out, a process-isolated
        python stage is killed); a python stage in a thread cannot be stopped, and ignores it."""

    def providers(self) -> list[str]:
        """What the device really runs on (for ONNX Runtime: the providers obtained)."""

    def close(self) -> None:
        """Release sessions and stop the pool."""


_NUMPY_OF: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    # BYTES travel as object arrays whose items are `bytes` (variable length, like Triton's).
    "BYTES": np.dtype(object),
}
_DATATYPE_OF: dict[np.dtype, str] = {dt: name for name, dt in _NUMPY_OF.items()}


def _bfloat16() -> np.dtype | None:
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype carrying a KServe datatype. ValueError for an unknown name."""
    if datatype == "BF16":
        # numpy has no bfloat16; ml_dtypes (shipped with onnx) provides one.
        bf16 = _bfloat16()
        if bf16 is None:
            raise BackendError("BF16 tensors need the ml_dtypes package, which is not installed")
        return bf16
    try:
        return _NUMPY_OF[datatype]
    except KeyError:
        raise ValueError(f"unknown datatype {datatype!r}; expected one of {sorted(_NUMPY_OF)} or BF16") from None


def datatype_of(dtype: Any) -> str:
    """The KServe datatype name of a numpy dtype. ValueError for dtypes KServe cannot carry."""
    dt = np.dtype(dtype)
    name = _DATATYPE_OF.get(dt)
    if name is not None:
        return name
    if dt.kind in "SU":
        return "BYTES"
    if dt == _bfloat16():
        return "BF16"
    raise ValueError(f"numpy dtype {dt} has no KServe datatype")


def _describe(dtype: np.dtype) -> str:
    try:
        return datatype_of(dtype)
    except ValueError:
        return f"numpy {dtype}"


def check_inputs(model: ModelSpec, inputs: Mapping[str, Any]) -> None:
    """Raise InputError unless `inputs` has exactly the model's inputs, with their dtypes and shapes."""
    declared = {t.name: t for t in model.inputs}
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise InputError(f"model {model.name}: unknown input(s) {unknown}; expected {sorted(declared)}")
    missing = sorted(set(declared) - set(inputs))
    if missing:
        raise InputError(f"model {model.name}: missing input(s) {missing}")
    for name, spec in declared.items():
        array = inputs[name]
        if not isinstance(array, np.ndarray):
            raise InputError(
                f"model {model.name}: input {name} must be a numpy array, got {type(array).__name__}"
            )
        if array.dtype != numpy_dtype(spec.datatype):
            raise InputError(
                f"model {model.name}: input {name} expects {spec.datatype}, got {_describe(array.dtype)}"
            )
        if not spec.accepts_shape(array.shape):
            raise InputError(
                f"model {model.name}: input {name} expects shape {list(spec.shape)}, got {list(array.shape)}"
            )


class InputCheck:
    """check_inputs for one model, with its names and dtypes worked out once: a backend keeps one
    per loaded model (the sets, sorts and dtype lookups check_inputs does on each call showed in
    profiles of a tiny model). Anything off goes to check_inputs, so the errors are its own."""

    __slots__ = ("_model", "_names", "_specs")

    def __init__(self, model: ModelSpec) -> None:
        self._model = model
        self._names = frozenset(t.name for t in model.inputs)
        self._specs = tuple((t.name, numpy_dtype(t.datatype), t) for t in model.inputs)

    def __call__(self, inputs: Mapping[str, Any]) -> None:
        if inputs.keys() != self._names:
            check_inputs(self._model, inputs)
            return
        for name, dtype, spec in self._specs:
            array = inputs[name]
            if not isinstance(array, np.ndarray) or array.dtype != dtype or not spec.accepts_shape(array.shape):
                check_inputs(self._model, inputs)
                return


def _start_thread(cores: frozenset[int] | None, join_cgroup: Callable[[], None] | None) -> None:
    if cores is not None:
        # pid 0 means the calling thread on Linux: each worker pins itself, the process is untouched.
        os.sched_setaffinity(0, cores)
    if join_cgroup is not None:
        join_cgroup()


def make_pool(device: DeviceSpec) -> concurrent.futures.ThreadPoolExecutor:
    """The device's worker pool: `slots` threads named after it, pinned to options["cpu_affinity"],
    each in the device's CPU-bandwidth cgroup when it has one (`dvfs.kind = "cgroup"`)."""
    if device.slots < 1:
        raise BackendError(f"device {device.id}: slots must be >= 1, got {device.slots}")
    cores = device.options.get("cpu_affinity")
    wanted = None
    if cores is not None and hasattr(os, "sched_setaffinity"):
        wanted = frozenset(int(c) for c in cores)
        allowed = os.sched_getaffinity(0)
        # Checked here: a failing initializer would only surface later as a broken pool.
        if not wanted or not wanted <= allowed:
            raise BackendError(
                f"device {device.id}: cpu_affinity {sorted(wanted)} is not a non-empty subset "
                f"of the cores this process may use {sorted(allowed)}"
            )
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=device.slots,
        thread_name_prefix=f"heddle-{device.id}",
        initializer=_start_thread,
        initargs=(wanted, cgroup_joiner(device)),
    )
