"""Core's control events: what the device watch, the operator and the client send besides a
request's own runs (a device's health, a stage lost with its device, a reload's models, a new
policy, a cancellation). Kept apart so core.py reads as the path of a request (submit, a run's
end or step, queueing) on its own; it relies on the state Core.__init__ sets up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from heddle.scheduler.core_step import CoreStep
from heddle.scheduler.policies import Policy, make_policy
from heddle.scheduler.specs import ModelSpec
from heddle.scheduler.state import Outcome, RunState

if TYPE_CHECKING:
    from heddle.scheduler.state import Request, StageRun

__all__ = ["CoreControlEvents"]


class CoreControlEvents(CoreStep):
    """Health, a lost stage's retry, reload, policy and cancel: Core's events off a request's path."""

    if TYPE_CHECKING:  # Core's own (core.py), which these events share with the request path
        def _make_ready(self, run: StageRun, now: float) -> None: ...
        def _free_slot(self, run: StageRun) -> None: ...
        def _running_run(self, request_id: str, stage: str) -> tuple[Request, StageRun]: ...

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
        self._eligible.clear()
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
        self._eligible.clear()
        self._best_s.clear()
        self.version += 1

    def set_policy(self, policy: Policy | str) -> None:
        """A new scheduling policy (the admin RPC, a reload): the queues reorder to its key."""
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self._index.reorder(self.policy, self._queues)
        self.version += 1
