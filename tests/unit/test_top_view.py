"""heddle top's arithmetic (clients/top_view.py) over a real Metrics registry's exposition:
rates, busy fraction, p99 and DVR over the interval between two scrapes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest

from heddle.clients.top_view import build_frame, histogram_quantile, parse_metrics
from heddle.server.runtime.metrics import Metrics


@dataclass
class Device:
    id: str
    kind: str = "cpu"
    slots: int = 2
    running: int = 0
    queued: int = 0
    healthy: bool = True


def _scrape(m: Metrics) -> dict:
    return parse_metrics(generate_latest(m.registry).decode())


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    """100 observations, 50 under 10 ms and 50 in (10, 20] ms: p50 is 10 ms, p99 19.8 ms; none -> None."""
    buckets = [(0.01, 50.0), (0.02, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.0198)
    assert histogram_quantile(0.99, [(0.01, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(0.01, 0.0), (float("inf"), 5.0)]) == 0.01  # all past the last bound


def test_frame_counts_only_what_happened_between_the_scrapes() -> None:
    """Requests before the first scrape are not counted; rate, errors, DVR and busy cover the interval."""
    m = Metrics()
    for _ in range(5):  # before: must not count
        m.observe_request("detect", "OK", latency_s=1.0, priority=1)
    m.device_started("cpu0")
    m.device_finished("cpu0", busy_s=3.0)
    before = _scrape(m)
    for i in range(10):
        m.observe_request("detect", "OK" if i < 8 else "DEADLINE_EXCEEDED", latency_s=0.004, priority=i % 2)
    m.observe_deadline_missed("detect")
    m.observe_deadline_missed("detect")
    m.device_started("cpu0")
    m.device_finished("cpu0", busy_s=1.0)
    frame = build_frame(before, _scrape(m), 2.0, [Device("cpu0", slots=2, queued=3), Device("cpu1")])
    (row,) = frame.pipelines
    assert (row.pipeline, row.rate_per_s, row.errors_per_s, row.dvr) == ("detect", 5.0, 1.0, 0.2)
    assert row.p99_ms is not None and 2.5 <= row.p99_ms <= 5.0  # the (2.5, 5] ms bucket, not the 1 s ones
    cpu0, cpu1 = frame.devices
    assert (cpu0.busy, cpu0.queued, cpu0.slots) == (0.25, 3, 2)  # 1 s busy over 2 s on 2 slots
    assert cpu1.busy is None and cpu1.power_w is None and cpu1.power_source == "estimated"


def test_a_counter_that_went_down_counts_from_zero() -> None:
    """A server restarted between scrapes: its counters start again, and the rate is what it has."""
    old, new = Metrics(), Metrics()
    for _ in range(50):
        old.observe_request("p", "OK", latency_s=0.01, priority=1)
    for _ in range(4):
        new.observe_request("p", "OK", latency_s=0.01, priority=1)
    (row,) = build_frame(_scrape(old), _scrape(new), 1.0, []).pipelines
    assert row.rate_per_s == 4.0 and row.dvr == 0.0
