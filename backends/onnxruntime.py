"""The ONNX Runtime backend: IO specs read from ONNX graphs and one InferenceSession per (model, device)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from heddle.backends.base import BackendError, BackendTimeout, InputCheck, make_pool, numpy_dtype
from heddle.backends.watchdog import WATCHDOG
from heddle.scheduler.specs import DeviceSpec, ModelSpec, TensorSpec

__all__ = ["OrtExecutor", "read_io_spec", "session_options", "warm_inputs"]

_DATATYPE_OF_ELEM: dict[int, str] = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
}
_CPU = "CPUExecutionProvider"


def _tensor_spec(value: onnx.ValueInfoProto, path: Path) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        raise BackendError(f"{path}: {value.name} is not a tensor; only tensor inputs/outputs are served")
    tensor = value.type.tensor_type
    datatype = _DATATYPE_OF_ELEM.get(tensor.elem_type)
    if datatype is None:
        name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        raise BackendError(f"{path}: tensor {value.name} has element type {name}, which KServe cannot carry")
    # Symbolic (dim_param) and unknown dims are dynamic.
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorSpec(value.name, datatype, shape)


def read_io_spec(path: str | Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The (inputs, outputs) tensor specs of an ONNX file's graph."""
    path = Path(path)
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # missing file, truncated or non-ONNX bytes: onnx raises several types
        raise BackendError(f"cannot read ONNX model {path}: {e}") from e
    # Old exporters list initializers among the inputs; they are weights, not inputs.
    weights = {init.name for init in graph.initializer}
    inputs = tuple(_tensor_spec(v, path) for v in graph.input if v.name not in weights)
    outputs = tuple(_tensor_spec(v, path) for v in graph.output)
    return inputs, outputs


def warm_inputs(model: ModelSpec) -> dict[str, np.ndarray]:
    """Zeros for every input; dynamic dims are 1, except an empty KV cache (past length 0)."""
    feed = {}
    for spec in model.inputs:
        shape = [1 if d < 0 else d for d in spec.shape]
        # The KV convention: past_key_values.N.* are [B, heads, past, head_dim] and the
        # attention mask spans past + new tokens, so a past of 0 keeps all of them consistent.
        if spec.name.startswith("past_key_values.") and len(shape) == 4 and spec.shape[2] < 0:
            shape[2] = 0
        if spec.datatype == "BYTES":
            feed[spec.name] = np.full(shape, "", dtype=object)
        else:
            feed[spec.name] = np.zeros(shape, dtype=numpy_dtype(spec.datatype))
    return feed


