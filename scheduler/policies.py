"""Scheduling policies: each gives a total, deterministic order over ready stage runs, and may
also choose where a run is queued, whether an idle device takes it, and what to hold back."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from heddle.scheduler.fanout_stats import FanoutStats
from heddle.scheduler.specs import DeviceSpec
from heddle.scheduler.state import Request, RunState, StageRun, device_of

__all__ = [
    "POLICIES", "BasePolicy", "CoreView", "DreamPolicy", "EdfPolicy", "FcfsPolicy", "KineticGroups",
    "LeastSlackPolicy", "Policy", "PriorityPolicy", "SjfPolicy", "SortKey", "fixed_group_order",
    "key_is_group_order", "kinetic_groups", "make_policy", "tail",
]

# A policy's order for one run: compared element by element, numbers first, the tail last.
SortKey = tuple[float, ...]


class CoreView(Protocol):
    """What a policy may read of the core (the Core itself); nothing here changes state."""

    @property
    def devices(self) -> Mapping[str, DeviceSpec]: ...
    @property
    def version(self) -> int: ...  # changes whenever anything below may have changed

    def queue_version(self, device: str) -> tuple[int, int]: ...  # finer: one device's queue
    def queue_groups(self, device: str) -> Mapping[Any, Any]: ...  # kinetic groups (queues.py)
    def batches(self, model: str) -> bool: ...  # dynamic batching on (queued_work_s shares passes)

    def estimate_s(self, model: str, device: str) -> float: ...
    def tail_s(self, model: str, device: str) -> float: ...
    def nominal_s(self, model: str, device: str) -> float: ...  # at the device's fastest level
    def left_s(self, run: StageRun, now: float) -> float: ...  # of a running run's pass (batch-aware)
    def queued_work_s(self, device: str, runs: Iterable[StageRun]) -> list[float]: ...  # batch-aware
    def power_w(self, model: str, device: str) -> float: ...
    def best_estimate_s(self, model: str) -> float: ...
    def free_slots(self, device: str) -> int: ...
    def eligible_devices(self, model: str) -> list[str]: ...
    def queued(self, device: str) -> Sequence[StageRun]: ...
    def running(self, device: str) -> Iterable[StageRun]: ...
    def load(self, device: str) -> float: ...
    def active_requests(self) -> Iterable[Request]: ...
    fanout: FanoutStats  # elements per map stage and run rates of conditional stages, learned online


class Policy(Protocol):
    """Orders ready runs (smallest key first), places them, and may hold some back.

    max_wait_s: the aging bound. A run ready for that long outranks every run that is not,
    whatever the policy says (the core enforces it), so nothing starves. None: no bound.
    """

    name: str
    max_wait_s: float | None
    steal_when_busy: bool

    def key(self, run: StageRun, now: float, view: CoreView) -> SortKey: ...
    def place(self, run: StageRun, devices: list[str], view: CoreView, now: float) -> str: ...
    def may_steal(self, run: StageRun, device: str, view: CoreView, now: float) -> bool: ...
    def steal_candidates(self, device: str, view: CoreView, now: float) -> list[StageRun]: ...
    def hold(self, view: CoreView, now: float) -> set[tuple[str, str]]: ...


def tail(run: StageRun) -> SortKey:
    # Arrival, then arrival counter, then topological index, then element (a map stage's runs):
    # a total order, so plans are a deterministic function of the state.
    return (run.request.arrival_s, run.request.seq, run.index, run.element)


class BasePolicy:
    """Today's mapping: queue on the least-loaded device; an idle device steals only when its
    own queue is empty; nothing is held back. Subclasses give the order."""

    name = "base"
    steal_when_busy = False
    key_is_order = True  # key and group_order are the same function (key_is_group_order)

    def __init__(self, max_wait_s: float | None = None) -> None:
        if max_wait_s is not None and not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0 or None, not {max_wait_s!r}")
        self.max_wait_s = max_wait_s

    def key(self, run: StageRun, now: float, view: CoreView) -> SortKey:
        return tail(run)

    def group_order(self, run: StageRun) -> SortKey:
        """The order of one model's runs on one device, which `key` keeps while they wait; a
        subclass that overrides `key` has none unless it gives its own (fixed_group_order)."""
        return tail(run)

    def place(self, run: StageRun, devices: list[str], view: CoreView, now: float) -> str:
        return min(devices, key=view.load)  # ties: config order

    def may_steal(self, run: StageRun, device: str, view: CoreView, now: float) -> bool:
        return True

    def steal_candidates(self, device: str, view: CoreView, now: float) -> list[StageRun]:
        """Ready runs queued on other devices that `device` may take (eligible, may_steal)."""
        runs_here: dict[str, bool] = {}
        found = []
        for other in view.devices:
            if other == device:
                continue
            for run in view.queued(other):
                if run.model not in runs_here:
                    runs_here[run.model] = device in view.eligible_devices(run.model)
                if run.state is RunState.READY and runs_here[run.model] and self.may_steal(run, device, view, now):
                    found.append(run)
        return found

    def hold(self, view: CoreView, now: float) -> set[tuple[str, str]]:
        return set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_wait_s={self.max_wait_s!r})"


class FcfsPolicy(BasePolicy):
    """First come, first served across requests, whatever their priority."""

    name = "fcfs"


class PriorityPolicy(BasePolicy):
    """Strict priority (higher level first), then arrival; aged runs go first (default 5 s)."""

    name = "priority"
    DEFAULT_MAX_WAIT_S = 5.0

    def __init__(self, max_wait_s: float | None = DEFAULT_MAX_WAIT_S) -> None:
        super().__init__(max_wait_s)

    key_is_order = True

    def key(self, run: StageRun, now: float, view: CoreView) -> SortKey:
        return (-run.request.priority, *tail(run))

    def group_order(self, run: StageRun) -> SortKey:
        return (-run.request.priority, *tail(run))


class EdfPolicy(BasePolicy):
    """Earliest sub-deadline first (runs without a deadline last, in arrival order)."""

    name = "edf"

    key_is_order = True

    def key(self, run: StageRun, now: float, view: CoreView) -> SortKey:
        return (run.sub_deadline_s, *tail(run))

    def group_order(self, run: StageRun) -> SortKey:
        return (run.sub_deadline_s, *tail(run))


class LeastSlackPolicy(BasePolicy):
    """Least slack first: sub-deadline minus now minus the run's estimate where it is queued."""

    name = "least_slack"

    group_ties = True  # sub-deadlines apart by less than a rounding step may give equal keys

    def key(self, run: StageRun, now: float, view: CoreView) -> SortKey:
        return (self.key_value(run, now, view), *tail(run))

    def key_value(self, run: StageRun, now: float, view: CoreView) -> float:
        """The key's first component (the queue index's tie check reads it alone)."""
        return run.sub_deadline_s - now - view.estimate_s(run.model, device_of(run))

    def group_order(self, run: StageRun) -> SortKey:
        return (run.sub_deadline_s, *tail(run))


