"""The seam between the runtime and the ways a stage runs: a StageRunner per way (executor
pools for ONNX Runtime, Python and Triton unary stages; local LLM steps; Triton LLM streams),
each reporting back through the small StageEvents protocol that the Runtime implements."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from numpy.typing import NDArray

from heddle.backends.base import CALL_HEADERS, CALL_PARAMETERS, BackendError, Executor
from heddle.scheduler import Dispatch
from heddle.scheduler.specs import ModelSpec
from heddle.server.runtime.auto_inline import AutoInline
from heddle.server.runtime.batch_run import MemberResult, run_batch
from heddle.server.runtime.stage_timeouts import OverrunWatch, limit_cause, stage_timeout_s, stops_itself

if TYPE_CHECKING:
    from heddle.server.runtime.jobs import Job, TokenUpdate

__all__ = ["Completions", "ExecutorRunner", "StageEvents", "StageFuture", "StageRunner", "Tensors"]

Tensors = Mapping[str, NDArray[Any]]
# A stage run's end: its outputs and compute time, or the exception it failed with (a worker
# pool's future for executor runs, the loop's for LLM steps); done when handed to the runtime.
StageFuture = asyncio.Future[tuple[Tensors, float]] | concurrent.futures.Future[tuple[Tensors, float]]


class StageEvents(Protocol):
    """What a runner tells the runtime. Every call is on the event loop's thread; each marks the
    core dirty and the runtime steps once per loop turn, so a runner never steps the core itself."""

    clock: Callable[[], float]

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def job(self, request_id: str) -> Job | None:
        """The running request, or None once it ended."""

    def stage_done(self, d: Dispatch, fut: StageFuture) -> None:
        """The run is over: fut holds (outputs, compute_s) or the exception it failed with."""

    def batch_done(self, d: Dispatch, futures: Sequence[StageFuture]) -> None:
        """A batch's pass is over: one settled future per member, in d.members' order."""

    def step_done(self, d: Dispatch, compute_s: float) -> bool:
        """One step of an LLM stage is over and it goes on; False if its request ended meanwhile."""

    def tokens(self, update: TokenUpdate) -> None:
        """An LLM stage produced tokens: on to its request's client."""

    def device_lost(self, device: str) -> None:
        """The device stopped answering: out of rotation until its health comes back."""


class StageRunner(Protocol):
    """One way of running a dispatched stage; the runtime picks it by the stage's model."""

    def dispatch(self, d: Dispatch, job: Job, inputs: Tensors) -> None:
        """Start the run; report its end (and steps, tokens) through StageEvents."""

    def release(self, job: Job) -> None:
        """The request ended: let go of what its runs hold."""