def session_options(device: DeviceSpec) -> ort.SessionOptions:
    """Session options for a device: few threads, no spinning, all graph optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(device.options.get("intra_op_threads", 1))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning idle ORT threads would burn the core the gRPC loop needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # ORT's CPU arena keeps the peak of every run for the session's life (a 4 MB batch of token
    # ids left 2.1 GB behind); without it freed buffers go back to malloc. No latency cost measured
    # on the demo models; a device may turn it back on with cpu_mem_arena = true.
    options.enable_cpu_mem_arena = bool(device.options.get("cpu_mem_arena", False))
    return options


@dataclass(frozen=True, slots=True)
class _Loaded:
    spec: ModelSpec
    session: ort.InferenceSession
    output_names: tuple[str, ...]
    check: InputCheck


class OrtExecutor:
    """Runs ONNX models on one device through ONNX Runtime with explicitly chosen providers."""

    def __init__(self, device: DeviceSpec) -> None:
        self.device = device
        self._requested = list(device.options.get("providers") or [_CPU])
        self._provider_options = device.options.get("provider_options")
        self._check_provider_options()
        self._sessions: dict[str, _Loaded] = {}
        self._obtained: list[str] | None = None
        self._lock = threading.Lock()
        self.pool = make_pool(device)

    def _check_provider_options(self) -> None:
        options = self._provider_options
        if options is not None and len(options) != len(self._requested):
            raise BackendError(
                f"device {self.device.id}: provider_options has {len(options)} entries "
                f"for {len(self._requested)} providers {self._requested}"
            )
        missing = [p for p in self._requested if p not in ort.get_available_providers()]
        if missing:
            raise BackendError(
                f"device {self.device.id}: requested providers {missing} are not in this onnxruntime "
                f"build (available: {ort.get_available_providers()})"
            )

    def _open(self, what: str, model: str | bytes) -> ort.InferenceSession:
        try:
            session = ort.InferenceSession(
                model,
                sess_options=session_options(self.device),
                providers=self._requested,
                provider_options=self._provider_options,
            )
        except Exception as e:  # onnxruntime raises several unrelated types here
            raise BackendError(f"{what} on device {self.device.id}: cannot create session: {e}") from e
        obtained = session.get_providers()
        # ORT falls back to CPU silently (e.g. onnxruntime-gpu without CUDA): that is an error here.
        lost = [p for p in self._requested if p != _CPU and p not in obtained]
        if lost:
            raise BackendError(
                f"{what} on device {self.device.id}: requested providers {self._requested} "
                f"but obtained {obtained} (missing {lost})"
            )
        self._obtained = obtained
        return session

    def load(self, model: ModelSpec) -> None:
        """Create, check and warm the session for `model`; loading it again is a no-op."""
        if model.name in self._sessions:
            return
        self.replace(model)

    def replace(self, model: ModelSpec) -> None:
        """Load `model` and put it in place of a loaded model of its name, in one step: runs under
        way finish on the session they hold, later runs get the new one (a config reload)."""
        session = self._open(f"model {model.name}", model.artifact)
        graph_inputs = {i.name for i in session.get_inputs()}
        undeclared = sorted(graph_inputs - {t.name for t in model.inputs})
        if undeclared:
            raise BackendError(f"model {model.name}: graph inputs {undeclared} are missing from its spec")
        names = tuple(t.name for t in model.outputs) or tuple(o.name for o in session.get_outputs())
        loaded = _Loaded(model, session, names, InputCheck(model))
        self._run(loaded, warm_inputs(model))
        with self._lock:
            self._sessions[model.name] = loaded

    def unload(self, model: str) -> None:
        """Forget a model (removed by a config reload, once no run of it is left)."""
        with self._lock:
            self._sessions.pop(model, None)

    def _run(self, loaded: _Loaded, feed: Mapping[str, Any],
             options: ort.RunOptions | None = None) -> dict[str, np.ndarray]:
        try:
            arrays = loaded.session.run(list(loaded.output_names), dict(feed), options)
        except Exception as e:  # onnxruntime's errors are not one hierarchy
            raise BackendError(f"model {loaded.spec.name} on device {self.device.id}: {e}") from e
        return dict(zip(loaded.output_names, arrays, strict=True))

    def run(self, model: str, inputs: Mapping[str, np.ndarray], *, priority: int = 0,
            timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Check inputs against the spec and run; blocks the calling thread (ORT releases the GIL).

        A run still going at timeout_s is terminated (RunOptions.terminate, set from the watchdog
        thread; ORT checks it between nodes) and raises BackendTimeout; the session stays usable."""
        loaded = self._sessions.get(model)
        if loaded is None:
            raise BackendError(f"model {model} is not loaded on device {self.device.id}")
        loaded.check(inputs)
        if timeout_s is None:
            return self._run(loaded, inputs)
        options = ort.RunOptions()
        alarm = WATCHDOG.arm(timeout_s, functools.partial(setattr, options, "terminate", True))
        try:
            return self._run(loaded, inputs, options)
        except BackendError:
            # ORT says "Exiting due to terminate flag being set to true" as a plain Fail; the flag
            # (set only by the alarm) is the reliable sign.
            if options.terminate:
                raise BackendTimeout(f"model {model} on device {self.device.id}: run terminated at its "
                                     f"timeout of {timeout_s * 1e3:.0f} ms") from None
            raise
        finally:
            alarm.cancel()

    def providers(self) -> list[str]:
        """The providers sessions on this device obtained (probed with a one-node model if none yet)."""
        if self._obtained is None:
            self._open("provider probe", _probe_model())
        return list(self._obtained or [])

    def close(self) -> None:
        # Never wait: a long run (a huge graph, a large batch) would hold the shutdown past
        # its grace period; what is still running is abandoned with the process.
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._sessions.clear()


def _probe_model() -> bytes:
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    out = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe", [value], [out])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()
