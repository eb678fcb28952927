"""The runtime on its own, no gRPC and no sleeps: function-backed executors do the stages and a
FakeClock is the only time there is (heddle.server.testing), so a deadline or a grace period
passes when the test jumps the clock."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Mapping

import numpy as np
import pytest
from server_fixtures import chain, parse_test_document, py_model

from heddle.backends.base import DeviceUnavailable
from heddle.scheduler import Outcome
from heddle.server.config.builder import document, python_device
from heddle.server.config.load import Config
from heddle.server.runtime.runtime import Runtime
from heddle.server.testing import FakeClock, function_executors, run_on, turns

WAIT_S = 20.0  # bound on a worker thread's wait; reached only when something is broken
X = {"x": np.ones(2, np.float32)}


def _config(devices: tuple[str, ...] = ("py0",)) -> Config:
    """One python stage `tail` (run by whatever function the test gives) on the given devices."""
    return parse_test_document(document(devices=[python_device(d) for d in devices],
                                        models=[py_model("tail", "stage_fns:tail", devices=list(devices))],
                                        pipelines=[chain("p", ["tail"])]))


class Held:
    """A stage function whose calls tagged 0 hold their device's slot until release(); others echo."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self._release = threading.Event()

    def __call__(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if float(inputs["x"][0]) == 0:
            self.started.set()
            if not self._release.wait(WAIT_S):
                raise TimeoutError("the test never released the stage")
        return {"y": inputs["x"]}

    def release(self) -> None:
        self._release.set()

    async def wait_started(self) -> None:
        """Until the held call runs in its worker thread (a thread's event, not the clock)."""
        assert await asyncio.get_running_loop().run_in_executor(None, self.started.wait, WAIT_S)


def _tagged(tag: float) -> dict[str, np.ndarray]:
    return {"x": np.full(2, tag, np.float32)}


def test_a_queued_request_ends_at_its_deadline_when_the_clock_gets_there() -> None:
    """Behind a held slot, a request with a 1 s deadline is still queued at 0.999 s and ends
    DEADLINE_EXCEEDED once the clock passes 1 s, woken by the deadline timer alone."""
    clock, held = FakeClock(), Held()
    config = _config()
    runtime = Runtime(config, function_executors(config.devices, held), clock=clock)

    async def main() -> tuple[bool, Outcome]:
        first = asyncio.ensure_future(runtime.run(config.pipelines["p"], _tagged(0), priority=1))
        await held.wait_started()
        late = asyncio.ensure_future(runtime.run(config.pipelines["p"], _tagged(1), priority=1, deadline_s=1.0))
        await turns()
        clock.jump(0.999)
        await turns()
        early = late.done()
        clock.jump(0.002)  # nothing else happens: only the deadline timer can end it
        await turns()
        outcome = late.result().outcome if late.done() else None
        held.release()
        await first
        return early, outcome

    assert run_on(clock, main()) == (False, Outcome.DEADLINE_EXCEEDED)


def test_a_stage_whose_device_is_lost_is_retried_on_the_other() -> None:
    """The first run fails DeviceUnavailable: its device leaves rotation and the stage runs again
    on the other device, and the request ends OK with the second run's outputs."""
    clock = FakeClock()
    config = _config(("py0", "py1"))
    ran: list[str] = []

    def on(device: str):
        def fn(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            ran.append(device)
            if len(ran) == 1:
                raise DeviceUnavailable(f"{device} is gone")
            return {"y": inputs["x"] * 2}
        return fn

    runtime = Runtime(config, function_executors(config.devices, {"py0": on("py0"), "py1": on("py1")}), clock=clock)
    result = run_on(clock, runtime.run(config.pipelines["p"], _tagged(3), priority=1, deadline_s=10.0))
    assert result.outcome is Outcome.OK
    assert result.outputs["y"].tolist() == [6.0, 6.0]
    assert len(ran) == 2 and ran[0] != ran[1]
    assert not runtime.core.is_healthy(ran[0]) and runtime.core.is_healthy(ran[1])


def test_drain_waits_out_the_grace_then_ends_the_rest_unavailable_and_refuses_new_requests() -> None:
    """A request held in its stage outlives the 5 s grace (in clock time): the drain ends it
    UNAVAILABLE and returns 1; a request arriving during the drain ends UNAVAILABLE at once."""
    clock, held = FakeClock(), Held()
    config = _config()
    runtime = Runtime(config, function_executors(config.devices, held), clock=clock)

    async def main() -> tuple[bool, int, Outcome, Outcome]:
        stuck = asyncio.ensure_future(runtime.run(config.pipelines["p"], _tagged(0), priority=1))
        await held.wait_started()
        drain = asyncio.ensure_future(runtime.drain(5.0))
        await turns()
        newcomer = await runtime.run(config.pipelines["p"], _tagged(1), priority=1)
        clock.jump(4.9)
        await turns()
        early = drain.done()
        clock.jump(0.2)
        left = await drain
        outcome = (await stuck).outcome
        held.release()
        return early, left, outcome, newcomer.outcome

    assert run_on(clock, main()) == (False, 1, Outcome.UNAVAILABLE, Outcome.UNAVAILABLE)


def test_cancelling_a_queued_request_drops_it_before_its_stage_runs() -> None:
    """Cancelled while queued behind a held slot, a request ends at once and its stage never runs;
    the request ahead is untouched and ends OK."""
    clock, held = FakeClock(), Held()
    config = _config()
    executors = function_executors(config.devices, held)
    runtime = Runtime(config, executors, clock=clock)

    async def main() -> tuple[int, Outcome]:
        first = asyncio.ensure_future(runtime.run(config.pipelines["p"], _tagged(0), priority=1))
        await held.wait_started()
        queued = asyncio.ensure_future(runtime.run(config.pipelines["p"], _tagged(7), priority=1))
        await turns()
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        in_flight = runtime.in_flight
        held.release()
        return in_flight, (await first).outcome

    assert run_on(clock, main()) == (1, Outcome.OK)
    assert [float(inputs["x"][0]) for _, inputs in executors["py0"].calls] == [0.0]


def test_a_request_id_already_in_flight_is_refused_and_the_first_goes_on() -> None:
    """A second request with the id of one in flight raises ValueError naming it; the first ends OK."""
    clock, held = FakeClock(), Held()
    config = _config()
    runtime = Runtime(config, function_executors(config.devices, held), clock=clock)

    async def main() -> Outcome:
        first = asyncio.ensure_future(runtime.run(config.pipelines["p"], _tagged(0), priority=1, request_id="r1"))
        await held.wait_started()
        with pytest.raises(ValueError, match="'r1' is already in flight"):
            await runtime.run(config.pipelines["p"], _tagged(1), priority=1, request_id="r1")
        held.release()
        return (await first).outcome

    assert run_on(clock, main()) is Outcome.OK


def test_losing_the_only_device_ends_the_running_and_the_queued_requests_unavailable() -> None:
    """The only device fails its running stage with DeviceUnavailable while another request waits in
    its queue: both end UNAVAILABLE (nowhere to go), neither with heddle's internal error."""
    clock, held = FakeClock(), Held()
    config = _config()

    def lost(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        held(model, inputs)
        raise DeviceUnavailable("py0 is gone")

    runtime = Runtime(config, function_executors(config.devices, lost), clock=clock)

    async def main() -> list[tuple[Outcome, str] | None]:
        running = asyncio.ensure_future(runtime.run(config.pipelines["p"], _tagged(0), priority=1, deadline_s=10.0))
        await held.wait_started()
        queued = asyncio.ensure_future(runtime.run(config.pipelines["p"], _tagged(1), priority=1, deadline_s=10.0))
        await turns()
        held.release()
        await running
        await turns()
        if not queued.done():
            queued.cancel()  # it would wait forever: let the loop close
            return [(running.result().outcome, running.result().error), None]
        return [(task.result().outcome, task.result().error) for task in (running, queued)]

    ended = run_on(clock, main())
    assert None not in ended, f"the queued request never ended: {ended}"
    assert [e[0] for e in ended if e] == [Outcome.UNAVAILABLE, Outcome.UNAVAILABLE], ended
    assert all("internal error" not in e[1] for e in ended if e), ended


def test_a_forming_batch_starts_when_its_queue_delay_ends_and_each_request_gets_its_rows() -> None:
    """A stage that batches (max_batch 4, max_queue_delay_us 5000) on an idle device: three
    requests wait, still unstarted at 4.9 ms; at 5 ms the core's wake-up timer alone starts them as
    one call of three rows, and each request gets back exactly its own row."""
    clock = FakeClock()
    config = _config()
    batching = {**config.models["tail"].options, "max_batch": 4, "max_queue_delay_us": 5000}
    config = dataclasses.replace(config, models={"tail": dataclasses.replace(config.models["tail"], options=batching)})
    called = threading.Event()

    def times_ten(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        called.set()
        return {"y": inputs["x"] * 10}

    executors = function_executors(config.devices, times_ten)
    runtime = Runtime(config, executors, clock=clock)

    async def main() -> tuple[int, bool, list[list[float]]]:
        runs = [asyncio.ensure_future(runtime.run(config.pipelines["p"], {"x": np.full(1, tag, np.float32)},
                                                  priority=1)) for tag in (1.0, 2.0, 3.0)]
        await turns()
        clock.jump(0.0049)
        await turns()
        started_early = len(executors["py0"].calls)
        clock.jump(0.0002)  # nothing else happens: only the batch's wake-up can start it
        await turns()
        woken = await asyncio.get_running_loop().run_in_executor(None, called.wait, WAIT_S)
        if not woken:  # a missed wake-up fails here instead of leaving the requests waiting
            for run in runs:
                run.cancel()
            return started_early, False, []
        return started_early, True, [r.outputs["y"].tolist() for r in await asyncio.gather(*runs)]

    assert run_on(clock, main()) == (0, True, [[10.0], [20.0], [30.0]])
    ((_, inputs),) = executors["py0"].calls
    assert inputs["x"].tolist() == [1.0, 2.0, 3.0]


def test_a_request_alone_starts_within_its_own_call() -> None:
    """The fast path: with nothing else in flight, run() plans and starts the request's stage
    before it first waits (no turn of the loop in between, where it used to wait for one); a
    second arrival while the first holds the slot queues, and both end OK."""
    clock, held = FakeClock(), Held()
    config = _config()
    runtime = Runtime(config, function_executors(config.devices, held), clock=clock)

    async def main() -> tuple[int, int, list[Outcome]]:
        first = asyncio.ensure_future(runtime.run(config.pipelines["p"], _tagged(0), priority=1))
        await asyncio.sleep(0)  # the task runs up to its first wait, and no further turn
        alone = len(list(runtime.core.running("py0")))
        second = asyncio.ensure_future(runtime.run(config.pipelines["p"], _tagged(1), priority=1))
        await turns()
        queued = len(runtime.core.queued("py0"))
        held.release()
        return alone, queued, [(await first).outcome, (await second).outcome]

    alone, queued, outcomes = run_on(clock, main())
    assert (alone, queued) == (1, 1)
    assert outcomes == [Outcome.OK, Outcome.OK]
