"""Stage timeouts: each run's limit, and the runtime's answer to a thread stage that overruns it.

A run's limit is the smaller of its model's `timeout_ms` and the time left to its request's
deadline when it is dispatched; with neither there is none (a cap would fail long legitimate
runs, and an operator who wants one sets timeout_ms). ONNX Runtime, Triton and process-isolated
python stages stop their own runs at that limit (BackendTimeout). A python stage in a thread
cannot be stopped: at its limit its request ends DEADLINE_EXCEEDED, and the thread runs on
holding its slot until it returns (heddle_stage_threads_overrunning counts such threads). The
slot is kept rather than handed to new work: the device's pool has one thread per slot, so new
work would only queue unseen behind the stuck one, and a thread per overrun would let a hung
operator grow the process without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from heddle.backends.python import isolation_of
from heddle.scheduler import Dispatch
from heddle.server.observe.logs import get_logger

if TYPE_CHECKING:
    from heddle.scheduler.specs import ModelSpec
    from heddle.server.runtime.metrics import Metrics

__all__ = ["OverrunWatch", "limit_cause", "stage_timeout_s", "stops_itself"]

log = get_logger("heddle.runtime")


class _Done(Protocol):
    """A run's future, as the watch reads it (a worker pool's or the loop's)."""

    def done(self) -> bool: ...


def stage_timeout_s(model: ModelSpec, deadline_s: float | None, now: float) -> float | None:
    """The limit of a run dispatched now: timeout_ms or the time left to the deadline, the smaller."""
    limits = [] if deadline_s is None else [max(deadline_s - now, 1e-3)]
    timeout_ms = model.options.get("timeout_ms")
    if timeout_ms is not None:
        limits.append(float(timeout_ms) / 1e3)
    return min(limits, default=None)


def limit_cause(model: ModelSpec, timeout_s: float) -> str:
    """Which bound set a run's limit, for the client's message: its model's timeout_ms, or what was
    left of the request's deadline (then the client must read that its deadline was too short)."""
    timeout_ms = model.options.get("timeout_ms")
    if timeout_ms is not None and float(timeout_ms) / 1e3 == timeout_s:
        return f"model {model.name}'s timeout_ms"
    return "the time left to the request's deadline"


def stops_itself(model: ModelSpec) -> bool:
    """Whether the model's backend stops a run at its limit; only a thread-run python stage cannot."""
    return model.backend != "python" or isolation_of(model) == "process"


class OverrunWatch:
    """Ends the request of a thread stage still running at its limit (end_request does that with
    DEADLINE_EXCEEDED), and counts the thread as overrunning until it returns."""

    def __init__(self, end_request: Callable[[str, str], None], metrics: Metrics | None = None) -> None:
        self._end_request = end_request
        self._metrics = metrics
        self._overrunning: set[tuple[str, str]] = set()
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def watch(self, d: Dispatch, fut: _Done, timeout_s: float, cause: str) -> None:
        """Call once the run is submitted: a timer on the loop, cancelled when the run's end
        reaches the loop first (returned). cause: which bound set timeout_s (limit_cause), named
        in the request's error."""
        self._timers[(d.request_id, d.stage)] = asyncio.get_running_loop().call_later(
            timeout_s, self._expired, d, fut, timeout_s, cause)

    def returned(self, d: Dispatch) -> None:
        """A run ended (call for every run): an overrunning thread has let go of its slot."""
        timer = self._timers.pop((d.request_id, d.stage), None)
        if timer is not None:
            timer.cancel()
        if (d.request_id, d.stage) in self._overrunning:
            self._overrunning.discard((d.request_id, d.stage))
            if self._metrics is not None:
                self._metrics.stage_overrun_ended(d.device)
            log.info("overrunning stage thread returned", request_id=d.request_id, stage=d.stage,
                     device=d.device)

    def _expired(self, d: Dispatch, fut: _Done, timeout_s: float, cause: str) -> None:
        self._timers.pop((d.request_id, d.stage), None)
        if fut.done():  # finished meanwhile; its completion is on its way to the loop
            return
        self._overrunning.add((d.request_id, d.stage))
        if self._metrics is not None:
            self._metrics.observe_stage_timeout(d.model, d.device)
            self._metrics.stage_overrun_started(d.device)
        error = (f"stage {d.stage!r} (model {d.model}) ran past its limit of {timeout_s * 1e3:.0f} ms "
                 f"({cause}); "
                 f"its thread cannot be stopped and keeps its slot on device {d.device} until it returns")
        log.warning("stage thread overran its timeout", request_id=d.request_id, stage=d.stage,
                    model=d.model, device=d.device, timeout_ms=round(timeout_s * 1e3))
        self._end_request(d.request_id, error)
