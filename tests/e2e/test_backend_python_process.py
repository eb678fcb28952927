"""Process-isolated python stages (backends/python_process.py) on real worker processes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
import stage_fns

from heddle.backends.base import BackendError, BackendTimeout
from heddle.backends.python import PythonExecutor
from heddle.backends.watchdog import Watchdog
from heddle.scheduler.specs import DeviceSpec, ModelSpec, TensorSpec

DEVICE = DeviceSpec("py0", "cpu", "python", slots=1)
X, Y = TensorSpec("x", "FP32", (-1,)), TensorSpec("y", "FP32", (-1,))


def _spec(name: str, function: str) -> ModelSpec:
    return ModelSpec(name, "python", function, (X,), (Y,), "python", options={"isolation": "process"})


@pytest.fixture()
def executor() -> Iterator[PythonExecutor]:
    ex = PythonExecutor(DEVICE)
    for name in ("nap", "boom", "crash"):
        ex.load(_spec(name, f"stage_fns:{'nap_then_pid' if name == 'nap' else name}"))
    try:
        yield ex
    finally:
        ex.close()


def _pid(ex: PythonExecutor) -> int:
    return int(ex.run("nap", {"x": stage_fns.tagged(0)})["y"][0])


def test_a_missing_module_fails_the_load_naming_it():
    """A process-isolated stage whose module cannot be imported fails at load, not on its first call."""
    ex = PythonExecutor(DEVICE)
    try:
        with pytest.raises(BackendError, match="no_such_module"):
            ex.load(_spec("ghost", "no_such_module:fn"))
    finally:
        ex.close()


def test_an_operator_error_fails_the_stage_and_keeps_the_worker(executor: PythonExecutor):
    """An exception in the function is a failed stage naming it; the worker serves on."""
    pid = _pid(executor)
    assert pid != os.getpid()
    with pytest.raises(BackendError, match="ZeroDivisionError: boom on tag 4") as info:
        executor.run("boom", {"x": stage_fns.tagged(4)})
    assert not isinstance(info.value, BackendTimeout)
    assert _pid(executor) == pid


def test_a_worker_that_dies_is_replaced(executor: PythonExecutor):
    """A stage that takes its process down fails (exit code named); a new worker takes the next call."""
    pid = _pid(executor)
    with pytest.raises(BackendError, match=r"worker process died \(exit code 3\)"):
        executor.run("crash", {"x": stage_fns.tagged(1)})
    assert _pid(executor) not in (pid, os.getpid())


@pytest.mark.slow
def test_a_call_past_its_timeout_is_killed_and_replaced(executor: PythonExecutor):
    """A call still running at timeout_s raises BackendTimeout; its worker is gone, a new one serves."""
    pid = _pid(executor)
    with pytest.raises(BackendTimeout, match="killed and replaced"):
        executor.run("nap", {"x": stage_fns.tagged(stage_fns.HANG_S)}, timeout_s=0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _pid(executor) not in (pid, os.getpid())


def test_close_kills_a_worker_still_running_a_stage(executor: PythonExecutor):
    """close() does not wait for a running call: its worker is killed."""
    pid = _pid(executor)
    future = executor.pool.submit(executor.run, "nap", {"x": stage_fns.tagged(stage_fns.HANG_S)})
    executor.close()
    with pytest.raises(BackendError, match="died"):
        future.result(timeout=10)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_watchdog_fires_armed_alarms_and_drops_cancelled_ones():
    """An alarm due now fires on the watchdog thread; a cancelled one is no longer pending."""
    dog, fired = Watchdog(), threading.Event()
    later = dog.arm(3600.0, lambda: pytest.fail("a cancelled alarm fired"))
    assert dog.pending() == 1
    later.cancel()
    assert dog.pending() == 0
    dog.arm(0.0, fired.set)
    assert fired.wait(10)