class SjfPolicy(BasePolicy):
    """Shortest estimated run first (on the device it is queued for)."""

    name = "sjf"

    def key(self, run: StageRun, now: float, view: CoreView) -> SortKey:
        return (view.estimate_s(run.model, device_of(run)), *tail(run))

    def group_order(self, run: StageRun) -> SortKey:  # one model on one device: one estimate
        return tail(run)


class DreamPolicy(BasePolicy):
    """DREAM (ASPLOS'23): highest urgency + alpha * fairness first.

    urgency = min(1, remaining estimated latency / time left to the deadline) (1 once late);
    fairness = time since the request last made progress / this run's estimate.
    """

    name = "dream"

    def __init__(self, max_wait_s: float | None = None, alpha: float = 1.0) -> None:
        super().__init__(max_wait_s)
        self.alpha = alpha

    def key(self, run: StageRun, now: float, view: CoreView) -> SortKey:
        req = run.request
        run_s = view.estimate_s(run.model, device_of(run))
        urgency = 0.0
        if req.deadline_s is not None:
            remaining_s = run_s + (req.deadline_s - run.latest_finish_s)
            left_s = req.deadline_s - now
            urgency = 1.0 if left_s <= 0 else min(1.0, remaining_s / left_s)
        fairness = (now - req.last_progress_s) / max(run_s, 1e-9)
        return (-(urgency + self.alpha * fairness), *tail(run))


def fixed_group_order(policy: Policy) -> tuple[Callable[[StageRun], SortKey], bool] | None:
    """The policy's order of the runs of one model queued on one device, if it holds while they
    wait (group_order, defined beside the key it follows), and whether keys computed from `now`
    may tie where that order does not (group_ties); None when the core must rank every run: an
    order that moves with `now`, or stealing or holding of the policy's own (scheduler/queues.py)."""
    if not isinstance(policy, BasePolicy):
        return None
    cls = type(policy)
    key_owner = next(c for c in cls.__mro__ if "key" in vars(c))  # BasePolicy's at the latest
    if "group_order" not in vars(key_owner):
        return None
    if cls.steal_when_busy or (cls.may_steal, cls.steal_candidates, cls.hold) != (
            BasePolicy.may_steal, BasePolicy.steal_candidates, BasePolicy.hold):
        return None
    return policy.group_order, bool(getattr(policy, "group_ties", False))


@dataclass(frozen=True)
class KineticGroups:
    """Groups a policy whose key moves with `now` asks the core to keep its queued runs in
    (scheduler/queues.py), for it to read (CoreView.queue_groups) instead of ranking every run:
    group_of gives a run's group, order its place in the group (an order the policy's key keeps
    within a group at every `now`, up to what the policy handles itself), finish a second order
    (twill's: when each run becomes hopeless). Frozen runs are noted per group."""

    group_of: Callable[[StageRun], Hashable]
    order: Callable[[StageRun], SortKey]
    finish: Callable[[StageRun], SortKey]


def kinetic_groups(policy: Policy) -> KineticGroups | None:
    """The groups the policy asks for (a `kinetic_groups()` method), if any."""
    ask = getattr(policy, "kinetic_groups", None)
    return ask() if callable(ask) else None


def key_is_group_order(policy: Policy) -> bool:
    """Does the policy's key equal its group order for every run at every `now` (fcfs, priority,
    edf)? Then the index compares the order keys it keeps instead of computing keys. Said by the
    class that defines `key`, beside it (key_is_order), and only while no subclass has changed
    group_order since."""
    owner = next((c for c in type(policy).__mro__ if "key" in vars(c)), None)
    return owner is not None and bool(vars(owner).get("key_is_order", False)) and \
        getattr(type(policy), "group_order", None) is vars(owner).get("group_order")


def _twill(**options: Any) -> Policy:
    from heddle.scheduler.twill import TwillPolicy  # twill builds on this module

    return TwillPolicy(**options)


POLICIES: dict[str, Callable[..., Policy]] = {
    "fcfs": FcfsPolicy,
    "priority": PriorityPolicy,
    "edf": EdfPolicy,
    "least_slack": LeastSlackPolicy,
    "sjf": SjfPolicy,
    "dream": DreamPolicy,
    "twill": _twill,
}


def make_policy(name: str, **options: Any) -> Policy:
    """Build a policy by name (options such as max_wait_s go to its constructor);
    ValueError lists the known ones."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {sorted(POLICIES)}") from None
    return factory(**options)
