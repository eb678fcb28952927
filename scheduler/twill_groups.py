"""twill's view of one device's queue read through groups the core keeps, not a full forecast
(issue 13): the wait ahead of a key and the queue's order at `now`, at a cost that grows with the
number of groups and the log of the queue, where ranking every queued run grew with the queue.

twill's key (scheduler/twill_forecast.py) moves with `now`, but within one group of a device's
queue, runs of one model, one priority and one kind (with a deadline or best effort), it does not
reorder: the feasible key is the slack sub_deadline - now - run_s (run_s the model's tail there)
scaled by the priority, monotone in sub_deadline at every `now` (rounding included: x - now is
monotone in x), so the group's (sub_deadline, tail) order is its key order, except where two
sub-deadlines round to one key and the tails decide (handled as blocks of equal keys). A run
becomes hopeless (now + best_s past its latest finish) in latest-finish order: a prefix of the
group's second order (`by_finish`). FROZEN runs, which wait outside the forecast, are kept per group.

Sums of work are exact (integers scaled by a power of two, rounded once): a group's n runs of work
w add n * w, and the sum of a set of floats does not depend on the order it is taken in, so the
waits here equal a forecast sorted from scratch bit for bit (tests/unit/test_twill_groups.py).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterator
from typing import Any

from heddle.scheduler.policies import CoreView, SortKey
from heddle.scheduler.state import StageRun

__all__ = ["AFTER_FEASIBLE", "BEST_EFFORT", "FEASIBLE", "HOPELESS", "ExactSum", "GroupedQueue"]

_NONE: list[StageRun] = []  # shared, never changed
_NO_RUNS: dict[int, StageRun] = {}
FEASIBLE, AFTER_FEASIBLE = 0, 1
HOPELESS, BEST_EFFORT = 0, 1  # order within AFTER_FEASIBLE at equal priority


class ExactSum:
    """A sum of floats kept exact (an integer over a power of two) and rounded once when read."""

    __slots__ = ("num", "shift")

    def __init__(self) -> None:
        self.num, self.shift = 0, 0

    def add(self, value: float, times: int = 1) -> None:
        num, den = value.as_integer_ratio()
        shift = den.bit_length() - 1
        if shift > self.shift:
            self.num <<= shift - self.shift
            self.shift = shift
        self.num += times * num << (self.shift - shift)

    def value(self) -> float:
        return self.num / (1 << self.shift)  # int / int: correctly rounded


class _Part:
    """One group at `now`: its estimates and the runs its key does not order by sub-deadline."""

    __slots__ = ("best_s", "deadline", "excluded", "group", "hopeless", "priority", "run_s", "work")

    def __init__(self, group: Any, key: tuple[str, int, bool], view: CoreView, device: str, now: float,
                 estimates: dict[tuple[str, str], tuple[float, float, float]]) -> None:
        model, self.priority, best_effort = key
        self.group, self.deadline = group, not best_effort
        known = estimates.get((model, device))
        if known is None:
            known = estimates[(model, device)] = (view.best_estimate_s(model), view.tail_s(model, device),
                                                  view.estimate_s(model, device))
        self.best_s, self.run_s, self.work = known
        self.hopeless: list[StageRun] = _NONE
        if self.deadline:  # latest finish before now + best_s: hopeless (twill_key's test)
            finish = group.by_finish
            self.hopeless = finish.runs[:bisect.bisect_left(finish.keys, (now + self.best_s,))]
        # Not in the feasible order: hopeless or FROZEN (mostly none: one shared empty dict).
        self.excluded: dict[int, StageRun] = _NO_RUNS
        if self.hopeless or group.frozen:
            self.excluded = {id(r): r for r in self.hopeless}
            self.excluded.update((id(r), r) for r in group.frozen.values())

    def slack_key(self, sub_deadline_s: float, now: float) -> float:
        slack = sub_deadline_s - now - self.run_s  # twill_key's arithmetic, step by step
        return slack / self.priority if slack >= 0 else slack * self.priority

    def ready(self) -> int:
        return len(self.group.by_order.runs) - len(self.excluded) + sum(
            1 for r in self.hopeless if r.key not in self.group.frozen)


class GroupedQueue:
    """One device's READY runs at `now` as twill orders them, read from the core's groups."""

    def __init__(self, view: CoreView, device: str, now: float,
                 estimates: dict[tuple[str, str], tuple[float, float, float]] | None = None) -> None:
        """estimates: (best, tail, mean) by (model, device), shared by the caller while they hold."""
        self.now = now
        estimates = {} if estimates is None else estimates
        self.parts = [_Part(g, k, view, device, now, estimates)
                      for k, g in view.queue_groups(device).items() if g.by_order.runs]

    def before(self, key: SortKey) -> tuple[int, float]:
        """How many READY runs rank before `key`, and their work (exactly summed)."""
        count, work = 0, ExactSum()
        for part in self.parts:
            n = self._before(part, key)
            if n:
                count += n
                work.add(part.work, n)
        return count, work.value()

    def _before(self, part: _Part, key: SortKey) -> int:
        keys = part.group.by_order.keys
        if not part.deadline:  # best effort: (AFTER_FEASIBLE, -priority, BEST_EFFORT, tail)
            head = (AFTER_FEASIBLE, -part.priority, BEST_EFFORT)
            if head != tuple(key[:3]):
                return part.ready() if head < tuple(key[:3]) else 0
            tail = tuple(key[3:])
            return bisect.bisect_left(keys, (math.inf, *tail)) - sum(
                1 for r in part.excluded.values() if _tail(r) < tail)
        if key[0] == FEASIBLE:
            lo, hi = self._block(part, key[1])
            tail = tuple(key[2:])
            count = lo + sum(1 for i in range(lo, hi) if keys[i][1:] < tail)
            for run in part.excluded.values():
                at = bisect.bisect_left(keys, (run.sub_deadline_s, *_tail(run)))
                count -= at < lo or (at < hi and keys[at][1:] < tail)
            return count
        count = len(keys) - len(part.excluded)  # every feasible run ranks before any other kind
        head = (AFTER_FEASIBLE, -part.priority, HOPELESS)
        return count + sum(1 for r in part.hopeless if r.key not in part.group.frozen and (*head, *_tail(r)) < key)

    def _block(self, part: _Part, value: float) -> tuple[int, int]:
        """Where the group's runs whose slack key is `value` lie in its sub-deadline order: the key
        is monotone along it, so two bisections (lo: first not below, hi: first above)."""
        keys, now = part.group.by_order.keys, self.now
        lo, hi = 0, len(keys)
        while lo < hi:
            mid = (lo + hi) // 2
            if part.slack_key(keys[mid][0], now) < value:
                lo = mid + 1
            else:
                hi = mid
        end = len(keys)
        hi = lo
        while hi < end:
            mid = (hi + end) // 2
            if part.slack_key(keys[mid][0], now) <= value:
                hi = mid + 1
            else:
                end = mid
        return lo, hi

    def order(self) -> Iterator[tuple[int, StageRun, float]]:
        """The READY runs in twill's order at `now`, each with how many rank before it and their
        work: a merge of the groups' own orders, lazily (a steal scan reads the first few)."""
        merged = heapq.merge(*(it for part in self.parts for it in self._runs(part)))
        work = ExactSum()
        for ahead, (_, run, part) in enumerate(merged):
            yield ahead, run, work.value()
            work.add(part.work)

    def first(self) -> StageRun | None:
        for _, run, _ in self.order():
            return run
        return None

    def _runs(self, part: _Part) -> list[Iterator[tuple[SortKey, StageRun, _Part]]]:
        if not part.deadline:
            head = (AFTER_FEASIBLE, -part.priority, BEST_EFFORT)
            return [(((*head, *_tail(r)), r, part) for r in part.group.by_order.runs if id(r) not in part.excluded)]
        head = (AFTER_FEASIBLE, -part.priority, HOPELESS)
        hopeless = sorted(((*head, *_tail(r)), r, part) for r in part.hopeless if r.key not in part.group.frozen)
        return [self._feasible(part), iter(hopeless)]

    def _feasible(self, part: _Part) -> Iterator[tuple[SortKey, StageRun, _Part]]:
        """The group's feasible READY runs in key order: sub-deadline order, each block of equal
        keys (sub-deadlines that round to one slack) by tail."""
        keys, runs, now = part.group.by_order.keys, part.group.by_order.runs, self.now
        i, n = 0, len(keys)
        while i < n:
            value = part.slack_key(keys[i][0], now)
            j = i + 1
            while j < n and part.slack_key(keys[j][0], now) == value:
                j += 1
            block = sorted((keys[k][1:], k) for k in range(i, j) if id(runs[k]) not in part.excluded)
            for tail, k in block:
                yield (FEASIBLE, value, *tail), runs[k], part
            i = j


def _tail(run: StageRun) -> SortKey:
    request = run.request
    return (request.arrival_s, request.seq, run.index, run.element)
