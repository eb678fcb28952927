"""The one virtual-time loop: arrivals, run completions and control-period ticks, popped from an
event heap in time order, each followed by one step of the pure Core. How long a run takes, and
what a control period senses and does, comes from a pluggable run-time model.

Ties between events at the same time go in the order they were pushed (a counter in the heap
key), so a run is a pure function of its inputs: same seed, same numbers.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from heddle.scheduler.core import Core
from heddle.scheduler.plan import Dispatch, Finished, Plan
from heddle.scheduler.profiles import batch_scale
from heddle.scheduler.state import Outcome, Request

__all__ = ["Driver", "RunTimeModel", "TimedBy"]

_ARRIVE, _DONE, _TICK, _WAKE = 0, 1, 2, 3


class RunTimeModel(Protocol):
    """The machine under the core. Subclass it to take the defaults: runs never fail and there
    is no control loop (no ticks)."""

    def start(self, core: Core, run: Dispatch, now: float) -> float:
        """`run` begins at `now` on its device (at the device's current level): its seconds. A
        batch (run.batch) is one pass of run.rows rows, its members ending together."""
        ...

    def finish(self, run: Dispatch, now: float) -> str:
        """`run` ended at `now`: its error, '' when it succeeded."""
        return ""

    def list_lengths(self, core: Core, run: Dispatch) -> dict[str, int]:
        """How many elements each list output of a run that ended has (what a map stage over it
        fans out to; scheduler/fanout.py). None here: pipelines with map stages need a model that says."""
        return {}

    def flags(self, core: Core, run: Dispatch) -> dict[str, bool]:
        """Whether a run's outputs are non-empty / true, for `when` (scheduler/conditions.py);
        none told here, and a `when` not told runs its stage."""
        return {}

    def first_tick_s(self) -> float | None:
        """When the first control period ends; None: no control loop."""
        return None

    def tick(self, core: Core, now: float) -> float | None:
        """A control period ended at `now`: sense, and act on the core (power samples, levels);
        returns when the next period ends, None to stop ticking."""
        return None


class TimedBy(RunTimeModel):
    """Each run takes run_s(model, device) seconds whatever the level, a batch that times the
    default batch axis (profiles.batch_scale): the tests' machine."""

    def __init__(self, run_s: Callable[[str, str], float],
                 list_length: Callable[[Dispatch], int] | None = None,
                 flag: Callable[[Dispatch], bool] | None = None) -> None:
        """list_length: the element count of every list output of a run (default: none has any);
        flag: whether every output of a run is non-empty / true (default: not told)."""
        self.run_s = run_s
        self.list_length = list_length
        self.flag = flag

    def flags(self, core: Core, run: Dispatch) -> dict[str, bool]:
        if self.flag is None:
            return {}
        return dict.fromkeys((t.name for t in core.models[run.model].outputs), self.flag(run))

    def list_lengths(self, core: Core, run: Dispatch) -> dict[str, int]:
        if self.list_length is None:
            return {}
        outputs = core.models[run.model].outputs
        return {t.name: self.list_length(run) for t in outputs if t.is_list}

    def start(self, core: Core, run: Dispatch, now: float) -> float:
        return self.run_s(run.model, run.device) * (batch_scale(run.rows) if run.batch else 1.0)


def _as_is(request: Request, now: float) -> Request:
    return request


@dataclass(slots=True, eq=False)
class Driver:
    """Runs `core` until no event is left. Arrivals are pushed with `arrive(time_s, item)`
    before `run()` (or from `on_finished`, for closed-loop clients); `make_request(item, now)`
    turns an item into the Request submitted at its time (default: the item is one).

    Hooks, for callers that score or check along the way: `before_step(now)` after the event
    and before the step, `after_step(now, plan)` once the plan is carried out, and
    `on_finished(finished, now)` per request that ended."""

    core: Core
    run_times: RunTimeModel
    make_request: Callable[[Any, float], Request] = _as_is
    forget: bool = True  # drop each ended request from the core: long runs stay small
    log_runs: bool = False  # keep (start, end, dispatch) of every run in `runs`
    before_step: Callable[[float], None] | None = None
    after_step: Callable[[float, Plan], None] | None = None
    on_finished: Callable[[Finished, float], None] | None = None
    finished: dict[str, tuple[Outcome, float]] = field(default_factory=dict)  # request id -> (outcome, when)
    placements: dict[str, dict[str, int]] = field(default_factory=dict)  # model -> device -> runs
    runs: list[tuple[float, float, Dispatch]] = field(default_factory=list)
    migrations: int = 0
    freezes: int = 0
    _events: list[tuple[float, int, int, Any]] = field(default_factory=list)
    _pushed: int = 0
    _wakes: set[float] = field(default_factory=set)  # wake-ups pushed for forming batches

    def arrive(self, time_s: float, item: Any) -> None:
        self._push(time_s, _ARRIVE, item)

    def run(self) -> Driver:
        first_s = self.run_times.first_tick_s()
        if first_s is not None:  # after the arrivals pushed so far: they go first at a tie
            self._push(first_s, _TICK, None)
        while self._events:
            now, _, kind, item = heapq.heappop(self._events)
            self._on_event(kind, item, now)
            if self.before_step is not None:
                self.before_step(now)
            plan = self.core.schedule(now)
            self._carry_out(plan, now)
            if self.after_step is not None:
                self.after_step(now, plan)
            wake_s = self.core.next_batch_wake_s()
            if wake_s is not None and wake_s not in self._wakes:  # a forming batch starts then at the latest
                self._wakes.add(wake_s)
                self._push(wake_s, _WAKE, None)
        return self

    def _push(self, time_s: float, kind: int, item: Any) -> None:
        self._pushed += 1
        heapq.heappush(self._events, (time_s, self._pushed, kind, item))

    def _on_event(self, kind: int, item: Any, now: float) -> None:
        if kind == _ARRIVE:
            self.core.submit(self.make_request(item, now), now)
        elif kind == _DONE:
            error = self.run_times.finish(item, now)
            for member in item.members:
                lengths = self.run_times.list_lengths(self.core, member)
                self.core.on_stage_done(member.request_id, member.stage, now, error=error,
                                        list_shapes={k: (None,) * n for k, n in lengths.items()} or None,
                                        flags=self.run_times.flags(self.core, member) or None)
        elif kind == _WAKE:
            self._wakes.discard(now)
        else:
            next_s = self.run_times.tick(self.core, now)
            if next_s is not None:
                self._push(next_s, _TICK, None)

    def _carry_out(self, plan: Plan, now: float) -> None:
        for d in plan.dispatches:
            end_s = now + self.run_times.start(self.core, d, now)
            per_model = self.placements.setdefault(d.model, {})
            per_model[d.device] = per_model.get(d.device, 0) + len(d.members)
            if self.log_runs:
                self.runs.append((now, end_s, d))
            self._push(end_s, _DONE, d)
        for f in plan.finished:
            assert f.request_id not in self.finished, f"{f.request_id} ended twice"
            self.finished[f.request_id] = (f.outcome, now)
            if self.forget:
                self.core.forget(f.request_id)
            if self.on_finished is not None:
                self.on_finished(f, now)
        self.migrations += len(plan.migrated)
        self.freezes += len(plan.frozen)
