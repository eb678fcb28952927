"""What may be read of the core without changing it: estimates, eligibility, queues and load
(what policies see), and the queries the runtime and the simulator make (stats, deadlines)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from heddle.scheduler.deadlines import DeadlineHeap
from heddle.scheduler.fanout_stats import FanoutStats
from heddle.scheduler.plan import CoreStats, Finished
from heddle.scheduler.policies import Policy
from heddle.scheduler.profiles import Profiles, compatible
from heddle.scheduler.queues import QueueIndex
from heddle.scheduler.specs import BatchOptions, DeviceSpec, ModelSpec
from heddle.scheduler.state import Request, RunState, StageRun, device_of, started_s_of

__all__ = ["CoreReads"]


class CoreReads:
    """The read-only half of Core, which implements policies.CoreView with it. Kept apart so
    the event/step half stays readable; it relies on the state Core.__init__ sets up."""

    devices: dict[str, DeviceSpec]
    models: dict[str, ModelSpec]
    policy: Policy
    profiles: Profiles
    _queues: dict[str, list[StageRun]]
    _running: dict[str, dict[tuple[str, str], StageRun]]
    _healthy: dict[str, bool]
    _levels: dict[str, int]
    _compatible: dict[str, list[str]]
    _eligible: dict[str, list[str]]  # _compatible less unhealthy devices; dropped with either
    _best_s: dict[str, float]
    _requests: dict[str, Request]
    _num_active: int
    _num_frozen: int
    _deadlines: DeadlineHeap
    _index: QueueIndex
    _overdue: dict[str, Request]
    _orphans: dict[tuple[str, str], Request]
    _orphan_ids: dict[str, int]
    _riders: dict[tuple[str, str], StageRun]
    _batch_wake_s: dict[str, float]
    _batching: dict[str, BatchOptions]
    _device_versions: dict[str, int]
    estimates_version: int
    _finished: list[Finished]
    fanout: FanoutStats  # elements per map stage, run rates of conditional stages, learned online

    def eligible_devices(self, model: str) -> list[str]:
        """Healthy devices allowed to run `model` and able to run all of its op types. The list is
        kept (asked several times a step by twill) until a device's health or a model changes:
        read it, do not change it."""
        eligible = self._eligible.get(model)
        if eligible is not None:
            return eligible
        allowed = self._compatible.get(model)
        if allowed is None:
            spec = self.models[model]
            named = spec.devices or [d for d, s in self.devices.items() if s.backend == spec.backend]
            ops = self.profiles.op_types(model)
            allowed = self._compatible[model] = [
                d for d in named if d in self.devices and compatible(ops, self.devices[d])]
        eligible = self._eligible[model] = [d for d in allowed if self._healthy[d]]
        return eligible

    def estimate_s(self, model: str, device: str, batch: int = 1) -> float:
        """A pass of `batch` rows of the model on the device at its level (typical time)."""
        return self.profiles.estimate(model, self.devices[device], self._levels[device], batch).mean_s

    def tail_s(self, model: str, device: str) -> float:
        return self.profiles.estimate(model, self.devices[device], self._levels[device]).tail_s

    def nominal_s(self, model: str, device: str) -> float:
        """As estimate_s at the device's fastest DVFS level: what kind of hardware it is,
        whatever the power controller has made of it for now."""
        return self.profiles.estimate(model, self.devices[device], 0).mean_s

    def left_s(self, run: StageRun, now: float) -> float:
        """What is left of a running run's pass: a batch's first run holds the slot for the pass of
        all its rows (its riders hold none), so it is the estimate for that many rows."""
        device = device_of(run)
        return max(0.0, started_s_of(run) + self.estimate_s(run.model, device, max(run.pass_rows, 1)) - now)

    def queued_work_s(self, device: str, runs: Iterable[StageRun]) -> list[float]:
        """Each queued run's share of the device time the runs would take, in their order. A model
        that batches (max_batch > 1) runs its waiting rows in passes of up to max_batch, so a run
        costs its rows' share of such a pass (time(b) / b per row, b its rows waiting there up to
        max_batch: a mild optimism, as if they packed fully); any other run costs a pass of its own."""
        runs = list(runs)
        rows: dict[str, int] = {}
        for r in runs:
            if r.model in self._batching:
                rows[r.model] = rows.get(r.model, 0) + max(r.rows, 1)
        share = {m: self.estimate_s(m, device, b) / b
                 for m, n in rows.items() for b in [min(n, self._batching[m].max_batch)]}
        for r in runs:  # a pass of its own: one estimate per model (twill's forecast asks for deep queues)
            if r.model not in share and r.model not in self._batching:
                share[r.model] = self.estimate_s(r.model, device)
        return [share[r.model] * max(r.rows, 1) if r.model in self._batching else share[r.model] for r in runs]

    def power_w(self, model: str, device: str) -> float:
        return self.profiles.power_w(model, self.devices[device], self._levels[device])

    def best_estimate_s(self, model: str) -> float:
        """The run's latency on its fastest eligible device (0 if none can run it)."""
        best = self._best_s.get(model)
        if best is None:
            best = self._best_s[model] = min(
                (self.estimate_s(model, d) for d in self.eligible_devices(model)), default=0.0)
        return best

    def queued(self, device: str) -> list[StageRun]:
        """READY and FROZEN runs queued for the device (read only)."""
        return self._queues[device]

    def running(self, device: str) -> Iterable[StageRun]:
        return self._running[device].values()

    def free_slots(self, device: str) -> int:
        return self.devices[device].slots - len(self._running[device])

    def load(self, device: str) -> float:
        return (len(self._queues[device]) + len(self._running[device])) / self.devices[device].slots

    def queue_version(self, device: str) -> tuple[int, int]:
        """Changes whenever what is derived from the device's queue may have: its queued or
        running runs or their states, or any estimate or device health (which rank them)."""
        return (self.estimates_version, self._device_versions[device])

    def queue_groups(self, device: str) -> Mapping[Any, Any]:
        """The device's queued runs in the groups a kinetic policy asked for (scheduler/queues.py):
        read only; empty for other policies."""
        return self._index.groups(device) if self._index.kinetic else {}

    def batches(self, model: str) -> bool:
        return model in self._batching

    def level(self, device: str) -> int:
        return self._levels[device]

    def active_requests(self) -> Iterable[Request]:
        return (r for r in self._requests.values() if not r.finished)

    def aged(self, run: StageRun, now: float) -> bool:
        """Has the run waited its aging bound? Then it outranks everything not aged."""
        bound = self.policy.max_wait_s
        return bound is not None and run.ready_s is not None and now - run.ready_s >= bound

    # ---- queries for the runtime and the simulator ----------------------------------------
    def next_deadline_s(self) -> float | None:
        """When the driver must step again even if nothing else happens: the earliest deadline of
        a request with work not yet started (so it is shed on time), or the moment a forming
        batch stops waiting for more members (so it starts on time), whichever comes first."""
        # Every unfinished request with a deadline is in the heap, or in _overdue once it has
        # passed: the heap's walk stops at its first request with work to start (only requests
        # whose every remaining stage runs come before it), where a scan of every request each
        # step made the step quadratic under deep queues.
        first = self._deadlines.first(_unstarted)
        if not self._overdue and not self._batch_wake_s:  # the usual step: the heap says it all
            return first
        deadlines = [r.deadline_s for r in self._overdue.values() if r.deadline_s is not None and _unstarted(r)]
        if first is not None:
            deadlines.append(first)
        return min(deadlines + list(self._batch_wake_s.values()), default=None)

    def next_batch_wake_s(self) -> float | None:
        """The moment a forming batch stops waiting (None: no device waits for one)."""
        return min(self._batch_wake_s.values(), default=None)

    def is_healthy(self, device: str) -> bool:
        return self._healthy[device]

    def request(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def healthy_devices(self) -> list[str]:
        return [d for d, ok in self._healthy.items() if ok]

    def stats(self) -> CoreStats:
        queues = self._queues
        if self._num_frozen:
            frozen = {d: sum(r.state is RunState.FROZEN for r in q) for d, q in queues.items()}
        else:  # the usual case, read at every step (the runtime's gauges): no queue walked
            frozen = dict.fromkeys(queues, 0)
        return CoreStats({d: len(q) for d, q in queues.items()}, {d: len(r) for d, r in self._running.items()},
                         self._num_active, frozen, dict(self._levels))

    def footprint(self) -> dict[str, int]:
        """How many entries each per-request structure holds: all 0 once every request has ended,
        been reported (schedule) and read (forget), and its running stages have returned. A
        finished request must leave at once, whatever its deadline: this is how tests check."""
        return {
            "requests": len(self._requests), "deadlines": len(self._deadlines),
            "deadline_entries": self._deadlines.num_entries, "overdue": len(self._overdue),
            "orphans": len(self._orphans), "orphan_ids": len(self._orphan_ids), "riders": len(self._riders),
            "queued": sum(len(q) for q in self._queues.values()),
            "running": sum(len(r) for r in self._running.values()), "unreported": len(self._finished),
            "frozen": self._num_frozen,
        }


def _unstarted(request: Request) -> bool:
    """Has the request a stage not started yet (one a deadline would shed)?"""
    for run in request.runs.values():  # noqa: SIM110 (a loop, not any(generator): asked at every step)
        if run.state < _RUNNING:
            return True
    return False


_RUNNING = RunState.RUNNING
