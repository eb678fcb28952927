"""Which share of a sliding window each device spent running at least one stage: the busy
fraction a scrape exports and the power loop's energy estimate reads each control period."""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily

__all__ = ["BusyFractionCollector", "BusyWindow"]


@dataclass(slots=True)
class _DeviceActivity:
    """Busy intervals of one device: finished ones inside the window and starts still running."""

    # Appended in end-time order (one clock), so pruning pops from the left: O(1) per stage
    # instead of rescanning the window on every finish (that scan showed in profiles). Disjoint:
    # an interval overlapping the newest ones is merged with them (finished()).
    finished: deque[tuple[float, float]] = field(default_factory=deque)
    running_starts: list[float] = field(default_factory=list)


class BusyWindow:
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
            # Merged with the intervals it overlaps (the newest end last, so they are at the right):
            # under load a device is busy back to back, and the window then holds a few intervals,
            # not every stage of the last window_s that fractions() would sort each control period.
            finished = activity.finished
            while finished and finished[-1][1] >= begin:
                begin = min(begin, finished.pop()[0])
            finished.append((begin, now))
            self._prune(activity, now)

    def running(self) -> dict[str, int]:
        """Stage runs going on now, per device that has run one."""
        with self._lock:
            return {device: len(activity.running_starts) for device, activity in self._devices.items()}

    def fractions(self, window_s: float | None = None) -> dict[str, float]:
        """Busy share of the last window_s (at most the whole window; default all of it)."""
        now = self._clock()
        window_s = self.window_s if window_s is None else min(window_s, self.window_s)
        lo = now - window_s
        with self._lock:
            result = {}
            for device, activity in self._devices.items():
                self._prune(activity, now)
                # Disjoint and in order, so the newest reach back to lo: the power loop's short
                # window reads a few intervals, not the whole window's (sorted every period).
                intervals = list(itertools.takewhile(lambda i: i[1] > lo, reversed(activity.finished)))
                intervals += [(start, now) for start in activity.running_starts]
                result[device] = _covered_s(intervals, lo, now) / window_s
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


class BusyFractionCollector:
    """Exports the busy window as gauges computed at scrape time: each device's busy fraction, and
    its stage runs going on now (read from the window's starts, not a gauge moved on every run:
    two locked gauge updates per stage run showed in profiles)."""

    def __init__(self, window: BusyWindow) -> None:
        self._window = window

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fractions, running = self._families()
        for device, fraction in sorted(self._window.fractions().items()):
            fractions.add_metric([device], fraction)
        for device, n in sorted(self._window.running().items()):
            running.add_metric([device], n)
        yield fractions
        yield running

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily(
            "heddle_device_busy_fraction",
            f"Fraction of the last {self._window.window_s:g} s the device ran at least one stage.",
            labels=["device"],
        ), GaugeMetricFamily("heddle_device_running", "Stages running on the device now.", labels=["device"]))
