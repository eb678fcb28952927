"""What policies may read of the core: estimates, eligibility, queues, load (no state changes)."""

from __future__ import annotations

from typing import Iterable

from heddle.scheduler.policies import Policy
from heddle.scheduler.profiles import Profiles, compatible
from heddle.scheduler.specs import DeviceSpec, ModelSpec
from heddle.scheduler.state import Request, StageRun

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
    _best_s: dict[str, float]
    _requests: dict[str, Request]

    def eligible_devices(self, model: str) -> list[str]:
        """Healthy devices allowed to run `model` and able to run all of its op types."""
        allowed = self._compatible.get(model)
        if allowed is None:
            spec = self.models[model]
            named = spec.devices or [d for d, s in self.devices.items() if s.backend == spec.backend]
            ops = self.profiles.op_types(model)
            allowed = self._compatible[model] = [
                d for d in named if d in self.devices and compatible(ops, self.devices[d])]
        return [d for d in allowed if self._healthy[d]]

    def estimate_s(self, model: str, device: str) -> float:
        return self.profiles.estimate(model, self.devices[device], self._levels[device]).mean_s

    def tail_s(self, model: str, device: str) -> float:
        return self.profiles.estimate(model, self.devices[device], self._levels[device]).tail_s

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

    def level(self, device: str) -> int:
        return self._levels[device]

    def active_requests(self) -> Iterable[Request]:
        return (r for r in self._requests.values() if not r.finished)

    def aged(self, run: StageRun, now: float) -> bool:
        """Has the run waited its aging bound? Then it outranks everything not aged."""
        bound = self.policy.max_wait_s
        return bound is not None and run.ready_s is not None and now - run.ready_s >= bound
