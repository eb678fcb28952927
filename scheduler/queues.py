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
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any

from heddle.scheduler.policies import (
    KineticGroups,
    SortKey,
    fixed_group_order,
    key_is_group_order,
    kinetic_groups,
    tail,
)
from heddle.scheduler.queue_picks import best_by_order, best_by_value, tied_best
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

    def first_ready(self, start: int = 0) -> int | None:
        """Where its first READY run from `start` on is (FROZEN ones wait, not in the pool)."""
        runs = self.runs
        for i in range(start, len(runs)):
            if runs[i].state is RunState.READY:
                return i
        return None


class _Group:
    """One group's queued runs: in the order kept for it, in ready order (aging bound), by the
    second order a kinetic policy asks for (`by_finish`), and those of them FROZEN (kinetic only)."""

    __slots__ = ("by_age", "by_finish", "by_order", "frozen")

    def __init__(self) -> None:
        self.by_order = _Sorted()
        self.by_age = _Sorted()
        self.by_finish = _Sorted()
        self.frozen: dict[tuple[str, str], StageRun] = {}


class _Eligible:
    """Can `device` run a model? Asked once per model in a pick (eligible_devices builds a list)."""

    __slots__ = ("core", "device", "known")

    def __init__(self, device: str, core: CoreReads) -> None:
        self.device, self.core = device, core
        self.known: dict[str, bool] = {}

    def __call__(self, model: str) -> bool:
        known = self.known.get(model)
        if known is None:
            known = self.known[model] = self.device in self.core.eligible_devices(model)
        return known


