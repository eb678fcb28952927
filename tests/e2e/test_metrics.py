"""Tests for heddle.server.runtime.metrics: series names and labels, buckets, the busy-fraction window,
/metrics over HTTP."""

from __future__ import annotations

import itertools
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from heddle.server.runtime.metrics import LATENCY_BUCKETS_S, Metrics


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, dt_s: float) -> None:
        self.now_s += dt_s


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_stage_observation_fills_counter_and_histograms() -> None:
    """One observed stage adds one run and one sample to the queue and compute histograms with their labels."""
    m = Metrics()
    m.observe_stage("detect", "backbone", "resnet", "cpu0", "OK", queue_s=0.002, compute_s=0.3)
    assert _value(m, "heddle_stage_runs_total", pipeline="detect", stage="backbone",
                  device="cpu0", status="OK") == 1.0
    assert _value(m, "heddle_stage_queue_seconds_count", pipeline="detect", stage="backbone") == 1.0
    assert _value(m, "heddle_stage_queue_seconds_sum", pipeline="detect", stage="backbone") == pytest.approx(0.002)
    assert _value(m, "heddle_stage_compute_seconds_bucket", pipeline="detect", stage="backbone",
                  device="cpu0", le="0.25") == 0.0
    assert _value(m, "heddle_stage_compute_seconds_bucket", pipeline="detect", stage="backbone",
                  device="cpu0", le="0.5") == 1.0


def test_request_observation_uses_status_and_priority_labels() -> None:
    """Requests count by gRPC code name, latency by priority, and missed deadlines by pipeline."""
    m = Metrics()
    m.observe_request("detect", "OK", latency_s=0.01, priority=1)
    m.observe_request("detect", "INVALID_ARGUMENT", latency_s=0.0004, priority=1)
    m.observe_request("detect", "OK", latency_s=0.02, priority=0)
    m.observe_deadline_missed("detect")
    assert _value(m, "heddle_requests_total", pipeline="detect", status="OK") == 2.0
    assert _value(m, "heddle_requests_total", pipeline="detect", status="INVALID_ARGUMENT") == 1.0
    assert _value(m, "heddle_request_latency_seconds_count", pipeline="detect", priority="1") == 2.0
    assert _value(m, "heddle_request_latency_seconds_bucket", pipeline="detect", priority="1",
                  le="0.0005") == 1.0
    assert _value(m, "heddle_deadline_missed_total", pipeline="detect") == 1.0


def test_buckets_span_half_a_millisecond_to_ten_seconds() -> None:
    """The latency buckets start at 0.5 ms, end at 10 s, and increase strictly."""
    assert LATENCY_BUCKETS_S[0] == 0.0005
    assert LATENCY_BUCKETS_S[-1] == 10.0
    assert all(a < b for a, b in itertools.pairwise(LATENCY_BUCKETS_S))


def test_device_gauges_track_running_busy_and_queue() -> None:
    """Started and finished stages move the running gauge and add busy seconds; the queue gauge is set."""
    m = Metrics(clock=FakeClock())
    m.device_started("gpu0")
    m.device_started("gpu0")
    assert _value(m, "heddle_device_running", device="gpu0") == 2.0
    m.device_finished("gpu0", busy_s=0.25)
    assert _value(m, "heddle_device_running", device="gpu0") == 1.0
    assert _value(m, "heddle_device_busy_seconds_total", device="gpu0") == 0.25
    m.set_queue_length("gpu0", 7)
    assert _value(m, "heddle_device_queue_length", device="gpu0") == 7.0


def test_busy_fraction_counts_a_stage_still_running() -> None:
    """A stage started 4 s ago and still running makes a 10 s window 40 % busy."""
    clock = FakeClock()
    m = Metrics(clock=clock, busy_window_s=10.0)
    m.device_started("cpu0")
    clock.advance(4.0)
    assert m.busy_fractions() == {"cpu0": pytest.approx(0.4)}
    assert _value(m, "heddle_device_busy_fraction", device="cpu0") == pytest.approx(0.4)


def test_busy_fraction_slides_past_old_work() -> None:
    """A finished 5 s run is clipped as the window slides and disappears once wholly outside it."""
    clock = FakeClock()
    m = Metrics(clock=clock, busy_window_s=10.0)
    m.device_started("cpu0")
    clock.advance(5.0)
    m.device_finished("cpu0", busy_s=5.0)
    assert m.busy_fractions()["cpu0"] == pytest.approx(0.5)
    clock.advance(7.0)  # window is now [2, 12] s after the start; the run covered [0, 5]
    assert m.busy_fractions()["cpu0"] == pytest.approx(0.3)
    clock.advance(10.0)
    assert m.busy_fractions()["cpu0"] == 0.0


