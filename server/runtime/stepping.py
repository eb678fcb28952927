"""When the runtime steps the scheduler core: once per event-loop turn after any events changed
it (a dirty flag, so completions that arrive together share a step and no handler steps from
inside another), at once when a caller must see the plan carried out, and at the earliest
queued deadline, when no other event may come."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from heddle.server.observe.logs import get_logger

__all__ = ["Stepper"]

log = get_logger("heddle.runtime")


class Stepper:
    """Calls `step` (plan and carry it out) when due; `loop_of` gives the running loop, or None
    before the runtime has one."""

    def __init__(self, step: Callable[[], None], next_deadline_s: Callable[[], float | None],
                 clock: Callable[[], float], loop_of: Callable[[], asyncio.AbstractEventLoop | None]) -> None:
        self._step = step
        self._next_deadline_s = next_deadline_s
        self._clock = clock
        self._loop_of = loop_of
        self._dirty = False  # an event changed the core since the last step
        self._timer: asyncio.TimerHandle | None = None
        self._timer_s: float | None = None

    def mark_dirty(self) -> None:
        """An event changed the core: step once, at the end of this event-loop turn."""
        if self._dirty:
            return
        self._dirty = True
        loop = self._loop_of()
        if loop is None:  # no loop yet (nothing runs): no turn to wait for
            self.step_now()
            return
        loop.call_soon(self._step_once)

    def step_alone(self) -> None:
        """The fast path: an arrival with nothing else in flight has no one to share a step with
        (nor a device to wait for), so it is planned and started now, not next turn; a failing
        step is logged as a turn's would be."""
        self._guarded_step()

    def step_now(self) -> None:
        """Step at once (the turn's pending step, if any, then has nothing left to do)."""
        self._dirty = False
        self._step()
        self._arm_deadline_timer()

    def _step_once(self) -> None:
        if self._dirty:  # else a step ran already since (step_now)
            self._guarded_step()

    def _guarded_step(self) -> None:
        try:
            self.step_now()
        except Exception:  # a bug in a step must not stop the next ones
            log.exception("internal error in a scheduling step")

    def _arm_deadline_timer(self) -> None:
        """Wake at the earliest queued deadline: without an event then, an expired request would
        sit in its queue until the next arrival or completion."""
        loop, next_s = self._loop_of(), self._next_deadline_s()
        if loop is None or next_s is None or (self._timer_s is not None and self._timer_s <= next_s):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_s = next_s
        self._timer = loop.call_later(max(next_s - self._clock(), 0.0), self._on_timer)

    def _on_timer(self) -> None:
        """A deadline fell due: step now, not next turn. Its request ends by its deadline before
        other timers due in the same turn act on it (a thread stage's overrun watch, set to the
        same instant, would end it with its own message)."""
        self._timer = self._timer_s = None
        self._guarded_step()
