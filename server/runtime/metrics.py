"""Prometheus metrics of one heddle server: stage, request and device series on a private registry."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from heddle.server.power.metrics import PowerMetrics
from heddle.server.runtime.busy_window import BusyFractionCollector, BusyWindow
from heddle.server.runtime.metrics_http import MetricsHTTPServer, WithoutCreated
from heddle.server.runtime.recovery import LOAD_STATES
from heddle.server.runtime.status import status_code

if TYPE_CHECKING:
    from heddle.server.runtime.jobs import JobResult

__all__ = ["LATENCY_BUCKETS_S", "Metrics", "MetricsHTTPServer"]

# Edge inference spans a sub-millisecond preprocessing stage to a multi-second LLM request.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
# Rows per batched pass: powers of two, as max_batch and preferred sizes usually are.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _ScrapeRefresh(Collector):
    """Exports nothing: runs the runtime's refresh on its loop's thread (the state it reads is the
    loop's alone) before the registry collects the gauges registered after it."""

    def __init__(self) -> None:
        self.target: tuple[asyncio.AbstractEventLoop, Callable[[], None]] | None = None

    def collect(self) -> Iterator[Any]:
        if self.target is not None:
            loop, refresh = self.target
            _on_loop(loop, refresh)
        return iter(())

    def describe(self) -> Iterator[Any]:  # so registering it does not call collect()
        return iter(())


def _on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """fn() on the loop's thread: at once from that thread, else queued there and waited for (a
    loop that is closed or busy past a second leaves the gauges as they were)."""
    try:
        on_loop_thread = asyncio.get_running_loop() is loop
    except RuntimeError:
        on_loop_thread = False
    if on_loop_thread:
        fn()
        return
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        try:
            fn()
        finally:
            done.set_result(None)
    try:
        loop.call_soon_threadsafe(run)
        done.result(timeout=1.0)
    except (RuntimeError, concurrent.futures.TimeoutError):
        pass


class Metrics:
    """All heddle_* series of one server, registered on its own CollectorRegistry."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        busy_window_s: float = 10.0,
    ) -> None:
        # A private registry by default, so several servers can live in one test process.
        self.registry = registry if registry is not None else CollectorRegistry()
        # Registered first, so it runs before the gauges it refreshes are collected.
        self._refresh = _ScrapeRefresh()
        self.registry.register(self._refresh)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._busy = BusyWindow(busy_window_s, clock)
        self._register_stage_and_request_series()
        self._register_device_series()
        self.power = PowerMetrics(self.registry)  # power, budget, energy, DVFS, admission series
        self._register_llm_series()
        self._register_timeout_series()

    def _register_stage_and_request_series(self) -> None:
        reg, buckets = self.registry, LATENCY_BUCKETS_S
        self.stage_runs = Counter(
            "heddle_stage_runs", "Stage runs that ended, by outcome.",
            ["pipeline", "stage", "device", "status"], registry=reg)
        self.stage_queue_seconds = Histogram(
            "heddle_stage_queue_seconds", "Time a stage waited between ready and dispatch.",
            ["pipeline", "stage"], buckets=buckets, registry=reg)
        self.stage_compute_seconds = Histogram(
            "heddle_stage_compute_seconds", "Time a stage ran on its device.",
            ["pipeline", "stage", "device"], buckets=buckets, registry=reg)
        self.batch_size = Histogram(
            "heddle_batch_size", "Rows per pass of a model that batches requests (max_batch > 1), "
            "one observation per pass.", ["model", "device"], buckets=BATCH_BUCKETS, registry=reg)
        self.requests = Counter(
            "heddle_requests", "Requests that ended, by gRPC status code name.",
            ["pipeline", "status"], registry=reg)
        self.request_latency_seconds = Histogram(
            "heddle_request_latency_seconds", "End-to-end request latency.",
            ["pipeline", "priority"], buckets=buckets, registry=reg)
        self.deadline_missed = Counter(
            "heddle_deadline_missed", "Requests that ended after their deadline.",
            ["pipeline"], registry=reg)

    def _register_device_series(self) -> None:
        reg = self.registry
        self.device_busy_seconds = Counter(
            "heddle_device_busy_seconds", "Seconds of stage execution on the device.",
            ["device"], registry=reg)
        self.device_queue_length = Gauge(
            "heddle_device_queue_length", "Stages queued for the device.", ["device"], registry=reg)
        self.requests_in_flight = Gauge(
            "heddle_requests_in_flight", "Requests submitted and not answered yet.", registry=reg)
        self.device_load_state = Enum(
            "heddle_device_load_state", "Whether the device's models are loaded (server/runtime/recovery.py).",
            ["device"], states=list(LOAD_STATES), registry=reg)
        self.device_load_failures = Counter(
            "heddle_device_load_failures", "Failed loads of a model on a device whose server came back.",
            ["device", "model"], registry=reg)
        reg.register(BusyFractionCollector(self._busy))

    def _register_llm_series(self) -> None:
        reg, buckets = self.registry, LATENCY_BUCKETS_S
        self.llm_ttft_seconds = Histogram(
            "heddle_llm_time_to_first_token_seconds", "From a request's arrival to its LLM stage's first token.",
            ["priority"], buckets=buckets, registry=reg)
        self.llm_tpot_seconds = Histogram(
            "heddle_llm_time_per_output_token_seconds", "Mean time between the tokens of one generation.",
            ["priority"], buckets=buckets, registry=reg)
        self.llm_live_sequences = Gauge(
            "heddle_llm_live_sequences", "Generations holding a KV cache now.", ["priority"], registry=reg)
        self.llm_tokens_total = Counter(
            "heddle_llm_tokens", "Tokens generated (rate() gives tokens/s).", ["priority"], registry=reg)
        self.llm_pass_sequences = Histogram(
            "heddle_llm_pass_sequences", "Sequences stepped in one forward pass (continuous batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=reg)
        self.llm_queue_seconds = Histogram(
            "heddle_llm_queue_seconds", "Time an LLM stage waited between ready and its prefill.",
            ["priority"], buckets=buckets, registry=reg)

    def _register_timeout_series(self) -> None:
        reg = self.registry
        self.version_requests = Counter(
            "heddle_version_requests", "Requests routed to each version of a versioned model "
            "(model = NAME@VERSION): a canary split's traffic.", ["pipeline", "model"], registry=reg)
        self.stage_timeouts = Counter(
            "heddle_stage_timeouts", "Stage runs stopped at their timeout (timeout_ms or the time left "
            "to the request's deadline); a python thread, which cannot be stopped, is given up on.",
            ["model", "device"], registry=reg)
        self.stage_threads_overrunning = Gauge(
            "heddle_stage_threads_overrunning", "Python stage threads still running past their timeout; "
            "each keeps its device slot until it returns.", ["device"], registry=reg)

    def _of(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """metric.labels(*labels), kept: prometheus_client looks a child up under a lock and
        checks every label value on each call, which showed per request in profiles. No series
        on this path is ever removed, so a kept child stays the registry's."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def refresh_on_scrape(self, loop: asyncio.AbstractEventLoop, refresh: Callable[[], None]) -> None:
        """Call refresh (which sets the gauges of the runtime's state: queue lengths, requests in
        flight, frozen stages) on the loop's thread before every collection, instead of setting
        them on every scheduling step."""
        self._refresh.target = (loop, refresh)

    def observe_batch(self, model: str, device: str, rows: int) -> None:
        self.batch_size.labels(model, device).observe(rows)

    def observe_stage_timeout(self, model: str, device: str) -> None:
        self.stage_timeouts.labels(model, device).inc()

    def stage_overrun_started(self, device: str) -> None:
        self.stage_threads_overrunning.labels(device).inc()

    def stage_overrun_ended(self, device: str) -> None:
        self.stage_threads_overrunning.labels(device).dec()

    def llm_sequence_started(self, priority: int, queue_s: float) -> None:
        self.llm_live_sequences.labels(str(priority)).inc()
        self.llm_queue_seconds.labels(str(priority)).observe(max(queue_s, 0.0))

    def llm_pass(self, sequences: int) -> None:
        self.llm_pass_sequences.observe(sequences)

    def llm_sequence_ended(self, priority: int) -> None:
        self.llm_live_sequences.labels(str(priority)).dec()

    def llm_tokens(self, priority: int, n: int) -> None:
        self.llm_tokens_total.labels(str(priority)).inc(n)

    def llm_sequence_timings(self, priority: int, ttft_s: float, tpot_s: float | None) -> None:
        """A generation that completed: its time to first token and, past one token, per token."""
        self.llm_ttft_seconds.labels(str(priority)).observe(max(ttft_s, 0.0))
        if tpot_s is not None:
            self.llm_tpot_seconds.labels(str(priority)).observe(max(tpot_s, 0.0))

    def observe_stage(
        self, pipeline: str, stage: str, model: str, device: str, status: str,
        queue_s: float, compute_s: float,
    ) -> None:
        """Record one finished stage run. `model` is accepted for logs' sake but not a label:
        stage already identifies it within a pipeline, and every label multiplies series."""
        del model
        self._of(self.stage_runs, pipeline, stage, device, status).inc()
        self._of(self.stage_queue_seconds, pipeline, stage).observe(max(queue_s, 0.0))
        self._of(self.stage_compute_seconds, pipeline, stage, device).observe(max(compute_s, 0.0))

    def observe_request(self, pipeline: str, status: str, latency_s: float, priority: int | str) -> None:
        """Record one finished request; `status` is a gRPC code name such as OK or INVALID_ARGUMENT."""
        self._of(self.requests, pipeline, status).inc()
        self._of(self.request_latency_seconds, pipeline, str(priority)).observe(max(latency_s, 0.0))

    def observe_result(self, result: JobResult) -> None:
        """Record one request the runtime ended, labelled with the status its client sees."""
        status = status_code(result.outcome, result.error_kind).name
        self.observe_request(result.pipeline, status, result.total_s, result.priority)

    def observe_version(self, pipeline: str, model: str) -> None:
        self.version_requests.labels(pipeline, model).inc()

    def observe_refused(self, pipeline: str, status: str) -> None:
        """Count a request refused before it ran: no latency sample, it would skew the histogram."""
        self.requests.labels(pipeline, status).inc()

    def observe_deadline_missed(self, pipeline: str) -> None:
        self.deadline_missed.labels(pipeline).inc()

    def device_started(self, device: str) -> None:
        self._busy.started(device)  # heddle_device_running is read from the window at scrape time

    def device_finished(self, device: str, busy_s: float) -> None:
        self._of(self.device_busy_seconds, device).inc(max(busy_s, 0.0))
        self._busy.finished(device, busy_s)

    def set_queue_length(self, device: str, n: int) -> None:
        self._of(self.device_queue_length, device).set(n)

    def set_in_flight(self, n: int) -> None:
        self.requests_in_flight.set(n)

    def set_device_load_state(self, device: str, state: str) -> None:
        self.device_load_state.labels(device).state(state)

    def observe_load_failure(self, device: str, model: str) -> None:
        self.device_load_failures.labels(device, model).inc()

    def busy_fractions(self, window_s: float | None = None) -> dict[str, float]:
        """The busy fraction per device as a scrape would report it now (or over the last
        window_s, as the power loop reads it each control period)."""
        return self._busy.fractions(window_s)

    def render(self) -> bytes:
        return generate_latest(WithoutCreated(self.registry))  # a Collector by duck type

    def start_http(self, host: str, port: int) -> MetricsHTTPServer:
        """Serve /metrics on host:port (port 0 picks a free one); the result stops it when called."""
        return MetricsHTTPServer(self.registry, host, port)
