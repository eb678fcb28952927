"""The scheduler core: a step function over request state with an injected clock and no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from heddle.scheduler.admission import Action
from heddle.scheduler.batching import shape_signature
from heddle.scheduler.budget import budget_run
from heddle.scheduler.conditions import may_run, skip
from heddle.scheduler.core_control import CoreControlEvents
from heddle.scheduler.core_power import CorePowerEvents
from heddle.scheduler.deadlines import DeadlineHeap, usable_deadline
from heddle.scheduler.fanout import element_count, element_done, expand, is_map_group
from heddle.scheduler.fanout_stats import FanoutStats
from heddle.scheduler.plan import Finished, Freeze, Migrate, PowerAction, Reject, SetLevel, Unfreeze
from heddle.scheduler.policies import Policy, make_policy
from heddle.scheduler.profiles import ConstantProfiles, Profiles
from heddle.scheduler.queues import QueueIndex
from heddle.scheduler.specs import DeviceSpec, ModelSpec
from heddle.scheduler.state import Outcome, Request, RunState, StageRun, device_of, started_s_of

if TYPE_CHECKING:
    from heddle.scheduler.admission import Admission
    from heddle.scheduler.power import PowerController

__all__ = ["Core"]

_COMPLETE = (RunState.DONE, RunState.SKIPPED)


class Core(CorePowerEvents, CoreControlEvents):
    """Holds requests and per-device ready queues; `schedule(now)` returns what to run.

    Events (submit, on_stage_done, on_stage_step here; cancel, set_device_health, retry_stage,
    update_models, set_policy in scheduler/core_control.py; set_device_level in core_power.py)
    change state and buffer request completions; `schedule` (scheduler/core_step.py) drains them
    into the plan with dispatches.
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
        self._eligible: dict[str, list[str]] = {}
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
        self._held: set[tuple[str, str]] = set()
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

    def _free_slot(self, run: StageRun) -> None:
        if self._riders.pop(run.key, None) is None:
            del self._running[device_of(run)][run.key]
        self._device_versions[device_of(run)] += 1
