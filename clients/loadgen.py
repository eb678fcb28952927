"""The load generator: arrival times, open- and closed-loop senders, and one record per request.

Open-loop apps send at precomputed times whatever the server does (so overload shows as latency
and errors, not as a slower client); closed-loop apps keep `concurrency` requests in flight. Every
request ends as exactly one RequestRecord, including those the bench itself cancels at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.client import InferResult, TokenEvent
from heddle.clients.infer_inputs import generate_input
from heddle.clients.scenarios import App, Scenario
from heddle.v1 import heddle_pb2

__all__ = [
    "LiveCounts", "LoadResult", "RequestRecord", "arrival_times", "build_app_inputs", "run_load",
]

_INPUT_VARIANTS = 4  # distinct generated inputs per app, cycled, so no request repeats the last one


@dataclass(slots=True)
class RequestRecord:
    """One request as the bench saw it; times are seconds since the run started."""

    app: str
    pipeline: str
    priority: int
    deadline_ms: float | None
    seq: int  # per app, in send order
    request_id: str
    scheduled_s: float  # when the arrival process wanted it sent
    sent_s: float
    latency_ms: float  # send to response or error, on the client
    status: str  # gRPC status code name; OK for a response
    error: str = ""
    retry_after_ms: float | None = None  # a refusal's retry hint (retry-after-ms), when the server gave one
    server_total_ms: float | None = None
    server_deadline_missed: bool = False
    queue_ms: float | None = None  # sum over stages of time queued in the server
    compute_ms: float | None = None  # sum over stages of time running on a device
    stages: list[dict[str, Any]] = field(default_factory=list)
    client_cancelled: bool = False  # ended by the bench stopping, not by the server
    # Per-request figures not every request has: LLM `tokens`, `ttft_ms`, `tpot_ms` (server's
    # clock), `client_ttft_ms` (streamed: send to first token), `energy_j` with
    # `energy_estimated` (1.0 when no sensor measured it). report.py summarises every numeric key.
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class LiveCounts:
    """Running totals for a progress display."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class LoadResult:
    records: list[RequestRecord]
    window_s: float  # how long requests were being issued (shorter than asked when stopped)
    interrupted: bool


