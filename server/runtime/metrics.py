"""Prometheus metrics of one heddle server: stage, request and device series on a private registry."""

from __future__ import annotations

from collections import deque

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import start_http_server

from heddle.server.power.metrics import PowerMetrics
from heddle.server.runtime.recovery import LOAD_STATES
from heddle.server.runtime.status import status_code

if TYPE_CHECKING:
    from heddle.server.runtime.jobs import JobResult

__all__ = ["LATENCY_BUCKETS_S", "Metrics", "MetricsHTTPServer"]

# Edge inference spans a sub-millisecond preprocessing stage to a multi-second LLM request.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


@dataclass(slots=True)
class _DeviceActivity:
    """Busy intervals of one device: finished ones inside the window and starts still running."""

    # Appended in end-time order (one clock), so pruning pops from the left: O(1) per stage
    # instead of rescanning the window on every finish (that scan showed in profiles).
    finished: deque[tuple[float, float]] = field(default_factory=deque)
    running_starts: list[float] = field(default_factory=list)


class _BusyWindow:
    """Fraction of a sliding window during which each device ran at least one stage."""

    def __init__(self, window_s: float, clock: Callable[[], float]) -> None:
        if window_s <= 0:
            raise ValueError(f"busy window must be positive, got {window_s} s")
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: dict[str, _DeviceActivity] = {}

    def started(self, device: str) -> None:
        now = self._clock()
        with self._lock:
            self._devices.setdefault(device, _DeviceActivity()).running_starts.append(now)

    def finished(self, device: str, busy_s: float) -> None:
        now = self._clock()
        begin = now - max(busy_s, 0.0)
        with self._lock:
            activity = self._devices.setdefault(device, _DeviceActivity())
            if activity.running_starts:
                # Slots overlap, so match the start nearest to the one this busy time implies.
                nearest = min(activity.running_starts, key=lambda start: abs(start - begin))
                activity.running_starts.remove(nearest)
            activity.finished.append((begin, now))
            self._prune(activity, now)

    def fractions(self, window_s: float | None = None) -> dict[str, float]:
        """Busy share of the last window_s (at most the whole window; default all of it)."""
        now = self._clock()
        window_s = self.window_s if window_s is None else min(window_s, self.window_s)
        with self._lock:
            result = {}
            for device, activity in self._devices.items():
                self._prune(activity, now)
                intervals = list(activity.finished) + [(start, now) for start in activity.running_starts]
                result[device] = _covered_s(intervals, now - window_s, now) / window_s
            return result

    def _prune(self, activity: _DeviceActivity, now: float) -> None:
        horizon = now - self.window_s
        finished = activity.finished
        while finished and finished[0][1] <= horizon:
            finished.popleft()


def _covered_s(intervals: Iterable[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of `intervals` clipped to [lo, hi]."""
    covered_s = 0.0
    cursor = lo
    for begin, end in sorted(intervals):
        begin, end = max(begin, cursor), min(end, hi)
        if end > begin:
            covered_s += end - begin
            cursor = end
    return covered_s


class _BusyFractionCollector:
    """Exports the busy window as a gauge computed at scrape time."""

    def __init__(self, window: _BusyWindow) -> None:
        self._window = window

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for device, fraction in sorted(self._window.fractions().items()):
            family.add_metric([device], fraction)
        yield family

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "heddle_device_busy_fraction",
            f"Fraction of the last {self._window.window_s:g} s the device ran at least one stage.",
            labels=["device"],
        )


class MetricsHTTPServer:
    """A running /metrics endpoint; call it (or `close()`) to stop it."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        # The address the socket is bound to, read back from it rather than echoed from the argument.
        self.host: str = self._httpd.server_address[0]
        self.port: int = self._httpd.server_address[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    __call__ = close


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
        self._busy = _BusyWindow(busy_window_s, clock)
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
        self.device_running = Gauge(
            "heddle_device_running", "Stages running on the device now.", ["device"], registry=reg)
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
        reg.register(_BusyFractionCollector(self._busy))

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
        self.stage_timeouts = Counter(
            "heddle_stage_timeouts", "Stage runs stopped at their timeout (timeout_ms or the time left "
            "to the request's deadline); a python thread, which cannot be stopped, is given up on.",
            ["model", "device"], registry=reg)
        self.stage_threads_overrunning = Gauge(
            "heddle_stage_threads_overrunning", "Python stage threads still running past their timeout; "
            "each keeps its device slot until it returns.", ["device"], registry=reg)

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
        self.stage_runs.labels(pipeline, stage, device, status).inc()
        self.stage_queue_seconds.labels(pipeline, stage).observe(max(queue_s, 0.0))
        self.stage_compute_seconds.labels(pipeline, stage, device).observe(max(compute_s, 0.0))

    def observe_request(self, pipeline: str, status: str, latency_s: float, priority: int | str) -> None:
        """Record one finished request; `status` is a gRPC code name such as OK or INVALID_ARGUMENT."""
        self.requests.labels(pipeline, status).inc()
        self.request_latency_seconds.labels(pipeline, str(priority)).observe(max(latency_s, 0.0))

    def observe_result(self, result: JobResult) -> None:
        """Record one request the runtime ended, labelled with the status its client sees."""
        status = status_code(result.outcome, result.error_kind).name
        self.observe_request(result.pipeline, status, result.total_s, result.priority)

    def observe_refused(self, pipeline: str, status: str) -> None:
        """Count a request refused before it ran: no latency sample, it would skew the histogram."""
        self.requests.labels(pipeline, status).inc()

    def observe_deadline_missed(self, pipeline: str) -> None:
        self.deadline_missed.labels(pipeline).inc()

    def device_started(self, device: str) -> None:
        self.device_running.labels(device).inc()
        self._busy.started(device)

    def device_finished(self, device: str, busy_s: float) -> None:
        self.device_running.labels(device).dec()
        self.device_busy_seconds.labels(device).inc(max(busy_s, 0.0))
        self._busy.finished(device, busy_s)

    def set_queue_length(self, device: str, n: int) -> None:
        self.device_queue_length.labels(device).set(n)

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
        return generate_latest(self.registry)

    def start_http(self, host: str, port: int) -> MetricsHTTPServer:
        """Serve /metrics on host:port (port 0 picks a free one); the result stops it when called."""
        return MetricsHTTPServer(self.registry, host, port)
