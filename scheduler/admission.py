"""Admission control: on submit, predict a request's latency at current load and the power it
adds, and accept it, queue it (admitted, but held while its class is frozen; bounded), or reject
it with a reason and a retry hint, by priority class; under overload, lower classes first (their
predicted latency, and a bound on requests in flight shared out by class). Pure: the core calls
`decide` at submit and `forget` when a request ends."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from heddle.scheduler.admission_settings import class_limit
from heddle.scheduler.budget import critical_path_s
from heddle.scheduler.power import PowerController
from heddle.scheduler.state import Request, RunState
from heddle.scheduler.str_enum import StrEnum

if TYPE_CHECKING:
    from heddle.scheduler.policies import CoreView

__all__ = ["ACCEPT", "QUEUE", "REJECT", "REJECT_REASONS", "Action", "Admission", "Decision"]


class Action(StrEnum):
    """What admission does with a request: run it, hold it (admitted, while its class is frozen), refuse it."""

    ACCEPT = "accept"
    QUEUE = "queue"
    REJECT = "reject"


ACCEPT, QUEUE, REJECT = Action.ACCEPT, Action.QUEUE, Action.REJECT
# power: the controller refuses the class, or the request would push the box over budget;
# queue_full: too many requests wait frozen already, or its class's share of the in-flight bound
# is taken; overload: its deadline cannot be met at the current load (a retry later may);
# deadline: not even on an idle box (no retry helps).
REJECT_REASONS = ("power", "queue_full", "overload", "deadline")


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str = ""  # one of REJECT_REASONS when rejected
    retry_after_s: float | None = None
    predicted_s: float | None = None  # latency at current load, when it was predicted
    added_power_w: float = 0.0  # average power the request adds on devices idle now
    message: str = ""


class Admission:
    """Decides at submit; counts admitted requests per class until they end.

    The top class (priority >= top_priority) is rejected only when its deadline cannot be met
    even on an idle box, or when `max_in_flight` requests are in flight (every lower class is
    refused well before: class p of top may fill p/top of the bound). check_latency=False keeps
    only the power rules and the bound (what `[admission] enabled = false` or `[power]
    admission = false` leaves); max_in_flight=None: no bound.
    """

    def __init__(self, controller: PowerController | None, top_priority: int, queue_bound: int = 64,
                 check_latency: bool = True, max_in_flight: int | None = None) -> None:
        self.controller = controller
        self.top = top_priority
        self.queue_bound = queue_bound
        self.check_latency = check_latency
        self.max_in_flight = max_in_flight
        self._admitted: dict[str, int] = {}  # request id -> class, until the request ends
        self._pipeline_of: dict[str, str] = {}  # request id -> pipeline, until the request ends
        self._pipeline_in_flight: dict[str, int] = {}  # admitted requests per pipeline

    def decide(self, request: Request, view: CoreView, now: float) -> Decision:
        """The verdict for a request about to be submitted; an admitted one is counted."""
        decision = self._decide(request, view, now)
        if decision.action != REJECT:
            self._admitted[request.id] = min(request.priority, self.top)
            name = self._pipeline_of[request.id] = request.pipeline.name
            self._pipeline_in_flight[name] = self._pipeline_in_flight.get(name, 0) + 1
        return decision

    def forget(self, request_id: str) -> None:
        """The request ended (the core calls this from its one way to finish a request)."""
        if self._admitted.pop(request_id, None) is None:
            return
        name = self._pipeline_of.pop(request_id)
        left = self._pipeline_in_flight[name] - 1
        if left:
            self._pipeline_in_flight[name] = left
        else:
            del self._pipeline_in_flight[name]

    def _probe(self, request: Request) -> bool:
        """Nothing of its pipeline is in flight: admit it whatever the estimates say. A refused
        request never runs, so a run-time estimate inflated by one slow run (a stall, a GC pause:
        one 0.3 s run puts a 5 ms stage's estimate at 0.3 s) would keep its pipeline refused for
        good; one request at a time goes through, runs, and corrects it."""
        return request.pipeline.name not in self._pipeline_in_flight

    @property
    def in_flight(self) -> int:
        """Admitted requests that have not ended: what the in-flight bound counts."""
        return len(self._admitted)

    def waiting_frozen(self) -> int:
        """Admitted requests of classes frozen somewhere: the queue the bound applies to."""
        ctl = self.controller
        if ctl is None or not ctl.freezing:
            return 0
        return sum(ctl.frozen_anywhere(c) for c in self._admitted.values())

    def _decide(self, request: Request, view: CoreView, now: float) -> Decision:
        cls = min(request.priority, self.top)
        left_s = None if request.deadline_s is None else request.deadline_s - now
        if self.check_latency and left_s is not None:
            best_s = critical_path_s(request.pipeline, lambda s: _fastest_s(view, request.pipeline.stage(s).model))
            if best_s > left_s and not self._probe(request):
                return Decision(REJECT, "deadline", None, best_s, message=(
                    f"deadline {left_s * 1e3:.1f} ms is shorter than the pipeline's best-case latency "
                    f"{best_s * 1e3:.1f} ms on an idle box"))
        if self.max_in_flight is not None:
            limit = class_limit(self.max_in_flight, cls, self.top)
            if self.in_flight >= limit:
                return self._over_bound(request, view, now, cls, limit)
        if cls >= self.top:
            return Decision(ACCEPT)
        ctl = self.controller
        if ctl is not None and ctl.refuses(cls):
            return Decision(REJECT, "power", ctl.retry_after_s(cls), message=(
                f"power budget: new requests of priority <= {ctl.refuse} are refused "
                f"(box {ctl.smoothed_w or 0.0:.2f} W, budget {ctl.budget_w or 0.0:g} W)"))
        frozen = ctl is not None and ctl.frozen_anywhere(cls)
        predicted_s = None
        if self.check_latency and left_s is not None:
            # Devices where its class is frozen do not count: it would wait there for power.
            skip = {d for d in ctl.devices if ctl.freeze_max(d) >= cls} if frozen and ctl is not None else set()
            predicted_s = predicted_latency_s(request, view, now, skip)
            late = self._late(request, cls, left_s, predicted_s, skip)
            if late is not None:
                return late
        if frozen and ctl is not None:
            return self._frozen_class(request, view, cls, ctl)
        return Decision(ACCEPT, predicted_s=predicted_s)

    def _late(self, request: Request, cls: int, left_s: float, predicted_s: float,
              skip: Collection[str]) -> Decision | None:
        """The refusal of a lower-class request predicted to miss its deadline, if it is."""
        if math.isinf(predicted_s) and skip:
            assert self.controller is not None  # devices are skipped for frozen classes only
            return Decision(REJECT, "power", self.controller.retry_after_s(cls), message=(
                f"power budget: priority {cls} is frozen on every device that could run it "
                f"and its deadline is {left_s * 1e3:.1f} ms away"))
        # inf unfrozen: no healthy device can run a stage; the core answers UNAVAILABLE.
        if math.isfinite(predicted_s) and predicted_s > left_s and not self._probe(request):
            return Decision(REJECT, "overload", predicted_s - left_s, predicted_s, message=(
                f"predicted latency {predicted_s * 1e3:.1f} ms at the current load exceeds the "
                f"deadline {left_s * 1e3:.1f} ms"))
        return None

    def _over_bound(self, request: Request, view: CoreView, now: float, cls: int, limit: int) -> Decision:
        """Its class's share of the in-flight bound is taken. The hint: its predicted latency at
        this load (about when the work ahead of it has drained), never under its best case."""
        predicted_s = predicted_latency_s(request, view, now)
        best_s = critical_path_s(request.pipeline, lambda s: _fastest_s(view, request.pipeline.stage(s).model))
        retry_s = max(predicted_s, best_s) if math.isfinite(predicted_s) else best_s
        return Decision(REJECT, "queue_full", retry_s, predicted_s, message=(
            f"overloaded: {self.in_flight} requests in flight; priority {cls} is admitted while "
            f"fewer than {limit} are (max_in_flight {self.max_in_flight})"))

    def _frozen_class(self, request: Request, view: CoreView, cls: int, ctl: PowerController) -> Decision:
        """Its class is held somewhere: queue it (it runs where and when power allows) unless
        it would wake idle devices past the budget or the frozen queue is full."""
        added_w = added_power_w(request, view, ctl)
        if ctl.budget_w is not None and ctl.smoothed_w is not None and ctl.smoothed_w + added_w > ctl.budget_w:
            return Decision(REJECT, "power", ctl.retry_after_s(cls), added_power_w=added_w, message=(
                f"power budget: it would add {added_w:.2f} W to {ctl.smoothed_w:.2f} W "
                f"(budget {ctl.budget_w:g} W) while priority <= {cls} is frozen"))
        if self.waiting_frozen() >= self.queue_bound:
            return Decision(REJECT, "queue_full", ctl.retry_after_s(cls), added_power_w=added_w, message=(
                f"{self.queue_bound} requests already wait for power (priority <= {cls} is frozen)"))
        return Decision(QUEUE, added_power_w=added_w)


def _fastest_s(view: CoreView, model: str) -> float:
    """The model's run time on its fastest healthy device at DVFS level 0: "at all" means at
    full speed, not at the levels the power controller holds now (it could give them back)."""
    profiles = getattr(view, "profiles", None)
    if profiles is None:
        return view.best_estimate_s(model)
    return min((profiles.estimate(model, view.devices[d], 0).mean_s for d in view.eligible_devices(model)),
               default=0.0)


def _wait_s(view: CoreView, device: str, priority: int, now: float) -> float:
    """Predicted wait for a free slot of `device` behind running work and queued READY work of
    equal or higher priority (lower priority work yields to it; frozen work does not run)."""
    ahead = [r for r in view.queued(device) if r.state is RunState.READY and r.request.priority >= priority]
    if view.free_slots(device) > len(ahead):
        return 0.0
    running_s = sum(view.left_s(r, now) for r in view.running(device))
    queued_s = sum(view.queued_work_s(device, ahead))  # runs of a batching model share passes
    return (running_s + queued_s) / view.devices[device].slots


def predicted_latency_s(request: Request, view: CoreView, now: float, skip: Collection[str] = ()) -> float:
    """Critical path with each stage on the device where it would finish first at this load,
    devices in `skip` left out (inf when a stage has no other). A device's wait is counted once
    (later stages find its backlog drained: a mild optimism)."""
    waits: dict[str, float] = {}

    def stage_s(stage: str) -> float:
        model = request.pipeline.stage(stage).model
        best = math.inf
        for device in view.eligible_devices(model):
            if device in skip:
                continue
            if device not in waits:
                waits[device] = _wait_s(view, device, request.priority, now)
            best = min(best, waits[device] + view.estimate_s(model, device))
        return best

    return critical_path_s(request.pipeline, stage_s)


def added_power_w(request: Request, view: CoreView, ctl: PowerController) -> float:
    """Average power the request adds over the run time of its stages: only stages whose
    fastest device sits idle now count (a busy device stays at its busy power; work queues)."""
    energy_j, total_s = 0.0, 0.0
    for stage in request.pipeline.stages:
        devices = view.eligible_devices(stage.model)
        if not devices:
            continue
        device = min(devices, key=lambda d: view.estimate_s(stage.model, d))
        run_s = view.estimate_s(stage.model, device)
        total_s += run_s
        model = ctl.models.get(device)
        idle = not view.queued(device) and view.free_slots(device) == view.devices[device].slots
        if model is not None and idle:
            energy_j += (model.busy_w(ctl.levels[device]) - model.idle_w) * run_s
    return energy_j / total_s if total_s > 0 else 0.0
