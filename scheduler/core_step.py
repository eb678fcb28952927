"""The step half of Core: `schedule(now)` and what it does to fill free device slots (picking by
policy order through the queue index, stealing, aging, batch formation, LLM riders, holds), and
the one way a request ends (`_finish`). Kept apart so the event half (core.py: submit, stage
ends, cancel, health, reload) reads on its own; it relies on the state Core.__init__ sets up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from heddle.scheduler.batching import choose_batch
from heddle.scheduler.deadlines import DeadlineHeap
from heddle.scheduler.plan import Dispatch, Finished, Freeze, Migrate, Plan, PowerAction, Reject, SetLevel, Unfreeze
from heddle.scheduler.policies import SortKey, tail
from heddle.scheduler.queues import QueueIndex
from heddle.scheduler.specs import BatchOptions
from heddle.scheduler.state import Outcome, Request, RunState, StageRun, device_of
from heddle.scheduler.view import CoreReads

if TYPE_CHECKING:
    from heddle.scheduler.admission import Admission
    from heddle.scheduler.power import PowerController

__all__ = ["CoreStep"]

_QUEUED = (RunState.READY, RunState.FROZEN)
_EMPTY_PLAN = Plan()


class CoreStep(CoreReads):
    """Core's step: the plan of what to run now, from the state its events left."""

    power: PowerController | None
    admission: Admission | None
    version: int
    _index: QueueIndex
    _deadlines: DeadlineHeap
    _log_frozen: list[Freeze]
    _log_unfrozen: list[Unfreeze]
    _log_migrated: list[Migrate]
    _log_levels: list[SetLevel]
    _log_rejected: list[Reject]
    _log_power: list[PowerAction]
    _held: set[tuple[str, str]]  # the runs the policy holds this step

    def schedule(self, now: float) -> Plan:
        """Expire overdue requests, apply the policy's holds, then fill every free device slot
        by policy order (runs past the aging bound first)."""
        self._expire(now)
        self._apply_holds(now)
        self._batch_wake_s.clear()
        waiting: dict[str, tuple[StageRun, ...]] = {}  # device -> the runs of the batch it waits to fill
        dispatches: list[Dispatch] = []
        running, healthy = self._running, self._healthy
        for device_id, spec in self.devices.items():  # a busy device is passed by without a call
            if len(running[device_id]) < spec.slots and healthy[device_id]:
                dispatches += self._fill(device_id, now, waiting)
        # A device that chose to wait may see a later device start (steal) a run it waited with:
        # it fills again, as the reasons to wait may have gone with it (a member of a higher
        # priority made holding an equal one's other runs fair). Ends, as each refill starts runs
        # or waits on runs still ready, and only a start makes a run not ready.
        while waiting and (stale := [d for d, runs in waiting.items()
                                     if any(r.state is not RunState.READY for r in runs)]):
            for device_id in stale:
                del waiting[device_id], self._batch_wake_s[device_id]
                dispatches += self._fill(device_id, now, waiting)
        assert self._num_frozen >= 0
        return self._plan(dispatches)

    def _plan(self, dispatches: list[Dispatch]) -> Plan:
        """The step's plan, its logs emptied. Most steps of a loaded core start nothing and log
        nothing (an arrival while every device is busy): they share one empty plan (it is frozen)."""
        if not (dispatches or self._finished or self._log_frozen or self._log_unfrozen or self._log_migrated
                or self._log_levels or self._log_rejected or self._log_power):
            return _EMPTY_PLAN
        plan = Plan(tuple(dispatches), tuple(self._finished), tuple(self._log_frozen),
                    tuple(self._log_unfrozen), tuple(self._log_migrated), tuple(self._log_levels),
                    tuple(self._log_rejected), tuple(self._log_power))
        self._finished, self._log_frozen, self._log_unfrozen, self._log_migrated = [], [], [], []
        self._log_levels, self._log_rejected, self._log_power = [], [], []
        return plan

    def _fill(self, device: str, now: float, waiting: dict[str, tuple[StageRun, ...]]) -> list[Dispatch]:
        """Start runs on the device's free slots in policy order; it may leave them free while a
        batch forms (scheduler/batching.py), the batch's first run then noted in `waiting`."""
        started: list[Dispatch] = []
        while self._healthy[device] and self.free_slots(device) > 0:
            run = self._pick(device, now)
            if run is None:
                break
            if run.model in self._batching:
                batch = self._form_batch(run, device, now)
                if isinstance(batch, tuple):
                    waiting[device] = batch
                    break
                started.append(batch)
                continue
            started.append(self._start(run, device, now))
            started += self._batch_riders(run, device, now)
        # The one place runs take slots (riders and batch members hold none): checked here, per
        # device that started work, rather than every device at every step.
        assert len(self._running[device]) <= self.devices[device].slots, f"{device} over its slots"
        return started

    def _rank(self, run: StageRun, now: float) -> SortKey:
        if self.policy.max_wait_s is not None and run.ready_s is not None and self.aged(run, now):
            return (0, run.ready_s, *tail(run))  # aged runs: oldest ready first
        return (1, *self.policy.key(run, now, self))

    def _pick(self, device: str, now: float) -> StageRun | None:
        """Best ready run for a free slot of `device` (policy order, aged runs first), through
        the queue index where the policy allows, else ranking every run it may take."""
        if self._index.usable(self.power is not None and self.power.freezing, self.policy.max_wait_s is not None):
            return self._index.pick(device, now, self, lambda r: self._rank(r, now))
        pool = self._pool(device, now, heads=True)
        return min(pool, key=lambda r: self._rank(r, now)) if pool else None

    def _pool(self, device: str, now: float, heads: bool = False) -> list[StageRun]:
        """The ready runs a free slot of `device` may take: from its own queue, runs the policy
        lets it steal (when its queue is empty, or always if the policy says so), and aged runs
        queued anywhere it can run them. heads: of its own queue only the run the policy ranks
        first where it names it (queued_heads: twill reads it from its groups), for a pick."""
        ask = getattr(self.policy, "queued_heads", None) if heads else None
        own = None
        if ask is not None and self.policy.max_wait_s is None and not (self.power is not None and self.power.freezing):
            own = ask(device, self, now)
        pool = [r for r in self._queues[device] if r.state is RunState.READY] if own is None else own
        if not pool or self.policy.steal_when_busy:
            pool += self.policy.steal_candidates(device, self, now)
        if self.policy.max_wait_s is not None:
            seen = {r.key for r in pool}
            pool += [r for other, queue in self._queues.items() if other != device for r in queue
                     if r.state is RunState.READY and r.key not in seen and self.aged(r, now)
                     and device in self.eligible_devices(r.model)]
        if self.power is not None and self.power.freezing:  # nor take work frozen on this device
            frozen_max = self.power.freeze_max(device)
            pool = [r for r in pool if r.request.priority > frozen_max]
            # Work frozen where it is queued but not here: the class was released on this device
            # (a slower one, or one whose busy power fits the budget), and it would otherwise wait
            # for its own device's release however long this one stands idle.
            pool += [r for other, queue in self._queues.items() if other != device and self._num_frozen
                     for r in queue if r.state is RunState.FROZEN and r.request.priority > frozen_max
                     and device in self.eligible_devices(r.model)]
            if self._num_frozen and (left_s := self.power.duty_left_s(device)) > 0:
                # The class frozen here runs a share of each control period (a release in part):
                # its runs queued anywhere that fit in what is left of this period's share (a run
                # past it would put this period's power over), but not those the policy holds to
                # keep this device free for urgent work.
                pool += [r for queue in self._queues.values() for r in queue
                         if r.state is RunState.FROZEN and r.request.priority <= frozen_max
                         and r.key not in self._held and device in self.eligible_devices(r.model)
                         and self.estimate_s(r.model, device) <= left_s]
        return pool

    def _start(self, run: StageRun, device: str, now: float) -> Dispatch:
        queued = device_of(run)
        self._queues[queued].remove(run)
        self._index.remove(run, queued)
        self._device_versions[queued] += 1
        self._device_versions[device] += 1
        if queued != device:
            self._log_migrated.append(Migrate(run.request.id, run.name, queued, device))
        run.device = device
        if run.state is RunState.FROZEN:  # taken from where its class is frozen
            self._num_frozen -= 1
            if self.power is not None and run.request.priority <= self.power.freeze_max(device):
                self.power.spend_duty(device, self.estimate_s(run.model, device))  # frozen here too
        run.state = RunState.RUNNING
        run.started_s = now
        run.level = self._levels[device]
        run.pass_rows = 1
        self._running[device][run.key] = run
        self.version += 1
        return Dispatch(run.request.id, run.name, run.model, device)

    def _form_batch(self, lead: StageRun, device: str, now: float) -> Dispatch | tuple[StageRun, ...]:
        """Start `lead` with the ready runs that share its pass (scheduler/batching.py) as one
        Dispatch; when the device waits for more, the runs it waits with (its wake time noted
        for the driver)."""
        options: BatchOptions = self._batching[lead.model]
        pool = self._pool(device, now)
        alike = sorted((r for r in pool if r.model == lead.model and r.signature == lead.signature),
                       key=lambda r: self._rank(r, now))
        choice = choose_batch(lead, alike, pool, options, lambda r: self.aged(r, now),
                              self.estimate_s(lead.model, device, options.max_batch), now)
        if not choice.members:
            assert choice.wake_s is not None
            self._batch_wake_s[device] = choice.wake_s
            return choice.waits_with
        first = self._start(lead, device, now)
        lead.pass_rows = choice.rows
        for member in choice.members[1:]:
            self._start(member, device, now)
            del self._running[device][member.key]
            self._riders[member.key] = member
            member.pass_rows = 0
        batch = tuple(m.key for m in choice.members) if len(choice.members) > 1 else ()
        return Dispatch(first.request_id, first.stage, first.model, device, batch, choice.rows)

    def _batch_riders(self, run: StageRun, device: str, now: float) -> list[Dispatch]:
        """Continuous batching: ready runs of the same LLM model queued on this device (policy
        order, up to the model's max_batch option less one) start with `run` and share its pass
        and its slot. Models without max_batch > 1 never batch."""
        spec = self.models[run.model]
        room = int(spec.options.get("max_batch", 1)) - 1 if spec.kind == "llm" else 0
        if room <= 0:
            return []
        same = [r for r in self._queues[device] if r.model == run.model and r.state is RunState.READY]
        riders = []
        for rider in sorted(same, key=lambda r: self._rank(r, now))[:room]:
            riders.append(self._start(rider, device, now))
            del self._running[device][rider.key]
            self._riders[rider.key] = rider
        return riders

    def _apply_holds(self, now: float) -> None:
        """The one way runs are frozen and unfrozen: the policy names the queued runs to hold
        this step; an aged run is never held (the aging bound beats freezing). The power
        controller holds the classes it froze on each device, aged or not (the cap beats aging)."""
        held = self._held = self.policy.hold(self, now)
        power = self.power if self.power is not None and self.power.freezing else None
        if not held and not self._num_frozen and power is None:
            return
        for device, queue in self._queues.items():
            frozen_max = power.freeze_max(device) if power is not None else 0
            for run in queue:
                hold = (run.key in held and not self.aged(run, now)) or run.request.priority <= frozen_max
                if run.state is RunState.FROZEN and not hold:
                    self.version += 1
                    self._device_versions[device] += 1
                    run.state = RunState.READY
                    self._num_frozen -= 1
                    self._index.set_frozen(run, device)
                    self._log_unfrozen.append(Unfreeze(run.request.id, run.name, device))
                elif run.state is RunState.READY and hold:
                    self.version += 1
                    self._device_versions[device] += 1
                    run.state = RunState.FROZEN
                    self._num_frozen += 1
                    self._index.set_frozen(run, device)
                    self._log_frozen.append(Freeze(run.request.id, run.name, device))

    def _expire(self, now: float) -> None:
        """Requests past their deadline with work not yet started are shed, not run late."""
        if self._deadlines.due(now):
            for request in self._deadlines.pop_due(now):  # ended requests have left it already
                self._overdue[request.id] = request
        if not self._overdue:
            return
        for request in list(self._overdue.values()):
            if any(r.state < RunState.RUNNING for r in request.runs.values()):
                self._finish(request, Outcome.DEADLINE_EXCEEDED,  # which drops it from _overdue
                             "deadline passed before all stages could start", now)

    def _finish(self, request: Request, outcome: Outcome, error: str, now: float) -> None:
        """The one way a request ends: drop its queued runs, keep running ones accounted."""
        request.outcome = outcome
        request.error = error
        request.finished_s = now
        self._num_active -= 1
        self.version += 1
        self._deadlines.discard(request)
        self._overdue.pop(request.id, None)
        if self.admission is not None:
            self.admission.forget(request.id)
        for run in request.runs.values():
            if run.state in _QUEUED:
                self._queues[device_of(run)].remove(run)
                self._index.remove(run, device_of(run))
                self._device_versions[device_of(run)] += 1
                self._num_frozen -= run.state is RunState.FROZEN
            if run.state < RunState.RUNNING or run.state is RunState.MAPPED:
                run.state = RunState.CANCELLED
            elif run.state is RunState.RUNNING:
                self._orphans[run.key] = request
                self._orphan_ids[request.id] = self._orphan_ids.get(request.id, 0) + 1
        self._finished.append(Finished(request.id, outcome, error))
