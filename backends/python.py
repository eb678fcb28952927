"""The Python backend: operator-registered `module:function` callables run as pipeline stages.

A stage runs in a worker thread of the device (isolation = "thread", the default: no copies, but
a hung call cannot be stopped), or in one of its worker processes (isolation = "process",
backends/python_process.py: killed and replaced at its timeout)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from heddle.backends.base import (
    CALL_PARAMETERS,
    BackendError,
    BackendTimeout,
    InputError,
    check_inputs,
    make_pool,
    numpy_dtype,
)
from heddle.backends.python_process import ProcessPool
from heddle.scheduler.specs import DeviceSpec, ModelSpec, TensorSpec

__all__ = ["ISOLATIONS", "PythonExecutor", "check_outputs", "check_stage_inputs", "isolation_of", "make_stage",
           "resolve_callable", "stage_options", "stage_parameters"]

ISOLATIONS = ("thread", "process")


def isolation_of(model: ModelSpec) -> str:
    """How a python stage runs: "thread" (the default) or "process"."""
    return str(model.options.get("isolation", "thread"))


def resolve_callable(ref: str) -> Callable[..., Any]:
    """The callable named by "module:function" (the attribute may be dotted, "module:Class.method")."""
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise BackendError(f"python stage reference {ref!r} must look like 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendError(f"python stage {ref}: cannot import module {module_name}: {e}") from e
    try:
        target = functools.reduce(getattr, attr_path.split("."), module)
    except AttributeError:
        raise BackendError(f"python stage {ref}: module {module_name} has no attribute {attr_path}") from None
    if not callable(target):
        raise BackendError(f"python stage {ref}: {attr_path} is a {type(target).__name__}, not callable")
    return target


def make_stage(ref: str, options: Mapping[str, Any] | None) -> Callable[..., Any]:
    """What a python stage calls per run: the function `ref` names, or, for a stage class
    (`options` given, even empty), one instance of the class, constructed with **options."""
    target = resolve_callable(ref)
    if options is None:
        return target
    if not isinstance(target, type):
        raise BackendError(f"python stage {ref}: class names {type(target).__name__} {ref!r}, not a class")
    try:
        instance = target(**options)
    except Exception as e:  # a constructor's failure stops the start, naming the stage
        raise BackendError(f"python stage {ref}: constructing it failed: {type(e).__name__}: {e}") from e
    if not callable(instance):
        raise BackendError(f"python stage {ref}: its instances are not callable (define __call__(self, **inputs))")
    return instance


def stage_options(model: ModelSpec) -> Mapping[str, Any] | None:
    """A stage class's constructor options ({} for none), or None for a plain function."""
    if not model.options.get("stage_class"):
        return None
    return dict(model.options.get("class_options") or {})


