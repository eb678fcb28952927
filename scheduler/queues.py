"""An index over the core's device queues, so that a pick reads a few group heads instead of
ranking every queued run: per (device, model), the queued runs in the policy's fixed order and
in the order they became ready (the aging bound's).

Only for policies whose order within such a group never changes while the runs wait
(policies.fixed_group_order: fcfs, priority, edf, least_slack, sjf), and only when no power
freeze filters the pool; the core ranks the whole pool otherwise (dream's and twill's keys move with
`now` in ways no fixed order follows). The pick is the very run the full ranking would take:
scheduler/core.py's `_pick` defines it, tests/unit/test_core_decisions.py checks it.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Callable, Iterable

from heddle.scheduler.policies import SortKey, fixed_group_order, tail
from heddle.scheduler.state import RunState, StageRun

if TYPE_CHECKING:
    from heddle.scheduler.policies import Policy
    from heddle.scheduler.view import CoreReads

__all__ = ["QueueIndex"]


class _Sorted:
    """Runs by a unique sort key (the run's tail makes every key unique)."""

    __slots__ = ("keys", "runs")

    def __init__(self) -> None:
        self.keys: list[SortKey] = []
        self.runs: list[StageRun] = []

    def add(self, key: SortKey, run: StageRun) -> None:
        i = bisect.bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.runs.insert(i, run)

    def remove(self, key: SortKey) -> None:
        i = bisect.bisect_left(self.keys, key)
        del self.keys[i], self.runs[i]

    def ready(self) -> Iterable[StageRun]:
        """Its READY runs in order (FROZEN ones wait in the queue, not in the pool)."""
        return (r for r in self.runs if r.state is RunState.READY)


class _Group:
    __slots__ = ("by_age", "by_order")

    def __init__(self) -> None:
        self.by_order = _Sorted()
        self.by_age = _Sorted()


class QueueIndex:
    """Kept by the core beside its queues: `add` when a run is queued, `remove` when it leaves,
    `clear` when a device's queue is emptied at once, `reorder` when the policy changes."""

    def __init__(self, devices: Iterable[str], policy: Policy) -> None:
        self._groups: dict[str, dict[str, _Group]] = {d: {} for d in devices}
        self._keys: dict[tuple[str, str], tuple[SortKey, SortKey]] = {}  # run key -> its two keys
        self.order: Callable[[StageRun], SortKey] | None = None
        self.ties = False
        self._use(policy)

    def _use(self, policy: Policy) -> None:
        fixed = fixed_group_order(policy)
        self.order, self.ties = fixed if fixed is not None else (None, False)

    def add(self, run: StageRun, device: str) -> None:
        if self.order is None:
            return
        assert run.ready_s is not None  # queued runs became ready first
        keys = self._keys[run.key] = (self.order(run), (run.ready_s, *tail(run)))
        group = self._groups[device].get(run.model)
        if group is None:
            group = self._groups[device][run.model] = _Group()
        group.by_order.add(keys[0], run)
        group.by_age.add(keys[1], run)

    def remove(self, run: StageRun, device: str) -> None:
        if self.order is None:
            return
        order_key, age_key = self._keys.pop(run.key)
        group = self._groups[device][run.model]
        group.by_order.remove(order_key)
        group.by_age.remove(age_key)
        if not group.by_order.keys:
            del self._groups[device][run.model]

    def clear(self, device: str, runs: Iterable[StageRun]) -> None:
        if self.order is None:
            return
        for run in runs:
            self._keys.pop(run.key, None)
        self._groups[device] = {}

    def reorder(self, policy: Policy, queues: dict[str, list[StageRun]]) -> None:
        """A new policy: its own order (or none) over every queued run."""
        self._use(policy)
        self._keys.clear()
        for device, queue in queues.items():
            self._groups[device] = {}
            for run in queue:
                self.add(run, device)

    def usable(self, freezing: bool) -> bool:
        """Can `pick` stand for the full ranking now? Not while power freezes filter the pool."""
        return self.order is not None and not freezing

    # ---- the pick -----------------------------------------------------------------------
    def pick(self, device: str, now: float, core: CoreReads, rank: Callable[[StageRun], SortKey]) -> StageRun | None:
        """The run core._pick's full ranking would take for a free slot of `device`: an aged run
        (own queue, or another's it can run) if any, the oldest; else the policy's best of its
        own queue, or when that is empty of READY runs, of every queue it can run from."""
        policy = core.policy
        if policy.max_wait_s is not None:
            aged = self._oldest_aged(device, now, core, policy.max_wait_s)
            if aged is not None:
                return aged
        best = self._best(self._groups[device].values(), rank)
        if best is not None:
            return best
        groups = [g for other, by_model in self._groups.items() if other != device
                  for model, g in by_model.items() if device in core.eligible_devices(model)]
        return self._best(groups, rank)

    def _oldest_aged(self, device: str, now: float, core: CoreReads, bound: float) -> StageRun | None:
        """Per group the oldest READY run is aged or none is (ready_s order): the oldest aged."""
        best: tuple[SortKey, StageRun] | None = None
        for other, by_model in self._groups.items():
            for model, group in by_model.items():
                if other != device and device not in core.eligible_devices(model):
                    continue
                head = next(iter(group.by_age.ready()), None)
                if head is None or not core.aged(head, now):
                    continue
                key = self._keys[head.key][1]
                if best is None or key < best[0]:
                    best = (key, head)
        return None if best is None else best[1]

    def _best(self, groups: Iterable[_Group], rank: Callable[[StageRun], SortKey]) -> StageRun | None:
        """The best-ranked READY run of the groups. A group's first READY run in the policy's
        order ranks best in it, except that a key computed from `now` (least_slack's) may round
        equal for runs the order tells apart: then the tied runs after it are ranked too."""
        best: tuple[SortKey, StageRun] | None = None
        for group in groups:
            runs = group.by_order.ready()
            head = next(iter(runs), None)
            if head is None:
                continue
            head_key = rank(head)
            candidate = (head_key, head)
            if self.ties:
                for run in runs:
                    key = rank(run)
                    if key[:2] != head_key[:2]:  # (1, first component): the order holds from here
                        break
                    candidate = min(candidate, (key, run), key=lambda c: c[0])
            if best is None or candidate[0] < best[0]:
                best = candidate
        return None if best is None else best[1]
