"""Latency and power profiles per (model, device, DVFS level): a graph prior refined online.

This is Twill's model interpreter moved to run time: a model's ONNX graph, summarised as a
`GraphSummary` (built outside scheduler/, see backends/graph_summary.py), gives a roofline
prior on each device (scheduler/priors.py, with the batch curve); measured runs then take over
through an EWMA (the typical run) and a high percentile over a bounded window (the run to plan
deadlines with).

Batched passes (dynamic batching) add a batch axis: a pass of b rows has its own EWMA per b, and
a size never measured is scaled from the nearest one measured by the model's batch curve on that
device (`heddle profile --batch` measures it), else by the assumed `batch_scale`.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from heddle.scheduler.priors import (  # re-exported: profiles is where callers have found them
    BATCH_FIXED_SHARE,
    DeviceSpeed,
    GraphSummary,
    batch_scale,
    compatible,
    curve_scale,
    device_speed,
    prior_latency_s,
)
from heddle.scheduler.specs import DeviceSpec

__all__ = [
    "BATCH_FIXED_SHARE", "ConstantProfiles", "DeviceSpeed", "Estimate", "GraphSummary", "ProfileEntry",
    "ProfileTable", "Profiles", "batch_scale", "compatible", "curve_scale", "device_speed", "prior_latency_s",
]

@dataclass(frozen=True, slots=True)
class Estimate:
    """mean_s: the typical run (EWMA); tail_s: the run to plan deadlines with (high percentile)."""

    mean_s: float
    tail_s: float
    samples: int = 0
    source: str = "default"  # measured | table | graph | default


class Profiles(Protocol):
    """What the core asks of a profile source. Pure: no clock, no I/O."""

    def estimate(self, model: str, device: DeviceSpec, level: int = 0, batch: int = 1) -> Estimate: ...

    def power_w(self, model: str, device: DeviceSpec, level: int = 0) -> float: ...

    def op_types(self, model: str) -> frozenset[str]: ...

    def observe(self, model: str, device: DeviceSpec, level: int, run_s: float, batch: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class ConstantProfiles:
    """Every run takes the same time and every device runs every model: with this, the
    mapping and ordering of fcfs and priority are exactly what they were before profiles."""

    run_s: float = 1.0

    def estimate(self, model: str, device: DeviceSpec, level: int = 0, batch: int = 1) -> Estimate:
        run_s = self.run_s * batch_scale(batch)
        return Estimate(run_s, run_s)

    def power_w(self, model: str, device: DeviceSpec, level: int = 0) -> float:
        return 0.0

    def op_types(self, model: str) -> frozenset[str]:
        return frozenset()

    def observe(self, model: str, device: DeviceSpec, level: int, run_s: float, batch: int = 1) -> None:
        return None


@dataclass(frozen=True, slots=True)
class ProfileEntry:
    """A known figure for one (model, device, level): from a benchmark table or `heddle profile`."""

    latency_s: float
    power_w: float = 0.0
    tail_s: float | None = None


@dataclass(slots=True)
class _Series:
    """Measured runs of one (model, device, level): EWMA plus a bounded window for the tail,
    kept sorted too (`ordered`): every observation invalidates the estimate, and the next one
    read takes its percentile, which a sort of the window at each read made the dearest part."""

    ewma_s: float
    window: deque[float]
    count: int = 0
    ordered: list[float] = field(default_factory=list)

    def add(self, run_s: float) -> None:
        if len(self.window) == self.window.maxlen:
            del self.ordered[bisect.bisect_left(self.ordered, self.window[0])]
        self.window.append(run_s)
        bisect.insort(self.ordered, run_s)


@dataclass(slots=True)
class ProfileTable:
    """Estimates from, best first: measurements, a table entry, the graph prior, a default.

    A level with no data of its own borrows level 0's and scales it by the clock ratio. A batch
    size with no measured pass of its own at a level scales the nearest measured size's figure
    (else the one-row figure) along the (model, device)'s batch curve from `heddle profile
    --batch`, else along the assumed `batch_scale`.
    """

    table: Mapping[tuple[str, str, int], ProfileEntry] = field(default_factory=dict)
    # (model, device) -> {rows: time(rows) / time(1)}, measured passes of batched rows.
    batch_curves: Mapping[tuple[str, str], Mapping[int, float]] = field(default_factory=dict)
    summaries: Mapping[str, GraphSummary] = field(default_factory=dict)
    ops: Mapping[str, frozenset[str]] = field(default_factory=dict)  # op types without a summary
    default_s: float = 0.01
    alpha: float = 0.2  # EWMA weight of the newest run
    window: int = 64
    percentile: float = 95.0
    _series: dict[tuple[str, str, int], _Series] = field(default_factory=dict)  # one-row passes
    _batched: dict[tuple[str, str, int, int], _Series] = field(default_factory=dict)  # passes of b > 1 rows
    _sizes: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)  # batch sizes in _batched
    # (model, device) -> (level, batch) -> estimate: an observation drops one (model, device)'s
    # entries at once, where a scan of every cached key at each observation cost more than a decision.
    _cache: dict[tuple[str, str], dict[tuple[int, int], Estimate]] = field(default_factory=dict)

    def estimate(self, model: str, device: DeviceSpec, level: int = 0, batch: int = 1) -> Estimate:
        entries = self._cache.get((model, device.id))
        if entries is None:
            entries = self._cache[(model, device.id)] = {}
        cached = entries.get((level, batch))
        if cached is None:
            cached = entries[(level, batch)] = self._estimate(model, device, level, max(batch, 1))
        return cached

    def _estimate(self, model: str, device: DeviceSpec, level: int, batch: int) -> Estimate:
        own = self._batch_estimate(model, device, level, batch)
        if own is not None or level == 0:
            return own or _scaled(Estimate(self.default_s, self.default_s), batch_scale(batch))
        base = self.estimate(model, device, 0, batch)
        return _scaled(base, device_speed(device).clock(0) / device_speed(device).clock(level))

    def _batch_estimate(self, model: str, device: DeviceSpec, level: int, batch: int) -> Estimate | None:
        """This level's figure for `batch` rows: measured at that size, else the nearest size
        measured at this level (the smaller at a tie) scaled, else the one-row figure scaled."""
        one_measured = (model, device.id, level) in self._series
        if batch == 1 and one_measured:  # the common case, without looking at other sizes
            return self._measured(model, device.id, level, 1)
        sizes = self._sizes.get((model, device.id, level), []) + ([1] if one_measured else [])
        if batch in sizes:
            return self._measured(model, device.id, level, batch)
        curve = self.batch_curves.get((model, device.id))
        if sizes:
            near = min(sizes, key=lambda b: (abs(b - batch), b))
            return _scaled(self._measured(model, device.id, level, near),
                           curve_scale(curve, batch) / curve_scale(curve, near))
        one = self._own_estimate(model, device, level)
        return None if one is None else _scaled(one, curve_scale(curve, batch))

    def _measured(self, model: str, device: str, level: int, batch: int) -> Estimate:
        series = self._series[(model, device, level)] if batch == 1 else self._batched[(model, device, level, batch)]
        return Estimate(series.ewma_s, max(series.ewma_s, _percentile(series.ordered, self.percentile, True)),
                        series.count, "measured")

    def _own_estimate(self, model: str, device: DeviceSpec, level: int) -> Estimate | None:
        if (model, device.id, level) in self._series:
            return self._measured(model, device.id, level, 1)
        entry = self.table.get((model, device.id, level))
        if entry is not None:
            return Estimate(entry.latency_s, entry.tail_s or entry.latency_s, 0, "table")
        summary = self.summaries.get(model)
        if summary is not None:
            prior = prior_latency_s(summary, device_speed(device), level)
            return Estimate(prior, prior, 0, "graph")
        return None

    def power_w(self, model: str, device: DeviceSpec, level: int = 0) -> float:
        entry = self.table.get((model, device.id, level)) or self.table.get((model, device.id, 0))
        return entry.power_w if entry is not None else 0.0

    def set_summary(self, model: str, summary: GraphSummary) -> None:
        """A model's graph prior, for a model added or changed by a config reload; its measured
        runs, if any, are kept (they go on outweighing the prior)."""
        summaries = dict(self.summaries)
        summaries[model] = summary
        self.summaries = summaries
        for cached in [k for k in self._cache if k[0] == model]:
            del self._cache[cached]  # every device's estimates of it

    def op_types(self, model: str) -> frozenset[str]:
        summary = self.summaries.get(model)
        return summary.op_types if summary is not None else frozenset(self.ops.get(model, ()))

    def observe(self, model: str, device: DeviceSpec, level: int, run_s: float, batch: int = 1) -> None:
        """Fold one measured pass of `batch` rows in; estimates at other levels and batch sizes
        of the device follow."""
        series = self._series.get((model, device.id, level)) if batch <= 1 else self._batched.get(
            (model, device.id, level, batch))
        if series is None:
            series = _Series(run_s, deque(maxlen=self.window))
            if batch <= 1:
                self._series[(model, device.id, level)] = series
            else:
                self._batched[(model, device.id, level, batch)] = series
                self._sizes.setdefault((model, device.id, level), []).append(batch)
        else:
            series.ewma_s += self.alpha * (run_s - series.ewma_s)
        series.add(run_s)
        series.count += 1
        self._cache.pop((model, device.id), None)

    def rows(self) -> list[tuple[str, str, int, Estimate]]:
        """Every measured (model, device, level) with its estimate, sorted: for reports."""
        return sorted((m, d, lv, Estimate(s.ewma_s, max(s.ewma_s, _percentile(s.window, self.percentile)),
                                          s.count, "measured"))
                      for (m, d, lv), s in self._series.items())


def _scaled(estimate: Estimate, factor: float) -> Estimate:
    return Estimate(estimate.mean_s * factor, estimate.tail_s * factor, estimate.samples, estimate.source)


def _percentile(values: Iterable[float], q: float, is_sorted: bool = False) -> float:
    """Nearest-rank percentile of a small window (no numpy needed for 64 values)."""
    ordered = values if is_sorted and isinstance(values, list) else sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]
