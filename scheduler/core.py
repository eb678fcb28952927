"""The scheduler core: a step function over request state with an injected clock and no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from heddle.scheduler.admission import Action
from heddle.scheduler.batching import choose_batch, shape_signature
from heddle.scheduler.budget import budget_run
from heddle.scheduler.conditions import may_run, skip
from heddle.scheduler.core_power import CorePowerEvents
from heddle.scheduler.deadlines import DeadlineHeap, usable_deadline
from heddle.scheduler.fanout import element_count, element_done, expand, is_map_group
from heddle.scheduler.fanout_stats import FanoutStats
from heddle.scheduler.plan import (
    Dispatch,
    Finished,
    Freeze,
    Migrate,
    Plan,
    PowerAction,
    Reject,
    SetLevel,
    Unfreeze,
)
from heddle.scheduler.policies import Policy, SortKey, make_policy, tail
from heddle.scheduler.profiles import ConstantProfiles, Profiles
from heddle.scheduler.queues import QueueIndex
from heddle.scheduler.specs import BatchOptions, DeviceSpec, ModelSpec
from heddle.scheduler.state import Outcome, Request, RunState, StageRun, device_of, started_s_of
from heddle.scheduler.view import CoreReads

if TYPE_CHECKING:
    from heddle.scheduler.admission import Admission
    from heddle.scheduler.power import PowerController

__all__ = ["Core"]

_QUEUED = (RunState.READY, RunState.FROZEN)
_COMPLETE = (RunState.DONE, RunState.SKIPPED)


class Core(CorePowerEvents, CoreReads):
    """Holds requests and per-device ready queues; `schedule(now)` returns what to run.

    Events (submit, on_stage_done, cancel, set_device_health, set_device_level) change state
    and buffer request completions; `schedule` drains them into the plan with dispatches.
    `profiles` gives run-time estimates (default: every run takes the same time) for
    deadline budgets, estimate-based policies, and op-type compatibility of devices.
    """

    def __init__(
        self,
        devices: Iterable[DeviceSpec],
        models: Mapping[str, ModelSpec],
        policy: Policy | str = "fcfs",
        profiles: Profiles | None = None,
        power: PowerController | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.devices = {d.id: d for d in devices}
        self.models = dict(models)
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.profiles: Profiles = profiles if profiles is not None else ConstantProfiles()
        self._queues: dict[str, list[StageRun]] = {d: [] for d in self.devices}
        # The same runs by (device, model) in the policy's fixed order, when it has one: a pick
        # then reads group heads, not every queued run (scheduler/queues.py).
        self._index = QueueIndex(self.devices, self.policy)
        # Dicts, not sets: iteration order must not depend on string hashing.
        self._running: dict[str, dict[tuple[str, str], StageRun]] = {d: {} for d in self.devices}
        self._healthy = {d: True for d in self.devices}
        self._levels = {d: 0 for d in self.devices}
        self._compatible: dict[str, list[str]] = {}
        self._best_s: dict[str, float] = {}  # model -> best estimate; dropped when it may change
        self._requests: dict[str, Request] = {}
        self._finished: list[Finished] = []
        self._log_frozen: list[Freeze] = []
        self._log_unfrozen: list[Unfreeze] = []
        self._log_migrated: list[Migrate] = []
        # Power control and admission (scheduler/power.py, admission.py), both optional: the
        # controller's decisions arrive through on_power_sample, admission runs at submit.
        # Given here or by attach_power, never assigned from outside.
        self.power = power
        self.admission = admission
        self._log_levels: list[SetLevel] = []
        self._log_rejected: list[Reject] = []
        self._log_power: list[PowerAction] = []
        self._num_frozen = 0
        self._num_active = 0
        # Deadlines in time order, and requests past theirs whose remaining stages were all
        # running then (shed later if a next stage is still to start): _expire needs no scan.
        # Both let go of a request the moment it ends (_finish).
        self._deadlines = DeadlineHeap()
        self._overdue: dict[str, Request] = {}
        # LLM decode steps started alongside another step of their model on the same device:
        # they share its forward pass, so they hold no slot of their own (_batch_riders).
        self._riders: dict[tuple[str, str], StageRun] = {}
        # Dynamic batching of every other model that sets max_batch > 1 (scheduler/batching.py):
        # members of a batch after its first ride in the first's slot, in _riders too. A device
        # waiting for a fuller batch is stepped again at its wake time (next_deadline_s).
        self._batching = {name: spec.batching for name, spec in self.models.items()
                          if spec.kind != "llm" and spec.batching.enabled}
        self._batch_wake_s: dict[str, float] = {}
        # Running stages of requests that already ended, so their slots are still released.
        self._orphans: dict[tuple[str, str], Request] = {}
        # Orphaned stages per request id: the id stays taken until they return, or a new request
        # reusing it would be handed the old one's stage (runs are found by id and stage name).
        self._orphan_ids: dict[str, int] = {}
        self._seq = 0
        # Bumped by every change to queues, running work, estimates or levels, so a policy
        # may cache what it derives from them within a step (twill's queue forecasts).
        self.version = 0
        # Finer, for what is derived from one device's queue (queue_version): per device, bumped
        # when its queued or running runs or their states change; estimates_version when the
        # estimates or device health may have (wherever _best_s is dropped).
        self._device_versions = {d: 0 for d in self.devices}
        self.estimates_version = 0
        self.fanout = FanoutStats()

    # ---- events -------------------------------------------------------------------------
    def submit(self, request: Request, now: float) -> None:
        """Accept a request: its source stages become ready at once."""
        if request.id in self._requests or request.id in self._orphan_ids:
            raise ValueError(f"request id {request.id!r} is already in flight")
        self._seq += 1
        self.version += 1
        request.seq = self._seq
        request.last_progress_s = now
        request.runs = {
            s.name: StageRun(request, s.name, s.model, i, len(request.pipeline.depends_on[s.name]))
            for i, s in enumerate(request.pipeline.stages)
        }
        self._requests[request.id] = request
        self._num_active += 1
        try:  # any float may arrive here; NaN would stop the deadline heap and order nothing
            request.deadline_s = usable_deadline(request.deadline_s)
        except ValueError as exc:
            self._finish(request, Outcome.FAILED, str(exc), now)
            return
        if self.admission is not None and self._refused(request, now):
            return
        if request.deadline_s is not None:
            self._deadlines.push(request)
        for run in request.runs.values():
            if run.deps_left == 0 and not request.finished:
                self._make_ready(run, now)  # a map stage always waits for its list's stage

    def _running_run(self, request_id: str, stage: str) -> tuple[Request, StageRun]:
        """The one way back from a dispatch to its run: also finds runs of requests that ended
        while they ran (orphans), whose slots must still be released."""
        orphan = self._orphans.pop((request_id, stage), None)
        if orphan is not None:
            left = self._orphan_ids.pop(request_id) - 1
            if left:
                self._orphan_ids[request_id] = left
        request = self._requests.get(request_id) or orphan
        if request is None:
            raise KeyError(f"no running stage {stage!r} of request {request_id!r}")
        run = request.runs[stage]
        if run.state is not RunState.RUNNING:
            raise ValueError(f"stage {stage!r} of {request_id!r} is {run.state.name}, not RUNNING")
        return request, run

    def on_stage_done(self, request_id: str, stage: str, now: float, error: str = "",
                      output_shapes: Mapping[str, tuple[int, ...]] | None = None,
                      list_shapes: Mapping[str, Sequence[tuple[int, ...] | None]] | None = None,
                      flags: Mapping[str, bool] | None = None) -> None:
        """A dispatched run finished (error set if it failed); free its slot, wake dependents.
        output_shapes: its outputs' shapes, for the batch signatures of the stages they feed;
        list_shapes: its list outputs' element shapes (None: not told), which a map stage over
        one needs (their number is its element count; scheduler/fanout.py); flags: whether its
        outputs are non-empty / true, which a `when` reads (scheduler/conditions.py)."""
        request, run = self._running_run(request_id, stage)
        self._free_slot(run)
        self.version += 1
        run.finished_s = now
        run.state = RunState.FAILED if error else RunState.DONE
        run.error = error
        if not error and run.pass_rows:  # a batch's pass is observed once, by its first member
            self.profiles.observe(run.model, self.devices[device_of(run)], run.level, now - started_s_of(run),
                                  run.pass_rows)
            self._best_s.pop(run.model, None)
            self.estimates_version += 1
        for name, shape in (output_shapes or {}).items():
            request.shapes[(stage, name)] = tuple(shape)
        for name, shapes in (list_shapes or {}).items():
            request.lists[(run.stage, name)] = tuple(None if s is None else tuple(s) for s in shapes)
        for name, flag in (flags or {}).items():
            request.flags[(run.stage, name)] = flag
        if request.finished:
            return  # cancelled or expired while this stage ran: its result is not wanted
        request.last_progress_s = now
        if error:
            self._finish(request, Outcome.FAILED, f"stage {stage!r}: {error}", now)
            return
        self._advance(run, now)

    def _advance(self, run: StageRun, now: float) -> None:
        """A run is DONE: wake its stage's dependents (a map stage's once its last element run
        is), and end the request when every run is done."""
        request = run.request
        if run.element >= 0:
            group = element_done(run, now)
            if group is None:
                return
            run = group
        for name in request.pipeline.dependents[run.stage]:
            nxt = request.runs[name]
            nxt.deps_left -= 1
            if nxt.deps_left == 0 and nxt.state is RunState.WAITING:  # not skipped meanwhile
                self._release(nxt, now)
        if not request.finished and all(r.state in _COMPLETE for r in request.runs.values()):
            self._finish(request, Outcome.OK, "", now)

    def _release(self, run: StageRun, now: float) -> None:
        """Every input of the stage exists: queue its run, or a map stage's element runs, or skip
        it (and the stages after it) when its `when` is false."""
        pipeline = run.request.pipeline
        if run.stage in pipeline.whens:
            self.fanout.observe_ran(pipeline.name, run.stage, may_run(run))
        if not may_run(run):
            skip(run, now)
            self.version += 1
            if not run.request.finished and all(r.state in _COMPLETE for r in run.request.runs.values()):
                self._finish(run.request, Outcome.OK, "", now)
            return
        if not is_map_group(run):
            self._make_ready(run, now)
            return
        try:
            elements = expand(run, now)
        except ValueError as exc:  # the driver did not say how long the list is
            self._finish(run.request, Outcome.FAILED, str(exc), now)
            return
        self.version += 1
        self.fanout.observe_elements(pipeline.name, run.stage, element_count(run))
        for element in elements:
            if not run.request.finished:
                self._make_ready(element, now)
        if not elements:
            self._advance(run, now)

    def on_stage_step(self, request_id: str, stage: str, now: float) -> bool:
        """A dispatched multi-step stage (an LLM's prefill or one decode step) did one step but is
        not done: free its slot and queue it again where the policy places it, so it can be
        frozen, migrated or dropped between steps like any queued run. False when its request
        already ended (cancelled, expired): the caller drops the stage's state."""
        request, run = self._running_run(request_id, stage)
        self._free_slot(run)
        self.version += 1
        self.profiles.observe(run.model, self.devices[device_of(run)], run.level, now - started_s_of(run))
        self._best_s.pop(run.model, None)
        self.estimates_version += 1
        if request.finished:
            run.state, run.finished_s = RunState.CANCELLED, now
            return False
        request.last_progress_s = now
        run.ready_s = now  # the aging bound counts from this step's wait, not the stage's first
        self._make_ready(run, now)
        return not request.finished

    def cancel(self, request_id: str, now: float, outcome: Outcome = Outcome.CANCELLED,
               error: str = "cancelled by the client") -> bool:
        """End a request early; its queued stages are dropped. False if it already ended."""
        request = self._requests.get(request_id)
        if request is None or request.finished:
            return False
        self._finish(request, outcome, error, now)
        return True

    def set_device_health(self, device: str, healthy: bool, now: float) -> None:
        """Take a device out of (or back into) rotation; its queue moves to healthy peers."""
        self._healthy[device] = healthy
        self._best_s.clear()
        self.version += 1
        self.estimates_version += 1
        if not healthy:
            stranded, self._queues[device] = self._queues[device], []
            self._index.clear(device, stranded)
            for run in stranded:  # in no queue now: a request that ends must not look for them in one
                self._num_frozen -= run.state is RunState.FROZEN
                run.state = RunState.WAITING
            for run in stranded:
                if not run.request.finished:  # another stranded run of its request may have ended it
                    self._make_ready(run, now)

    def retry_stage(self, request_id: str, stage: str, now: float, error: str,
                    max_attempts: int = 1) -> bool:
        """A dispatched stage was lost with its device (a remote server died mid-run): free the
        slot and queue it once more elsewhere if the deadline allows. False when the request
        ends UNAVAILABLE instead (or had already ended)."""
        request, run = self._running_run(request_id, stage)
        self._free_slot(run)
        self.version += 1
        if request.finished:
            run.state, run.finished_s, run.error = RunState.FAILED, now, error
            return False
        run.attempts += 1
        out_of_time = request.deadline_s is not None and now >= request.deadline_s
        if run.attempts > max_attempts or out_of_time:
            run.state, run.finished_s, run.error = RunState.FAILED, now, error
            self._finish(request, Outcome.UNAVAILABLE, f"stage {stage!r}: {error}", now)
            return False
        # Not running any more: the deadline budget must estimate it as a stage still to start.
        run.state, run.started_s = RunState.WAITING, None
        self._make_ready(run, now)
        return not request.finished

    def _refused(self, request: Request, now: float) -> bool:
        """Admission's verdict on a just-registered request; a rejected one ends here."""
        assert self.admission is not None  # submit asks only when there is one
        decision = self.admission.decide(request, self, now)
        if decision.action is not Action.REJECT:
            return False
        self._log_rejected.append(Reject(request.id, decision.reason, request.priority, decision.retry_after_s))
        outcome = Outcome.DEADLINE_EXCEEDED if decision.reason == "deadline" else Outcome.REJECTED
        self._finish(request, outcome, decision.message, now)
        return True

    def update_models(self, models: Mapping[str, ModelSpec]) -> None:
        """Models added or changed by a config reload (server/runtime/reload.py): their specs
        replace or join the old ones. None is dropped: a removed model's queued runs, of requests
        that arrived before the reload, still need its spec, and no new request can name it."""
        self.models.update(models)
        for name, spec in models.items():  # a reload may turn a model's batching on, off or change it
            self._batching.pop(name, None)
            if spec.kind != "llm" and spec.batching.enabled:
                self._batching[name] = spec.batching
        self._compatible.clear()  # a changed spec may name other devices
        self._best_s.clear()
        self.version += 1

    def set_policy(self, policy: Policy | str) -> None:
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self._index.reorder(self.policy, self._queues)
        self.version += 1

    # ---- the step -----------------------------------------------------------------------
    def schedule(self, now: float) -> Plan:
        """Expire overdue requests, apply the policy's holds, then fill every free device slot
        by policy order (runs past the aging bound first)."""
        self._expire(now)
        self._apply_holds(now)
        self._batch_wake_s.clear()
        waiting: dict[str, StageRun] = {}  # device -> the first run of the batch it waits to fill
        dispatches: list[Dispatch] = []
        for device_id in self.devices:
            dispatches += self._fill(device_id, now, waiting)
        # A device that chose to wait may see a later device start (steal) the run it waited
        # with: it fills again. Ends, as each refill starts runs or waits on one still ready.
        while stale := [d for d, lead in waiting.items() if lead.state is not RunState.READY]:
            for device_id in stale:
                del waiting[device_id], self._batch_wake_s[device_id]
                dispatches += self._fill(device_id, now, waiting)
        plan = Plan(tuple(dispatches), tuple(self._finished), tuple(self._log_frozen),
                    tuple(self._log_unfrozen), tuple(self._log_migrated), tuple(self._log_levels),
                    tuple(self._log_rejected), tuple(self._log_power))
        self._finished, self._log_frozen, self._log_unfrozen, self._log_migrated = [], [], [], []
        self._log_levels, self._log_rejected, self._log_power = [], [], []
        self._check_invariants()
        return plan

    def _fill(self, device: str, now: float, waiting: dict[str, StageRun]) -> list[Dispatch]:
        """Start runs on the device's free slots in policy order; it may leave them free while a
        batch forms (scheduler/batching.py), the batch's first run then noted in `waiting`."""
        started: list[Dispatch] = []
        while self._healthy[device] and self.free_slots(device) > 0:
            run = self._pick(device, now)
            if run is None:
                break
            if run.model in self._batching:
                batch = self._form_batch(run, device, now)
                if batch is None:
                    waiting[device] = run
                    break
                started.append(batch)
                continue
            started.append(self._start(run, device, now))
            started += self._batch_riders(run, device, now)
        return started

    def forget(self, request_id: str) -> None:
        """Drop a finished request once the caller has read its timings."""
        request = self._requests.get(request_id)
        if request is not None and request.finished:
            del self._requests[request_id]

    # ---- internals ----------------------------------------------------------------------
    def _make_ready(self, run: StageRun, now: float) -> None:
        """Budget the run's share of the deadline, then queue it where the policy places it."""
        devices = self.eligible_devices(run.model)
        if not devices:
            self._finish(run.request, Outcome.UNAVAILABLE,
                         f"no healthy device can run model {run.model!r}", now)
            return
        if run.ready_s is None:
            run.ready_s = now
        if run.model in self._batching:
            run.signature, run.rows = shape_signature(run)
        budget_run(run, now, self)
        run.state = RunState.READY
        run.device = self.policy.place(run, devices, self, now)
        self._queues[run.device].append(run)
        self._index.add(run, run.device)
        self._device_versions[run.device] += 1
        self.version += 1

    def _rank(self, run: StageRun, now: float) -> SortKey:
        if self.policy.max_wait_s is not None and run.ready_s is not None and self.aged(run, now):
            return (0, run.ready_s, *tail(run))  # aged runs: oldest ready first
        return (1, *self.policy.key(run, now, self))

    def _pick(self, device: str, now: float) -> StageRun | None:
        """Best ready run for a free slot of `device` (policy order, aged runs first), through
        the queue index where the policy allows, else ranking every run it may take."""
        if self._index.usable(self.power is not None and self.power.freezing, self.policy.max_wait_s is not None):
            return self._index.pick(device, now, self, lambda r: self._rank(r, now))
        pool = self._pool(device, now)
        return min(pool, key=lambda r: self._rank(r, now)) if pool else None

    def _pool(self, device: str, now: float) -> list[StageRun]:
        """The ready runs a free slot of `device` may take: from its own queue, runs the policy
        lets it steal (when its queue is empty, or always if the policy says so), and aged runs
        queued anywhere it can run them."""
        pool = [r for r in self._queues[device] if r.state is RunState.READY]
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
        run.state = RunState.RUNNING
        run.started_s = now
        run.level = self._levels[device]
        run.pass_rows = 1
        self._running[device][run.key] = run
        self.version += 1
        return Dispatch(run.request.id, run.name, run.model, device)

    def _form_batch(self, lead: StageRun, device: str, now: float) -> Dispatch | None:
        """Start `lead` with the ready runs that share its pass (scheduler/batching.py) as one
        Dispatch; None when the device waits for more, its wake time noted for the driver."""
        options: BatchOptions = self._batching[lead.model]
        pool = self._pool(device, now)
        alike = sorted((r for r in pool if r.model == lead.model and r.signature == lead.signature),
                       key=lambda r: self._rank(r, now))
        choice = choose_batch(lead, alike, pool, options, lambda r: self.aged(r, now),
                              self.estimate_s(lead.model, device, options.max_batch), now)
        if not choice.members:
            assert choice.wake_s is not None
            self._batch_wake_s[device] = choice.wake_s
            return None
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

    def _free_slot(self, run: StageRun) -> None:
        if self._riders.pop(run.key, None) is None:
            del self._running[device_of(run)][run.key]
        self._device_versions[device_of(run)] += 1

    def _apply_holds(self, now: float) -> None:
        """The one way runs are frozen and unfrozen: the policy names the queued runs to hold
        this step; an aged run is never held (the aging bound beats freezing). The power
        controller holds the classes it froze on each device, aged or not (the cap beats aging)."""
        held = self.policy.hold(self, now)
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
                    self._log_unfrozen.append(Unfreeze(run.request.id, run.name, device))
                elif run.state is RunState.READY and hold:
                    self.version += 1
                    self._device_versions[device] += 1
                    run.state = RunState.FROZEN
                    self._num_frozen += 1
                    self._log_frozen.append(Freeze(run.request.id, run.name, device))

    def _expire(self, now: float) -> None:
        """Requests past their deadline with work not yet started are shed, not run late."""
        for request in self._deadlines.pop_due(now):  # ended requests have left it already
            self._overdue[request.id] = request
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

    def _check_invariants(self) -> None:
        for device, running in self._running.items():
            assert len(running) <= self.devices[device].slots, f"{device} over its slots"
        assert self._num_frozen >= 0