def test_busy_fraction_is_the_union_of_overlapping_runs() -> None:
    """Two overlapping runs on one device count the overlap once, so the fraction never passes 1."""
    clock = FakeClock()
    m = Metrics(clock=clock, busy_window_s=10.0)
    m.device_started("cpu0")
    clock.advance(2.0)
    m.device_started("cpu0")
    clock.advance(8.0)
    m.device_finished("cpu0", busy_s=10.0)  # ran [0, 10]
    assert m.busy_fractions()["cpu0"] == pytest.approx(1.0)
    clock.advance(1.0)
    m.device_finished("cpu0", busy_s=9.0)  # ran [2, 11]; the window is [1, 11]
    assert m.busy_fractions()["cpu0"] == pytest.approx(1.0)
    clock.advance(5.0)  # window [6, 16] holds [6, 11] only
    assert m.busy_fractions()["cpu0"] == pytest.approx(0.5)


def test_busy_fraction_merges_a_run_overlapping_several_earlier_ones() -> None:
    """A long run ending after two short ones it overlaps counts their union once, over the whole
    window and over a short recent one (the power loop's)."""
    clock = FakeClock()
    m = Metrics(clock=clock, busy_window_s=10.0)
    for _ in range(3):
        m.device_started("cpu0")
    clock.advance(1.0)
    m.device_finished("cpu0", busy_s=1.0)  # [0, 1]
    clock.advance(2.0)
    m.device_finished("cpu0", busy_s=1.0)  # [2, 3]
    clock.advance(1.0)
    m.device_finished("cpu0", busy_s=3.5)  # [0.5, 4]: the union is [0, 4]
    clock.advance(1.0)  # now 5: the window is [-5, 5]
    assert m.busy_fractions()["cpu0"] == pytest.approx(0.4)
    assert m.busy_fractions(window_s=2.0)["cpu0"] == pytest.approx(0.5)  # [3, 5] holds [3, 4]
    assert m.busy_fractions(window_s=0.5)["cpu0"] == 0.0


def test_state_gauges_are_refreshed_on_the_loop_thread_at_scrape() -> None:
    """A scrape from another thread runs the runtime's refresh on its loop's thread first, so it
    sees the state as of the scrape; from the loop's own thread it runs at once."""
    import asyncio
    import threading

    m = Metrics()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    ran_on: list[threading.Thread] = []

    def refresh() -> None:
        ran_on.append(threading.current_thread())
        m.set_in_flight(len(ran_on))
        m.set_queue_length("cpu0", 7)

    try:
        m.refresh_on_scrape(loop, refresh)
        text = m.render().decode()
        assert ran_on == [thread]
        assert "heddle_requests_in_flight 1.0" in text and 'heddle_device_queue_length{device="cpu0"} 7.0' in text

        async def scrape_on_loop() -> bytes:
            return m.render()
        asyncio.run_coroutine_threadsafe(scrape_on_loop(), loop).result(timeout=10)
        assert ran_on == [thread, thread]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_busy_window_must_be_positive() -> None:
    """A zero-length busy window is refused at construction."""
    with pytest.raises(ValueError, match="busy window"):
        Metrics(busy_window_s=0.0)


def test_every_series_is_named_heddle() -> None:
    """Every metric family rendered by the registry carries the heddle_ prefix."""
    m = Metrics()
    m.observe_stage("p", "s", "model", "cpu0", "OK", 0.001, 0.001)
    m.device_started("cpu0")
    names = {family.name for family in text_string_to_metric_families(m.render().decode())}
    assert "heddle_device_busy_fraction" in names
    assert names and all(name.startswith("heddle_") for name in names)


def test_two_instances_do_not_share_series() -> None:
    """Two Metrics in one process register without clashing and count separately."""
    a, b = Metrics(), Metrics()
    a.observe_request("p", "OK", 0.01, 0)
    assert _value(a, "heddle_requests_total", pipeline="p", status="OK") == 1.0
    assert _value(b, "heddle_requests_total", pipeline="p", status="OK") is None


@pytest.mark.slow
def test_http_endpoint_serves_metrics_on_loopback_and_stops() -> None:
    """/metrics answers on the loopback address it was bound to, and refuses connections once stopped."""
    m = Metrics()
    m.observe_request("p", "OK", 0.01, 0)
    server = m.start_http("127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        assert server.host == "127.0.0.1"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        assert 'heddle_requests_total{pipeline="p",status="OK"} 1.0' in body
    finally:
        server()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=10)