def arrival_times(app: App, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted send times in [0, duration_s) for an open-loop app."""
    if app.arrival == "poisson":
        # Enough gaps to pass duration_s with overwhelming probability, then cut.
        n = int(app.rate_hz * duration_s + 10 * np.sqrt(app.rate_hz * duration_s + 1) + 10)
        times = np.cumsum(rng.exponential(1.0 / app.rate_hz, n))
        while times[-1] < duration_s:
            times = np.concatenate([times, times[-1] + np.cumsum(rng.exponential(1.0 / app.rate_hz, n))])
    elif app.arrival == "periodic":
        period_s = 1.0 / app.rate_hz
        frames = np.arange(int(np.ceil(duration_s * app.rate_hz)) + 1) * period_s
        phases = rng.uniform(0.0, period_s, app.streams)  # streams are not in lockstep
        times = (frames[None, :] + phases[:, None]).ravel()
        jitter_s = app.jitter_ms / 1e3
        times = times + rng.uniform(-jitter_s, jitter_s, times.shape) if jitter_s else times
    elif app.arrival == "burst":
        period_s = 1.0 / app.rate_hz
        starts = rng.uniform(0.0, period_s) + np.arange(int(np.ceil(duration_s * app.rate_hz)) + 1) * period_s
        times = np.repeat(starts, app.burst_size)
    else:
        raise ValueError(f"app {app.name!r}: {app.arrival} arrivals have no precomputed times")
    times = np.sort(times)
    return times[(times >= 0.0) & (times < duration_s)]


def build_app_inputs(apps: Sequence[App], pipelines: Sequence[heddle_pb2.PipelineInfo],
                     rng: np.random.Generator) -> dict[str, list[dict[str, np.ndarray]]]:
    """Generated inputs per app from the server's declared pipeline inputs.

    Raises ValueError naming the apps whose pipeline the server does not run.
    """
    declared = {p.name: p for p in pipelines}
    missing = sorted({a.pipeline for a in apps} - set(declared))
    if missing:
        raise ValueError(f"the server runs no pipeline named {missing}; it has {sorted(declared)}")
    return {a.name: [{t.name: generate_input(t, rng) for t in declared[a.pipeline].inputs}
                     for _ in range(_INPUT_VARIANTS)] for a in apps}


class _Run:
    """One run's state: the client, inputs, records and the tasks still sending."""

    def __init__(self, client: AsyncHeddleClient, inputs: Mapping[str, list[dict[str, np.ndarray]]],
                 request_timeout_s: float, counts: LiveCounts) -> None:
        self.client, self.inputs, self.timeout_s = client, inputs, request_timeout_s
        self.counts = counts
        self.records: list[RequestRecord] = []
        self.in_flight: set[asyncio.Task] = set()
        self.issuing = True
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.tag = uuid.uuid4().hex[:8]  # request ids unique across runs against one server

    def now_s(self) -> float:
        return self.loop.time() - self.t0

    async def send(self, app: App, app_index: int, seq: int, scheduled_s: float) -> None:
        rec = RequestRecord(app.name, app.pipeline, app.priority, app.deadline_ms, seq,
                            f"bench-{self.tag}-{app_index}-{seq}", scheduled_s, self.now_s(), 0.0, "")
        variants = self.inputs[app.name]
        self.counts.sent += 1
        self.counts.in_flight += 1
        args = (app.pipeline, variants[seq % len(variants)])
        kwargs = dict(priority=app.priority, deadline_ms=app.deadline_ms, request_id=rec.request_id,
                      timeout_s=self.timeout_s,
                      generation={"max_new_tokens": app.max_new_tokens} if app.max_new_tokens else None)
        try:
            if app.stream:
                result = await self._stream(rec, *args, **kwargs)
            else:
                result = await self.client.infer(*args, **kwargs)
            _fill_from_result(rec, result)
        except grpc.RpcError as err:
            rec.status, rec.error = err.code().name, (err.details() or "")[:300]
            hint_s = getattr(err, "retry_after_s", None)
            rec.retry_after_ms = None if hint_s is None else hint_s * 1e3
        except asyncio.CancelledError:
            rec.status, rec.client_cancelled = "CANCELLED", True
            raise
        except Exception as err:  # a response the client cannot decode: count it, keep running
            rec.status, rec.error = "CLIENT_ERROR", f"{type(err).__name__}: {err}"[:300]
        finally:
            rec.latency_ms = (self.now_s() - rec.sent_s) * 1e3
            self._finish(rec)

    async def _stream(self, rec: RequestRecord, *args: Any, **kwargs: Any) -> InferResult:
        """A streamed request (InferStream, or the OpenAI API over HTTP), timed on the client: send to the
        first token event in extra["client_ttft_ms"], and first to last token event over the tokens
        between them in extra["client_tpot_ms"] (the OpenAI API reports no server-side timings)."""
        result, first_s, last_s = None, None, None
        async with contextlib.aclosing(self.client.infer_stream(*args, **kwargs)) as events:
            async for event in events:
                if isinstance(event, TokenEvent):
                    last_s = self.now_s()
                    if first_s is None:
                        first_s = last_s
                        rec.extra["client_ttft_ms"] = (first_s - rec.sent_s) * 1e3
                elif isinstance(event, InferResult):
                    result = event
        if result is None:
            raise RuntimeError("the stream ended without a result")
        tokens = sum(s.tokens for s in result.stages)
        if first_s is not None and last_s is not None and tokens > 1:
            rec.extra["client_tpot_ms"] = (last_s - first_s) * 1e3 / (tokens - 1)
        return result

    def _finish(self, rec: RequestRecord) -> None:
        self.counts.in_flight -= 1
        if rec.status == "OK":
            self.counts.ok += 1
        elif not rec.client_cancelled:
            self.counts.errors += 1
        self.records.append(rec)

    async def open_loop(self, app: App, app_index: int, times: np.ndarray) -> None:
        for seq, t in enumerate(times.tolist()):
            delay_s = t - self.now_s()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            task = asyncio.create_task(self.send(app, app_index, seq, t))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    async def closed_loop(self, app: App, app_index: int, worker: int) -> None:
        seq = worker
        while self.issuing:
            await self.send(app, app_index, seq, self.now_s())
            seq += app.concurrency  # workers interleave sequence numbers: unique per app
            if app.think_ms and self.issuing:
                await asyncio.sleep(app.think_ms / 1e3)


def _fill_from_result(rec: RequestRecord, result: InferResult) -> None:
    rec.status = "OK"
    rec.server_total_ms = result.total_ms
    rec.server_deadline_missed = result.deadline_missed
    rec.queue_ms = sum(s.queue_ms for s in result.stages)
    rec.compute_ms = sum(s.compute_ms for s in result.stages)
    rec.stages = [{"stage": s.stage, "device": s.device, "status": s.status, "queue_ms": s.queue_ms,
                   "compute_ms": s.compute_ms, "start_offset_ms": s.start_offset_ms,
                   "end_offset_ms": s.end_offset_ms} for s in result.stages]
    if result.energy_source:
        # energy_estimated is 1.0 when no sensor measured it: the report shows the label beside it.
        rec.extra["energy_j"] = result.energy_j
        rec.extra["energy_estimated"] = float(result.energy_source != "measured")
    llm = [s for s in result.stages if s.tokens]
    if llm:
        rec.extra["tokens"] = float(sum(s.tokens for s in llm))
        if llm[0].ttft_ms > 0:  # the server's timings; a stream over the OpenAI API has none
            rec.extra["ttft_ms"] = llm[0].ttft_ms
            rec.extra["tpot_ms"] = llm[-1].tpot_ms


async def run_load(client: AsyncHeddleClient, scenario: Scenario,
                   inputs: Mapping[str, list[dict[str, np.ndarray]]], *, duration_s: float,
                   seed: int = 0, stop: asyncio.Event | None = None, abort: asyncio.Event | None = None,
                   drain_s: float = 10.0, request_timeout_s: float = 60.0,
                   counts: LiveCounts | None = None) -> LoadResult:
    """Run `scenario` for duration_s or until `stop` is set, then wait up to drain_s for replies.

    Setting `abort` cuts the drain short. Requests still in flight after it are cancelled and
    recorded with client_cancelled=True.
    """
    stop, abort = stop or asyncio.Event(), abort or asyncio.Event()
    run = _Run(client, inputs, request_timeout_s, counts or LiveCounts())
    rng = np.random.default_rng(seed)
    open_senders, closed_senders = [], []
    for i, app in enumerate(scenario.apps):
        if app.open_loop:
            times = arrival_times(app, duration_s, rng)
            open_senders.append(asyncio.create_task(run.open_loop(app, i, times)))
        else:
            closed_senders.extend(asyncio.create_task(run.closed_loop(app, i, w))
                                  for w in range(app.concurrency))
    stop_wait = asyncio.create_task(stop.wait())
    await asyncio.wait([stop_wait], timeout=duration_s)
    window_s = min(run.now_s(), duration_s)
    run.issuing = False
    for sender in open_senders:
        sender.cancel()  # they only sleep between sends: cancelling loses no request
    await _drain({*run.in_flight, *closed_senders}, abort, drain_s)
    left = {*run.in_flight, *closed_senders}
    for task in left:
        task.cancel()
    await asyncio.gather(*open_senders, *left, return_exceptions=True)
    stop_wait.cancel()
    run.records.sort(key=lambda r: (r.sent_s, r.request_id))
    return LoadResult(run.records, window_s, stop.is_set())


async def _drain(pending: set[asyncio.Task], abort: asyncio.Event, drain_s: float) -> None:
    """Wait until every pending task ends, drain_s passes, or abort is set."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_s
    abort_wait = asyncio.create_task(abort.wait())
    try:
        while pending and not abort.is_set() and (left_s := deadline - loop.time()) > 0:
            done, _ = await asyncio.wait({*pending, abort_wait}, timeout=left_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            pending -= done
    finally:
        abort_wait.cancel()
