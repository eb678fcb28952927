"""Test seams for the runtime and the gateway: a clock that moves only when a test says so, an
event loop whose timers run on it, and executors built from plain functions.

    clock = FakeClock()
    executors = function_executors(config.devices, lambda model, inputs: {"y": inputs["x"]})
    runtime = Runtime(config, executors, clock=clock)           # or HeddleServer(config, executors=..., clock=...)
    run_on(clock, scenario(runtime, clock))                    # in scenario: clock.jump(1.0); await turns()

Like trio's MockClock (without autojump): time passes by `jump`, never by waiting, so a test of a
deadline or a grace period takes no wall time and cannot race the box's load."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from typing import TypeVar

from heddle.backends.testing import FunctionExecutor, StageFn
from heddle.scheduler.specs import DeviceSpec

__all__ = ["FakeClock", "FakeClockLoop", "FunctionExecutor", "StageFn", "function_executors", "run_on", "turns"]

T = TypeVar("T")


class FakeClock:
    """A monotonic clock in seconds: call it for now; `jump(s)` moves it forward."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now = start_s

    def __call__(self) -> float:
        return self._now

    def jump(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a monotonic clock does not go back (jump of {seconds} s)")
        self._now += seconds


class FakeClockLoop(asyncio.SelectorEventLoop):
    """An event loop on a FakeClock: call_later, asyncio.wait's timeout and the runtime's deadline
    timer fall due when the test jumps the clock past them. Threads (executor pools) still wake
    it as on any loop; only the time it reads is the clock's."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def time(self) -> float:
        return self.clock()


def run_on(clock: FakeClock, main: Awaitable[T]) -> T:
    """Run `main` to its end on a fresh FakeClockLoop, then close the loop."""
    loop = FakeClockLoop(clock)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def turns(n: int = 5) -> None:
    """Let the loop run n turns, so what is due now has happened: an event is stepped at the end
    of its turn, and a request the step ended reaches its awaiting task a few turns later (a timer
    that fell due after a jump, its step, the shielded future, the task: 4)."""
    for _ in range(n):
        await asyncio.sleep(0)


def function_executors(devices: Iterable[DeviceSpec],
                       fns: StageFn | Mapping[str, StageFn]) -> dict[str, FunctionExecutor]:
    """A FunctionExecutor per device (for Runtime or HeddleServer's `executors`): one function for
    all, or one per device id (a device missing from the mapping is a KeyError, said at once)."""
    return {d.id: FunctionExecutor(d, fns[d.id] if isinstance(fns, Mapping) else fns) for d in devices}
