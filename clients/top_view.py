"""What `heddle top` shows, computed from two scrapes of the metrics endpoint and the gateway's
device list: per-device busy fraction, queue, DVFS level and power; per-pipeline rate, p99 and
deadline violation rate over the interval between the scrapes. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["DeviceInfo", "DeviceRow", "Frame", "Labels", "PipelineRow", "Scrape", "build_frame", "histogram_quantile",
           "parse_metrics"]

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs: hashable, order-free
Scrape = Mapping[tuple[str, Labels], float]  # (sample name, labels) -> value


def parse_metrics(text: str) -> dict[tuple[str, Labels], float]:
    """Prometheus text exposition -> {(sample name, sorted labels): value}. Sample names keep their
    suffixes (`_total`, `_bucket`), as the exposition writes them."""
    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def _sum(scrape: Scrape, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in scrape.items()
               if n == name and all(dict(labels).get(k) == want for k, want in match.items()))


def _label_values(scrape: Scrape, name: str, label: str) -> list[str]:
    return sorted({dict(labels)[label] for n, labels in scrape if n == name and label in dict(labels)})


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram given as (upper bound, cumulative count) pairs, interpolated
    linearly inside the bucket it falls in, as Prometheus' histogram_quantile does; None with no
    observations. A quantile in the +Inf bucket is reported as the highest finite bound."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            span = count - lower_count
            return bound if span <= 0 else lower_bound + (bound - lower_bound) * (rank - lower_count) / span
        lower_bound, lower_count = bound, count
    return lower_bound


class DeviceInfo(Protocol):
    """What `heddle top` reads of a ListDevices entry (heddle.v1 DeviceInfo)."""

    id: str
    kind: str
    slots: int
    running: int
    queued: int
    healthy: bool


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device: str
    kind: str
    healthy: bool
    slots: int
    running: int
    queued: int
    busy: float | None  # fraction of the device's slots busy over the interval
    dvfs_level: float | None
    power_w: float | None
    power_source: str  # "measured" or "estimated": shown beside every figure


@dataclass(frozen=True, slots=True)
class PipelineRow:
    pipeline: str
    rate_per_s: float
    errors_per_s: float
    p99_ms: float | None
    dvr: float | None  # deadline violation rate over the interval; None with no request ended


@dataclass(frozen=True, slots=True)
class Frame:
    interval_s: float
    in_flight: float
    devices: list[DeviceRow]
    pipelines: list[PipelineRow]


def _delta(before: Scrape, after: Scrape, name: str, **match: str) -> float:
    # A counter that went down means the server restarted between scrapes: count from zero.
    a, b = _sum(after, name, **match), _sum(before, name, **match)
    return a if a < b else a - b


def _p99_ms(before: Scrape, after: Scrape, pipeline: str) -> float | None:
    name = "heddle_request_latency_seconds_bucket"
    bounds = sorted({float(dict(labels)["le"]) for n, labels in after
                     if n == name and dict(labels).get("pipeline") == pipeline})
    p99 = histogram_quantile(0.99, [(b, _delta_le(before, after, name, pipeline, b)) for b in bounds])
    return None if p99 is None else p99 * 1000.0


def _delta_le(before: Scrape, after: Scrape, name: str, pipeline: str, bound: float) -> float:
    def total(scrape: Scrape) -> float:
        return sum(v for (n, labels), v in scrape.items() if n == name
                   and dict(labels).get("pipeline") == pipeline and float(dict(labels)["le"]) == bound)
    a, b = total(after), total(before)
    return a if a < b else a - b


def _power(after: Scrape, device: str) -> tuple[float | None, str]:
    for (n, labels), v in after.items():
        d = dict(labels)
        if n == "heddle_power_watts" and d.get("device") == device:
            return v, d.get("source", "estimated")
    return None, "estimated"


def build_frame(before: Scrape, after: Scrape, interval_s: float, devices: Iterable[DeviceInfo]) -> Frame:
    """One screen of `heddle top`: the metrics scraped `interval_s` apart, and the gateway's
    ListDevices entries read at the second scrape."""
    dt = max(interval_s, 1e-9)
    busy_key = "heddle_device_busy_seconds_total"
    rows = []
    for d in devices:
        slots = max(d.slots, 1)
        has_busy = any(n == busy_key and dict(labels).get("device") == d.id for n, labels in after)
        busy = min(_delta(before, after, busy_key, device=d.id) / dt / slots, 1.0) if has_busy else None
        levels = [v for (n, labels), v in after.items()
                  if n == "heddle_dvfs_level" and dict(labels).get("device") == d.id]
        power_w, source = _power(after, d.id)
        rows.append(DeviceRow(d.id, d.kind, d.healthy, slots, d.running, d.queued, busy,
                              levels[0] if levels else None, power_w, source))
    pipelines = []
    for name in _label_values(after, "heddle_requests_total", "pipeline"):
        ended = _delta(before, after, "heddle_requests_total", pipeline=name)
        ok = _delta(before, after, "heddle_requests_total", pipeline=name, status="OK")
        missed = _delta(before, after, "heddle_deadline_missed_total", pipeline=name)
        pipelines.append(PipelineRow(name, ended / dt, (ended - ok) / dt, _p99_ms(before, after, name),
                                     missed / ended if ended else None))
    return Frame(interval_s, _sum(after, "heddle_requests_in_flight"), rows, pipelines)