def stage_parameters(model: ModelSpec, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The per-request parameters the stage declares: the request's value, else the default (the
    frontends have checked names, types and required ones)."""
    declared = model.options.get("parameters")
    if not declared:
        return {}
    given = given or {}
    return {name: given.get(name, p["default"]) for name, p in declared.items()}


class _Instances:
    """One instance of a stage class per worker slot: at most `slots` runs of the device run at
    once, so a run always finds one free, and an instance never serves two runs at a time."""

    def __init__(self, ref: str, options: Mapping[str, Any], slots: int) -> None:
        self.free: queue.SimpleQueue[Callable[..., Any]] = queue.SimpleQueue()
        for _ in range(slots):
            self.free.put(make_stage(ref, options))

    def __call__(self, **inputs: Any) -> Any:
        instance = self.free.get()
        try:
            return instance(**inputs)
        finally:
            self.free.put(instance)


def check_outputs(model: ModelSpec, result: Any) -> dict[str, Any]:
    """The declared outputs of a stage's result, checked against the spec; extra outputs are dropped.
    An output declared a list is a list of arrays (a tuple is taken as one), each checked."""
    if not isinstance(result, Mapping):
        raise BackendError(f"python stage {model.name}: returned {type(result).__name__}, expected a mapping")
    outputs: dict[str, Any] = {}
    for spec in model.outputs:
        if spec.name not in result:
            raise BackendError(f"python stage {model.name}: output {spec.name} is missing")
        value = result[spec.name]
        if not spec.is_list:
            outputs[spec.name] = _checked(model, spec, value, f"output {spec.name}")
            continue
        if not isinstance(value, (list, tuple)):
            raise BackendError(f"python stage {model.name}: output {spec.name} is declared a list, got "
                               f"{type(value).__name__}")
        outputs[spec.name] = [_checked(model, spec, a, f"output {spec.name}[{i}]") for i, a in enumerate(value)]
    return outputs


def _checked(model: ModelSpec, spec: TensorSpec, array: Any, what: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise BackendError(f"python stage {model.name}: {what} is a {type(array).__name__}, not a numpy array")
    expected = numpy_dtype(spec.datatype)
    if array.dtype != expected:
        raise BackendError(
            f"python stage {model.name}: {what} should be {spec.datatype} (numpy {expected}), got numpy {array.dtype}")
    if not spec.accepts_shape(array.shape):
        raise BackendError(
            f"python stage {model.name}: {what} should have shape {list(spec.shape)}, got {list(array.shape)}")
    return array


def check_stage_inputs(model: ModelSpec, inputs: Mapping[str, Any]) -> None:
    """check_inputs, where an input declared a list (a gather stage's) is a list of such arrays."""
    listed = [t for t in model.inputs if t.is_list]
    if not listed:
        check_inputs(model, inputs)
        return
    plain = dataclasses.replace(model, inputs=tuple(t for t in model.inputs if not t.is_list))
    check_inputs(plain, {k: v for k, v in inputs.items() if k not in {t.name for t in listed}})
    for spec in listed:
        value = inputs.get(spec.name)
        if not isinstance(value, list):
            raise InputError(f"model {model.name}: input {spec.name} must be a list of arrays, got "
                             f"{type(value).__name__}")
        for i, array in enumerate(value):
            try:
                _checked(model, spec, array, f"input {spec.name}[{i}]")
            except BackendError as exc:
                raise InputError(str(exc)) from None


class PythonExecutor:
    """Runs resolved Python callables as stages, on the device's pool (and its worker processes)."""

    def __init__(self, device: DeviceSpec) -> None:
        self.device = device
        self.pool = make_pool(device)
        # A process-isolated stage's callable is None here: it is imported in the workers only.
        self._stages: dict[str, tuple[ModelSpec, Callable[..., Any] | None]] = {}
        self._processes: ProcessPool | None = None
        self._lock = threading.Lock()

    def load(self, model: ModelSpec) -> None:
        """Resolve the model's `module:function` artifact (in every worker process, if isolated).

        Not warmed: unlike an ONNX graph, an operator's function may not accept zeros
        (e.g. it decodes image bytes), and importing it is the costly part anyway.
        """
        if isolation_of(model) == "process":
            with self._lock:
                if self._processes is None:
                    self._processes = ProcessPool(self.device.id, self.device.slots)
            self._processes.load(model.name, model.artifact, stage_options(model))
            fn = None
        elif (options := stage_options(model)) is not None:
            fn = _Instances(model.artifact, options, self.device.slots)
        else:
            fn = resolve_callable(model.artifact)
        with self._lock:
            self._stages[model.name] = (model, fn)

    def run(self, model: str, inputs: Mapping[str, np.ndarray], *, priority: int = 0,
            timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Call fn(**inputs) and return its declared outputs. timeout_s bounds a process-isolated
        stage (BackendTimeout); a thread cannot be stopped, so the runtime bounds its request."""
        stage = self._stages.get(model)
        if stage is None:
            raise BackendError(f"model {model} is not loaded on device {self.device.id}")
        spec, fn = stage
        check_stage_inputs(spec, inputs)
        kwargs = {**inputs, **stage_parameters(spec, CALL_PARAMETERS.get())}
        if fn is None:
            try:
                result = self._processes.run(spec.name, kwargs, timeout_s)
            except BackendTimeout as e:
                raise BackendTimeout(f"python stage {model}: {e}") from None
            except BackendError as e:
                raise BackendError(f"python stage {model}: {e}") from None
            return check_outputs(spec, result)
        try:
            result = fn(**kwargs)
        except Exception as e:  # whatever the operator's code raises is a failed stage
            raise BackendError(f"python stage {model}: {type(e).__name__}: {e}") from e
        return check_outputs(spec, result)

    def unload(self, model: str) -> None:
        """Forget a stage (removed by a config reload); loading again replaces it in place."""
        with self._lock:
            self._stages.pop(model, None)

    def providers(self) -> list[str]:
        return ["python"]

    def close(self) -> None:
        # Never wait: a stage stuck in operator code would hold the shutdown past
        # its grace period; what is still running is abandoned with the process.
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._stages.clear()
            processes, self._processes = self._processes, None
        if processes is not None:
            processes.close()