class QueueIndex:
    """Kept by the core beside its queues: `add` when a run is queued, `remove` when it leaves,
    `clear` when a device's queue is emptied at once, `reorder` when the policy changes."""

    def __init__(self, devices: Iterable[str], policy: Policy) -> None:
        self._groups: dict[str, dict[Any, _Group]] = {d: {} for d in devices}
        self._keys: dict[tuple[str, str], tuple[SortKey, SortKey, SortKey]] = {}  # run key -> its keys
        # The groups a policy whose key moves with `now` reads itself (twill: policies.kinetic_groups):
        # kept, but no pick goes through them. None: groups by model in the fixed order, if any.
        self._kinetic: KineticGroups | None = None
        self._group_of: Callable[[StageRun], Hashable] = _model_of
        self.order: Callable[[StageRun], SortKey] | None = None
        self.ties = False
        self.aging = False  # the ready order is kept only for a policy with an aging bound
        # Every queued run in ready order, across groups: its first says at once whether any run
        # has aged, where asking each group's oldest cost more than the rest of a pick.
        self._all_by_age = _Sorted()
        self._key_is_order = False  # the policy's key is its group order (no `now` in it)
        self._use(policy)

    def _use(self, policy: Policy) -> None:
        fixed = fixed_group_order(policy)
        self.order, self.ties = fixed if fixed is not None else (None, False)
        self.aging = policy.max_wait_s is not None
        self._key_is_order = fixed is not None and key_is_group_order(policy)
        self._kinetic = kinetic_groups(policy) if fixed is None else None
        self._group_of = self._kinetic.group_of if self._kinetic is not None else _model_of

    @property
    def kinetic(self) -> bool:
        return self._kinetic is not None

    @property
    def _order(self) -> Callable[[StageRun], SortKey] | None:
        return self.order if self._kinetic is None else self._kinetic.order

    def add(self, run: StageRun, device: str) -> None:
        order = self._order
        if order is None:
            return
        assert run.ready_s is not None  # queued runs became ready first
        kinetic = self._kinetic
        keys = self._keys[run.key] = (order(run), (run.ready_s, *tail(run)),
                                      kinetic.finish(run) if kinetic is not None else ())
        group_key = self._group_of(run)
        group = self._groups[device].get(group_key)
        if group is None:
            group = self._groups[device][group_key] = _Group()
        group.by_order.add(keys[0], run)
        if kinetic is not None:
            group.by_finish.add(keys[2], run)
            if run.state is RunState.FROZEN:
                group.frozen[run.key] = run
        if self.aging:
            group.by_age.add(keys[1], run)
            self._all_by_age.add(keys[1], run)

    def remove(self, run: StageRun, device: str) -> None:
        if self._order is None:
            return
        order_key, age_key, finish_key = self._keys.pop(run.key)
        group = self._groups[device][self._group_of(run)]
        group.by_order.remove(order_key)  # an emptied group stays: the model's runs come back
        if self._kinetic is not None:
            group.by_finish.remove(finish_key)
            group.frozen.pop(run.key, None)
        if self.aging:
            group.by_age.remove(age_key)
            self._all_by_age.remove(age_key)

    def set_frozen(self, run: StageRun, device: str) -> None:
        """A queued run was frozen or released (its state says which): kinetic groups count it."""
        if self._kinetic is None:
            return
        group = self._groups[device][self._group_of(run)]
        if run.state is RunState.FROZEN:
            group.frozen[run.key] = run
        else:
            group.frozen.pop(run.key, None)

    def groups(self, device: str) -> dict[Any, _Group]:
        """The device's groups (read only): for a kinetic policy, by its group keys."""
        return self._groups[device]

    def clear(self, device: str, runs: Iterable[StageRun]) -> None:
        if self._order is None:
            return
        for run in runs:
            keys = self._keys.pop(run.key, None)
            if keys is not None and self.aging:
                self._all_by_age.remove(keys[1])
        self._groups[device] = {}

    def reorder(self, policy: Policy, queues: dict[str, list[StageRun]]) -> None:
        """A new policy: its own order (or none) over every queued run."""
        self._use(policy)
        self._keys.clear()
        self._all_by_age = _Sorted()
        for device, queue in queues.items():
            self._groups[device] = {}
            for run in queue:
                self.add(run, device)

    def usable(self, freezing: bool, aging: bool) -> bool:
        """Can `pick` stand for the full ranking now? Not while power freezes filter the pool,
        nor for an aging bound set on the policy after the index took it (no ready order kept)."""
        return self.order is not None and not freezing and (self.aging or not aging)

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
        # The first component of the policy's key alone, where it says (least_slack): a tie check
        # reads it before building a whole key (no run here has aged: the pick asked first).
        ask = getattr(policy, "key_value", None) if self.ties else None
        value = None if ask is None else lambda run: ask(run, now, core)
        best = self._best(self._groups[device].values(), rank, value)
        if best is not None:
            return best
        can_run = _Eligible(device, core)
        groups = [g for other, by_model in self._groups.items() if other != device
                  for model, g in by_model.items() if g.by_order.keys and can_run(model)]
        return self._best(groups, rank, value)

    def _oldest_aged(self, device: str, now: float, core: CoreReads, bound: float) -> StageRun | None:
        """Per group the oldest READY run is aged or none is (ready_s order): the oldest aged."""
        oldest = self._all_by_age.keys
        if not oldest or not now - oldest[0][0] >= bound:  # no queued run has aged (core.aged's test)
            return None
        best: tuple[SortKey, StageRun] | None = None
        can_run = _Eligible(device, core)
        for other, by_model in self._groups.items():
            for model, group in by_model.items():
                if not group.by_age.keys or (other != device and not can_run(model)):
                    continue
                at = group.by_age.first_ready()
                if at is None or not core.aged(group.by_age.runs[at], now):
                    continue
                head = group.by_age.runs[at]
                key = self._keys[head.key][1]
                if best is None or key < best[0]:
                    best = (key, head)
        return None if best is None else best[1]

    def _best(self, groups: Iterable[_Group], rank: Callable[[StageRun], SortKey],
              value: Callable[[StageRun], float] | None = None) -> StageRun | None:
        """The best-ranked READY run of the groups: a group's first READY run in the policy's
        order, except where keys computed from `now` (least_slack's) tie (queue_picks.py)."""
        if self._key_is_order:  # no run here has aged (the pick asked first): rank is (1, *order key)
            return best_by_order(groups)
        if value is not None:  # rank is (1, value, *tail): compared in parts, whole keys never built
            return best_by_value(groups, value)
        best: tuple[SortKey, StageRun] | None = None
        for group in groups:
            at = group.by_order.first_ready()
            if at is None:
                continue
            head = group.by_order.runs[at]
            candidate = (rank(head), head)
            if self.ties:
                candidate = tied_best(group.by_order, at, candidate, rank, value)
            if best is None or candidate[0] < best[0]:
                best = candidate
        return None if best is None else best[1]


def _model_of(run: StageRun) -> Hashable:
    return run.model
