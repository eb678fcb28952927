"""Tests for the Python-stage backend and the FunctionExecutor test double."""

from __future__ import annotations

import os.path
from collections.abc import Iterator

import numpy as np
import pytest

from heddle.backends.base import BackendError, InputError
from heddle.backends.python import PythonExecutor, resolve_callable
from heddle.backends.testing import FunctionExecutor
from heddle.backends.zoo import ops
from heddle.scheduler.specs import DeviceSpec, ModelSpec, TensorSpec

DEVICE = DeviceSpec("py0", "cpu", "python", slots=2)
X = TensorSpec("x", "FP32", (-1, 3))
Y = TensorSpec("y", "FP32", (-1, 3))


# Stage functions the tests load by "module:function", as operators register them.
def double(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": x * 2, "debug": np.zeros(1)}


def wrong_dtype(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": x.astype(np.float64)}


def wrong_shape(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": x[:, :2]}


def no_y(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"z": x}


def not_an_array(x: np.ndarray) -> dict[str, object]:
    return {"y": x.tolist()}


def not_a_mapping(x: np.ndarray) -> np.ndarray:
    return x


def explode(x: np.ndarray) -> dict[str, np.ndarray]:
    raise ZeroDivisionError("no luck")


class Stages:
    @staticmethod
    def triple(x: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": x * 3}


def stage(fn_name: str) -> ModelSpec:
    return ModelSpec(fn_name, "python", f"{__name__}:{fn_name}", (X,), (Y,), kind="python")


@pytest.fixture
def executor() -> Iterator[PythonExecutor]:
    ex = PythonExecutor(DEVICE)
    yield ex
    ex.close()


def test_resolve_callable_finds_functions_and_dotted_attributes() -> None:
    """module:function and module:Class.attr both resolve to the callable itself."""
    assert resolve_callable("heddle.backends.zoo.ops:echo") is ops.echo
    assert resolve_callable(f"{__name__}:Stages.triple") is Stages.triple
    assert resolve_callable("os.path:join") is os.path.join


@pytest.mark.parametrize(("ref", "message"), [
    ("heddle.backends.zoo.ops.echo", "must look like 'module:function'"),
    ("heddle_no_such_module:f", "cannot import module heddle_no_such_module"),
    ("heddle.backends.zoo.ops:nope", "has no attribute nope"),
    ("math:pi", "pi is a float, not callable"),
])
def test_resolve_callable_errors_say_what_is_wrong(ref: str, message: str) -> None:
    """A bad reference raises BackendError that says which part of it is wrong."""
    with pytest.raises(BackendError, match=message):
        resolve_callable(ref)


def test_run_returns_declared_outputs_and_drops_extras(executor: PythonExecutor) -> None:
    """fn(**inputs) runs on the pool; declared outputs come back, undeclared ones are dropped."""
    executor.load(stage("double"))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = executor.pool.submit(executor.run, "double", {"x": x}).result()
    assert list(out) == ["y"]
    np.testing.assert_array_equal(out["y"], x * 2)


def test_zoo_preprocess_runs_as_a_stage(executor: PythonExecutor) -> None:
    """The zoo's preprocess, declared with its OP_IO spec, runs through the executor."""
    inputs, outputs = ops.OP_IO["preprocess"]
    executor.load(ModelSpec("pre", "python", "heddle.backends.zoo.ops:preprocess", inputs, outputs))
    out = executor.run("pre", {"image": np.zeros((2, 64, 64, 3), np.uint8)})
    assert out["image"].shape == (2, 3, 64, 64) and out["image"].dtype == np.float32


@pytest.mark.parametrize(("fn_name", "message"), [
    ("wrong_dtype", r"output y should be FP32 \(numpy float32\), got numpy float64"),
    ("wrong_shape", r"output y should have shape \[-1, 3\], got \[2, 2\]"),
    ("no_y", "output y is missing"),
    ("not_an_array", "output y is a list, not a numpy array"),
    ("not_a_mapping", "returned ndarray, expected a mapping"),
])
def test_bad_outputs_raise_naming_the_output(executor: PythonExecutor, fn_name: str, message: str) -> None:
    """Outputs that break the spec raise BackendError naming the stage and what is wrong."""
    executor.load(stage(fn_name))
    with pytest.raises(BackendError, match=message) as info:
        executor.run(fn_name, {"x": np.ones((2, 3), np.float32)})
    assert fn_name in str(info.value)


def test_user_exceptions_become_backend_errors(executor: PythonExecutor) -> None:
    """An exception in the stage function is wrapped with the stage name, type and message."""
    executor.load(stage("explode"))
    with pytest.raises(BackendError, match=r"^python stage explode: ZeroDivisionError: no luck$") as info:
        executor.run("explode", {"x": np.ones((1, 3), np.float32)})
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_inputs_are_checked_before_the_call(executor: PythonExecutor) -> None:
    """Inputs that break the spec raise InputError and never reach the function."""
    executor.load(stage("explode"))
    with pytest.raises(InputError, match="x expects FP32, got INT32"):
        executor.run("explode", {"x": np.ones((1, 3), np.int32)})


def test_load_and_run_errors(executor: PythonExecutor) -> None:
    """Loading an unresolvable artifact and running an unloaded stage both raise BackendError."""
    with pytest.raises(BackendError, match="no attribute missing"):
        executor.load(ModelSpec("m", "python", f"{__name__}:missing", (X,), (Y,)))
    with pytest.raises(BackendError, match="m is not loaded on device py0"):
        executor.run("m", {"x": np.ones((1, 3), np.float32)})
    assert executor.providers() == ["python"]


# --- FunctionExecutor ---

def test_function_executor_records_and_runs() -> None:
    """The double records loads and calls and returns what the plain function returns, via its pool."""
    ex = FunctionExecutor(DEVICE, lambda model, inputs: {"y": inputs["x"] + len(model)})
    try:
        ex.load(stage("double"))
        out = ex.pool.submit(ex.run, "abc", {"x": np.zeros(2)}).result()
    finally:
        ex.close()
    np.testing.assert_array_equal(out["y"], [3.0, 3.0])
    assert list(ex.loaded) == ["double"] and [model for model, _ in ex.calls] == ["abc"]
    assert ex.closed


def test_function_executor_error_types() -> None:
    """Plain exceptions become BackendError; a BackendError raised by the function passes through as is."""
    def fail(model: str, inputs: dict) -> dict:
        if model == "input":
            raise InputError("bad x")
        raise KeyError("y")

    ex = FunctionExecutor(DEVICE, fail)
    try:
        with pytest.raises(InputError, match="^bad x$"):
            ex.run("input", {})
        with pytest.raises(BackendError, match="function stage other on device py0: KeyError"):
            ex.run("other", {})
    finally:
        ex.close()