class Completions:
    """Hands what worker threads finish to the event loop in batches: the first end posted wakes
    the loop (call_soon_threadsafe, a write to its self-pipe), and every end posted before the
    loop gets to them rides along; the runtime then steps once for all of them."""

    def __init__(self, loop_of: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self._loop_of = loop_of
        self._lock = threading.Lock()
        self._pending: deque[Callable[[], None]] = deque()
        self._woken = False

    def post(self, handle: Callable[[], None]) -> None:
        """From any thread: run handle() on the loop soon. Dropped if the loop is closed (the
        server is gone, and nobody waits for the run any more)."""
        with self._lock:
            self._pending.append(handle)
            wake, self._woken = not self._woken, True
        if wake:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop_of().call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, deque()
            self._woken = False
        for handle in batch:
            handle()


class ExecutorRunner:
    """A stage as one call of its device's Executor in the device's worker pool (ONNX Runtime,
    Python, Triton unary), with its timeout watched when the backend cannot stop itself. The run's
    end comes back through Completions, not an asyncio future per run (run_in_executor wraps each
    in one, and schedules two more callbacks per run to hand it over)."""

    def __init__(self, events: StageEvents, executors: Mapping[str, Executor], models: Mapping[str, ModelSpec],
                 overruns: OverrunWatch) -> None:
        self.events = events
        self.executors = executors
        self.models = models
        self.overruns = overruns
        self.completions = Completions(lambda: events.loop)
        self.auto_inline = AutoInline()  # which `inline = "auto"` stages run on the loop now

    def dispatch(self, d: Dispatch, job: Job, inputs: Tensors) -> None:
        events = self.events
        executor = self.executors[d.device]
        model = self.models[d.model]
        timeout_s = stage_timeout_s(model, job.request.deadline_s, events.clock())
        inline = model.options.get("inline", False)
        # An "auto" stage's CPU time is noted where it runs (wall time on a worker would count the
        # wait for the GIL the loop holds: 60 us measured for an 8 us run).
        note = functools.partial(self.auto_inline.observe, d.model, d.device) if inline == "auto" else None
        if inline is True or (note is not None and self.auto_inline.wanted(d.model, d.device)):
            self._run_inline(d, executor, inputs, job.request.priority, timeout_s, job.parameters, note)
            return
        fut = executor.pool.submit(_timed_run, executor, d.model, inputs, job.request.priority, timeout_s,
                                   job.trace_headers, job.parameters, note)
        if timeout_s is not None and not stops_itself(model):
            self.overruns.watch(d, fut, timeout_s, limit_cause(model, timeout_s))
        # Runs in the worker thread that finished the run (or here, if it is done already).
        fut.add_done_callback(lambda f: self.completions.post(functools.partial(self._done, d, f)))

    def _run_inline(self, d: Dispatch, executor: Executor, inputs: Tensors, priority: int,
                    timeout_s: float | None, parameters: Mapping[str, Any] | None = None,
                    note: Callable[[float, float], None] | None = None) -> None:
        """An `inline = true` stage runs here, on the loop (no thread hand-over and no wake-up, for
        a stage that costs less than they do); its end is handed over next turn like any other,
        so the step dispatching it never sees the core change under it. No overrun watch: its
        timer could not fire before the run returns."""
        fut: concurrent.futures.Future[tuple[Tensors, float]] = concurrent.futures.Future()
        try:
            fut.set_result(_timed_run(executor, d.model, inputs, priority, timeout_s, None, parameters, note))
        except Exception as exc:  # the stage's failure, reported as a worker's would be
            fut.set_exception(exc)
        self.events.loop.call_soon(self._done, d, fut)

    def _done(self, d: Dispatch, fut: StageFuture) -> None:
        self.overruns.returned(d)
        if fut.cancelled():  # never started: its pool was shut down (server stopping)
            fut = self.events.loop.create_future()
            fut.set_exception(BackendError("stage not run: the server is shutting down"))
        self.events.stage_done(d, fut)

    def dispatch_batch(self, d: Dispatch, jobs: Sequence[Job], inputs: Sequence[Tensors]) -> None:
        """A batch (d.batch; ONNX Runtime and Triton stages) as one call of the device's executor,
        inputs joined on axis 0 and outputs split per member (server/runtime/batch_run.py). Its
        limit is the loosest member's (the pass ends for all at once; a member's own deadline is
        the core's to watch), its Triton priority the most urgent member's."""
        executor = self.executors[d.device]
        model, now = self.models[d.model], self.events.clock()
        limits = [stage_timeout_s(model, job.request.deadline_s, now) for job in jobs]
        timeout_s = None if None in limits else max(t for t in limits if t is not None)
        fut = executor.pool.submit(run_batch, executor, d.model, inputs,
                                   priority=max(job.request.priority for job in jobs), timeout_s=timeout_s)
        fut.add_done_callback(lambda f: self.completions.post(functools.partial(self._batch_done, d, f)))

    def _batch_done(self, d: Dispatch, fut: concurrent.futures.Future[list[MemberResult]]) -> None:
        n = len(d.batch)
        if fut.cancelled():
            results: list[MemberResult] = [BackendError("stage not run: the server is shutting down")] * n
        else:
            exc = fut.exception()
            results = [exc] * n if exc is not None else fut.result()
        self.events.batch_done(d, [_settled(self.events.loop, r) for r in results])

    def release(self, job: Job) -> None:
        """Nothing held past the run itself."""


def _settled(loop: asyncio.AbstractEventLoop, result: MemberResult) -> StageFuture:
    fut: asyncio.Future[tuple[Tensors, float]] = loop.create_future()
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)
    return fut


def _timed_run(executor: Executor, model: str, inputs: Tensors, priority: int, timeout_s: float | None,
               headers: Mapping[str, str] | None = None, parameters: Mapping[str, Any] | None = None,
               note: Callable[[float, float], None] | None = None) -> tuple[Tensors, float]:
    """Runs in a device worker thread; the compute time is the backend's alone. `headers`: the
    caller's trace context, for the remote call (CALL_HEADERS); `parameters`: the request's
    per-request parameters (CALL_PARAMETERS); `note`: told the run's CPU time on this thread and
    its wall time (auto-inline's measure; a run that fails is not noted)."""
    header_token = CALL_HEADERS.set(headers) if headers else None
    parameter_token = CALL_PARAMETERS.set(parameters) if parameters else None
    try:
        t0, c0 = time.perf_counter(), time.thread_time() if note is not None else 0.0
        outputs = executor.run(model, inputs, priority=priority, timeout_s=timeout_s)
        wall_s = time.perf_counter() - t0
        if note is not None:
            note(time.thread_time() - c0, wall_s)
        return outputs, wall_s
    finally:
        if header_token is not None:
            CALL_HEADERS.reset(header_token)
        if parameter_token is not None:
            CALL_PARAMETERS.reset(parameter_token)
