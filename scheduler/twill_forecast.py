"""twill's forecast of a device's queue: its READY runs in twill's order with prefix sums of their
work, and from it the wait a run would have there (scheduler/twill.py places, steals and keeps
queues by it).

The forecast is remade whenever the device's queue, any estimate or the clock moves (twill's key
holds the slack, sub_deadline - now - run time, so the order may change as `now` does). Making it
is the costliest part of a twill decision under deep queues, so the keys are computed here with
the estimates each model needs read once per forecast, not once per run: the same arithmetic as
TwillPolicy.key, so the same keys and the same order (tests/unit/test_twill_forecast.py checks it).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING

from heddle.scheduler.policies import BasePolicy, CoreView, KineticGroups, SortKey, tail
from heddle.scheduler.state import RunState, StageRun
from heddle.scheduler.twill_groups import AFTER_FEASIBLE, BEST_EFFORT, FEASIBLE, HOPELESS, GroupedQueue

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "AFTER_FEASIBLE", "BEST_EFFORT", "FEASIBLE", "HOPELESS", "Forecast", "TwillForecast", "exact_prefix", "twill_key",
]

# A device's queue as it would run: READY runs' keys in order, prefix sums of their estimates,
# and the runs themselves.
Forecast = tuple[list[SortKey], list[float], list[StageRun]]
# Queues shorter than this are sorted as they come: the sort of a few keys costs less than
# lining them up in the last forecast's order (bench/sched_cost.py at 10 and 100 queued runs).
_PRESORT_FROM = 128
# Queues shorter than this are read through a forecast (the same waits, bit for bit): ranking a few
# runs costs less than setting up every group's part at a new `now` (bench/sched_cost.py, the trace).
_GROUPED_FROM = 48


def twill_key(run: StageRun, now: float, best_s: float, run_s: float) -> SortKey:
    """twill's order (scheduler/twill.py's module doc): best_s is the model's best estimate on any
    device (is the run hopeless?), run_s its tail where it is queued (its slack)."""
    request = run.request
    priority = request.priority if request.priority > 1 else 1
    if request.deadline_s is None:
        return (AFTER_FEASIBLE, -priority, BEST_EFFORT, request.arrival_s, request.seq, run.index, run.element)
    if now + best_s > run.latest_finish_s:
        return (AFTER_FEASIBLE, -priority, HOPELESS, request.arrival_s, request.seq, run.index, run.element)
    slack = run.sub_deadline_s - now - run_s
    # Positive slack shrinks with priority, negative slack grows: either way the higher
    # priority run of two equally pressed ones goes first.
    return (FEASIBLE, slack / priority if slack >= 0 else slack * priority,
            request.arrival_s, request.seq, run.index, run.element)


class TwillForecast(BasePolicy):
    """The forecast half of TwillPolicy, its base: per device, valid while the device's queue
    version and the clock stand still (a dispatch on another device leaves it valid)."""

    def __init__(self, max_wait_s: float | None = None) -> None:
        super().__init__(max_wait_s)
        self._forecasts: dict[str, tuple[tuple[int, int, float], Forecast]] = {}
        self._grouped: dict[str, tuple[tuple[int, int, float], GroupedQueue | None]] = {}
        self._busy: dict[str, tuple[tuple[int, int, float], float]] = {}
        self._estimates: tuple[int, dict[tuple[str, str], tuple[float, float, float]]] = (-1, {})

    def kinetic_groups(self) -> KineticGroups | None:
        """The groups the core keeps for twill's own key (scheduler/twill_groups.py); none for a
        subclass's key, which is ranked run by run."""
        return _GROUPS if type(self).key is TwillForecast.key else None

    def _wait_ahead_s(self, view: CoreView, run: StageRun, device: str, now: float) -> float:
        """Predicted wait before `run` could start on `device`: running work plus the queued
        work that ranks ahead of it, spread over the device's slots."""
        if view.free_slots(device) > len(view.queued(device)):  # fewer READY runs than free slots
            return 0.0  # whatever its place (as _wait says), without a forecast
        grouped = self.grouped(view, device, now)
        if grouped is not None:
            return self._wait(view, device, *grouped.before(self.key(run, now, view)), now)
        forecast = self.forecast(view, device, now)
        # Unique keys: its own is not ahead (and a queued run's place is its index in the forecast).
        ahead = bisect.bisect_left(forecast[0], self.key(run, now, view))
        return self._wait(view, device, ahead, forecast[1][ahead], now)

    def _wait(self, view: CoreView, device: str, ahead: int, work_s: float, now: float) -> float:
        """The wait of a run with `ahead` READY runs of `work_s` in all before it on the device."""
        if ahead < view.free_slots(device):
            return 0.0
        return (self._busy_total_s(view, device, now) + work_s) / view.devices[device].slots

    def queue_order(self, view: CoreView, device: str, now: float) -> Iterator[tuple[int, StageRun, float]]:
        """The device's READY runs in order, each with how many and how much work rank before it."""
        grouped = self.grouped(view, device, now)
        if grouped is not None:
            return grouped.order()
        keys, prefix, runs = self.forecast(view, device, now)
        return ((i, run, prefix[i]) for i, run in enumerate(runs))

    def queued_heads(self, device: str, view: CoreView, now: float) -> list[StageRun] | None:
        """For the core's pick: the READY run of a deep queue that twill's key ranks first (none if
        none is READY), read from the groups; None for a queue the core ranks itself, as cheaply."""
        grouped = self.grouped(view, device, now)
        if grouped is None:
            return None
        first = grouped.first()
        return [] if first is None else [first]

    def _estimates_at(self, version: int) -> dict[tuple[str, str], tuple[float, float, float]]:
        """Estimates the grouped readings share while none moves (CoreView.queue_version's first)."""
        if self._estimates[0] != version:
            self._estimates = (version, {})
        return self._estimates[1]

    def grouped(self, view: CoreView, device: str, now: float) -> GroupedQueue | None:
        """The device's queue read through the core's groups, kept like a forecast; None where it
        cannot stand for one or would cost more: a short queue, a subclass's key, or a model that
        batches (its runs' work is a share of passes that depends on every run of it queued
        there); the full forecast serves then, with the same waits."""
        if len(view.queued(device)) < _GROUPED_FROM:
            return None
        stamp = (*view.queue_version(device), now)
        cached = self._grouped.get(device)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        groups = view.queue_groups(device)
        usable = (type(self).key is TwillForecast.key and bool(groups)
                  and not any(view.batches(key[0]) for key in groups))
        grouped = GroupedQueue(view, device, now, self._estimates_at(stamp[0])) if usable else None
        self._grouped[device] = (stamp, grouped)
        return grouped

    def _busy_total_s(self, view: CoreView, device: str, now: float) -> float:
        """The running work left on the device, kept like its forecast (and only asked for when
        a run would wait there)."""
        stamp = (*view.queue_version(device), now)
        cached = self._busy.get(device)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        busy_s = sum(view.left_s(r, now) for r in view.running(device))
        self._busy[device] = (stamp, busy_s)
        return busy_s

    def forecast(self, view: CoreView, device: str, now: float) -> Forecast:
        """The device's READY runs as they would run, with their keys and the prefix sums of their work."""
        stamp = (*view.queue_version(device), now)
        cached = self._forecasts.get(device)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        ready = [q for q in view.queued(device) if q.state is RunState.READY]
        if (cached is not None and cached[0][0] == stamp[0] and cached[0][2] == now
                and type(self).key is TwillForecast.key):
            keys, runs = self._patched(view, device, now, cached[1], ready)
        else:
            keys, runs = self._sorted(view, device, now, cached, ready)
        # Runs of a model that batches share passes: each costs its rows' share (CoreReads.queued_work_s,
        # the same share whatever the runs' order). Summed exactly, as the grouped reading does.
        forecast: Forecast = (keys, exact_prefix(view.queued_work_s(device, runs)), runs)
        self._forecasts[device] = (stamp, forecast)
        return forecast

    def _sorted(self, view: CoreView, device: str, now: float, cached: tuple[object, Forecast] | None,
                ready: list[StageRun]) -> tuple[list[SortKey], list[StageRun]]:
        """The runs ranked anew. A deep queue is given to the sort in the last forecast's order, new
        runs after: between two forecasts of a device few runs come or go and the clock moves
        little, so that order mostly holds and the sort (timsort merges what is already in order)
        costs near n, not n log n comparisons of key tuples. Keys are unique (their tails are), so
        the order found does not depend on the order given."""
        if cached is not None and len(ready) >= _PRESORT_FROM:
            here = set(map(id, ready))
            kept = [q for q in cached[1][2] if id(q) in here]
            if len(kept) < len(ready):
                known = set(map(id, kept))
                kept += [q for q in ready if id(q) not in known]
            ready = kept
        pairs = sorted(zip(self._keys(view, device, ready, now), ready, strict=True))
        return [k for k, _ in pairs], [q for _, q in pairs]

    def _patched(self, view: CoreView, device: str, now: float, last: Forecast,
                 ready: list[StageRun]) -> tuple[list[SortKey], list[StageRun]]:
        """The last forecast with the runs that left dropped and those that came ranked in: the clock
        and the estimates stand still, so the keys of the runs that stayed have not moved (a dispatch
        or an arrival at one moment changes one or two runs of a queue of hundreds)."""
        here = set(map(id, ready))
        keys = [k for k, q in zip(last[0], last[2], strict=True) if id(q) in here]
        runs = [q for q in last[2] if id(q) in here]
        if len(runs) < len(ready):
            known = set(map(id, runs))
            came = [q for q in ready if id(q) not in known]
            for key, run in zip(self._keys(view, device, came, now), came, strict=True):
                at = bisect.bisect_left(keys, key)
                keys.insert(at, key)
                runs.insert(at, run)
        return keys, runs

    def _keys(self, view: CoreView, device: str, ready: Sequence[StageRun], now: float) -> list[SortKey]:
        """The key of each run queued on `device`, as self.key gives it: twill's own reads each
        model's estimates once (the queued runs' device is `device`); a subclass's key is asked."""
        if type(self).key is not TwillForecast.key:
            return [self.key(q, now, view) for q in ready]
        estimates: dict[str, tuple[float, float]] = {}
        keys = []
        for q in ready:
            known = estimates.get(q.model)
            if known is None:
                known = estimates[q.model] = (view.best_estimate_s(q.model), view.tail_s(q.model, device))
            keys.append(twill_key(q, now, *known))
        return keys

    def key(self, run: StageRun, now: float, view: CoreView) -> SortKey:
        if run.request.deadline_s is None:  # the estimates are not read for best-effort work
            return twill_key(run, now, 0.0, 0.0)
        best_s = view.best_estimate_s(run.model)
        run_s = view.tail_s(run.model, run.device) if run.device is not None else best_s
        return twill_key(run, now, best_s, run_s)


def exact_prefix(works: Sequence[float]) -> list[float]:
    """Prefix sums of `works`, each exactly summed and rounded once (as ExactSum, inlined: a
    forecast's works are a few distinct values, split into integers once each)."""
    prefix, num, shift = [0.0], 0, 0
    ratios: dict[float, tuple[int, int]] = {}
    for work in works:
        ratio = ratios.get(work)
        if ratio is None:
            n, d = work.as_integer_ratio()
            ratio = ratios[work] = (n, d.bit_length() - 1)
        if ratio[1] > shift:
            num <<= ratio[1] - shift
            shift = ratio[1]
        num += ratio[0] << (shift - ratio[1])
        prefix.append(num / (1 << shift))
    return prefix


def _group_of(run: StageRun) -> Hashable:
    """twill's group: model, priority as its key counts it, and whether it has a deadline."""
    priority = run.request.priority
    return (run.model, priority if priority > 1 else 1, run.request.deadline_s is None)


def _order(run: StageRun) -> SortKey:
    return (run.sub_deadline_s, *tail(run))


def _finish(run: StageRun) -> SortKey:
    return (run.latest_finish_s, *tail(run))


_GROUPS = KineticGroups(_group_of, _order, _finish)
