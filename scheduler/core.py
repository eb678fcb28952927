"""The scheduler core: a step function over request state with an injected clock and no I/O."""

from __future__ import annotations

from typing import Iterable, Mapping

from heddle.scheduler.plan import CoreStats, Dispatch, Finished, Plan
from heddle.scheduler.policies import Policy, make_policy
from heddle.scheduler.specs import DeviceSpec, ModelSpec
from heddle.scheduler.state import Outcome, Request, RunState, StageRun

__all__ = ["Core"]


class Core:
    """Holds requests and per-device ready queues; `schedule(now)` returns what to run.

    Events (submit, on_stage_done, cancel, set_device_health) change state and buffer
    request completions; `schedule` drains them into the plan together with dispatches.
    """

    def __init__(
        self,
        devices: Iterable[DeviceSpec],
        models: Mapping[str, ModelSpec],
        policy: Policy | str = "fcfs",
    ) -> None:
        self.devices = {d.id: d for d in devices}
        self.models = dict(models)
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self._queues: dict[str, list[StageRun]] = {d: [] for d in self.devices}
        self._running: dict[str, set[tuple[str, str]]] = {d: set() for d in self.devices}
        self._healthy = {d: True for d in self.devices}
        self._requests: dict[str, Request] = {}
        self._finished: list[Finished] = []
        # Running stages of requests that already ended, so their slots are still released.
        self._orphans: dict[tuple[str, str], Request] = {}
        self._seq = 0

    # ---- events -------------------------------------------------------------------------
    def submit(self, request: Request, now: float) -> None:
        """Accept a request: its source stages become ready at once."""
        if request.id in self._requests:
            raise ValueError(f"request id {request.id!r} is already in flight")
        self._seq += 1
        request.seq = self._seq
        request.runs = {
            s.name: StageRun(request, s.name, s.model, i, len(request.pipeline.depends_on[s.name]))
            for i, s in enumerate(request.pipeline.stages)
        }
        self._requests[request.id] = request
        for run in request.runs.values():
            if run.deps_left == 0 and not request.finished:
                self._make_ready(run, now)

    def on_stage_done(self, request_id: str, stage: str, now: float, error: str = "") -> None:
        """A dispatched stage finished (error set if it failed); free its slot, wake dependents."""
        orphan = self._orphans.pop((request_id, stage), None)
        request = self._requests.get(request_id) or orphan
        if request is None:
            raise KeyError(f"no running stage {stage!r} of request {request_id!r}")
        run = request.runs[stage]
        if run.state is not RunState.RUNNING:
            raise ValueError(f"stage {stage!r} of {request_id!r} is {run.state.name}, not RUNNING")
        self._running[run.device].discard(run.key)
        run.finished_s = now
        run.state = RunState.FAILED if error else RunState.DONE
        run.error = error
        if request.finished:
            return  # cancelled or expired while this stage ran: its result is not wanted
        if error:
            self._finish(request, Outcome.FAILED, f"stage {stage!r}: {error}", now)
            return
        for name in request.pipeline.dependents[stage]:
            nxt = request.runs[name]
            nxt.deps_left -= 1
            if nxt.deps_left == 0:
                self._make_ready(nxt, now)
        if all(r.state is RunState.DONE for r in request.runs.values()):
            self._finish(request, Outcome.OK, "", now)

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
        if not healthy:
            stranded, self._queues[device] = self._queues[device], []
            for run in stranded:
                self._make_ready(run, now)

    def set_policy(self, policy: Policy | str) -> None:
        self.policy = make_policy(policy) if isinstance(policy, str) else policy

    # ---- the step -----------------------------------------------------------------------
    def schedule(self, now: float) -> Plan:
        """Expire overdue requests, then fill every free device slot by policy order."""
        self._expire(now)
        dispatches: list[Dispatch] = []
        for device_id in self.devices:
            while self._healthy[device_id] and self._free_slots(device_id) > 0:
                run = self._pick(device_id, now)
                if run is None:
                    break
                dispatches.append(self._start(run, device_id, now))
        finished, self._finished = tuple(self._finished), []
        self._check_invariants()
        return Plan(tuple(dispatches), finished)

    def request(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def forget(self, request_id: str) -> None:
        """Drop a finished request once the caller has read its timings."""
        request = self._requests.get(request_id)
        if request is not None and request.finished:
            del self._requests[request_id]

    def healthy_devices(self) -> list[str]:
        return [d for d, ok in self._healthy.items() if ok]

    def stats(self) -> CoreStats:
        return CoreStats(
            queued={d: len(q) for d, q in self._queues.items()},
            running={d: len(r) for d, r in self._running.items()},
            active_requests=sum(1 for r in self._requests.values() if not r.finished),
        )

    # ---- internals ----------------------------------------------------------------------
    def eligible_devices(self, model: str) -> list[str]:
        spec = self.models[model]
        allowed = spec.devices or [d for d, s in self.devices.items() if s.backend == spec.backend]
        return [d for d in allowed if d in self.devices and self._healthy[d]]

    def _make_ready(self, run: StageRun, now: float) -> None:
        """Queue a run on its least-loaded eligible device (ties: config order)."""
        devices = self.eligible_devices(run.model)
        if not devices:
            self._finish(run.request, Outcome.UNAVAILABLE,
                         f"no healthy device can run model {run.model!r}", now)
            return
        device = min(devices, key=lambda d: self._load(d))
        if run.ready_s is None:
            run.ready_s = now
        run.state = RunState.READY
        run.device = device
        self._queues[device].append(run)

    def _load(self, device: str) -> float:
        return (len(self._queues[device]) + len(self._running[device])) / self.devices[device].slots

    def _free_slots(self, device: str) -> int:
        return self.devices[device].slots - len(self._running[device])

    def _pick(self, device: str, now: float) -> StageRun | None:
        """Best run of this device's queue; when it is empty, steal the best one it can run."""
        key = self.policy.key
        own = self._queues[device]
        if own:
            return min(own, key=lambda r: key(r, now))
        stealable = [
            r for other, q in self._queues.items() if other != device for r in q
            if device in self.eligible_devices(r.model)
        ]
        return min(stealable, key=lambda r: key(r, now)) if stealable else None

    def _start(self, run: StageRun, device: str, now: float) -> Dispatch:
        self._queues[run.device].remove(run)
        run.device = device
        run.state = RunState.RUNNING
        run.started_s = now
        self._running[device].add(run.key)
        return Dispatch(run.request.id, run.stage, run.model, device)

    def _expire(self, now: float) -> None:
        """Requests past their deadline with work not yet started are shed, not run late."""
        for request in list(self._requests.values()):
            if request.finished or request.deadline_s is None or now < request.deadline_s:
                continue
            if any(r.state < RunState.RUNNING for r in request.runs.values()):
                self._finish(request, Outcome.DEADLINE_EXCEEDED,
                             "deadline passed before all stages could start", now)

    def _finish(self, request: Request, outcome: Outcome, error: str, now: float) -> None:
        """The one way a request ends: drop its queued runs, keep running ones accounted."""
        request.outcome = outcome
        request.error = error
        request.finished_s = now
        for run in request.runs.values():
            if run.state is RunState.READY:
                self._queues[run.device].remove(run)
            if run.state < RunState.RUNNING:
                run.state = RunState.CANCELLED
            elif run.state is RunState.RUNNING:
                self._orphans[run.key] = request
        self._finished.append(Finished(request.id, outcome, error))

    def _check_invariants(self) -> None:
        for device, running in self._running.items():
            assert len(running) <= self.devices[device].slots, f"{device} over its slots"
