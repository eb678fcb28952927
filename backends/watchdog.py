"""One daemon thread that calls functions when their time comes: how a blocking run is stopped at its timeout."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["WATCHDOG", "Alarm", "Watchdog"]

log = logging.getLogger("heddle.backends.watchdog")


class Alarm:
    """One armed call; cancel() it when the run ends first (calling it late must be harmless)."""

    __slots__ = ("due_s", "fn", "cancelled")

    def __init__(self, due_s: float, fn: Callable[[], None]) -> None:
        self.due_s = due_s
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Watchdog:
    """A heap of alarms served by one thread, started on first use.

    One thread for every run: a threading.Timer per run would start a thread per stage on the
    hot path. Cancelled alarms stay in the heap until due (lazy delete), so it holds at most the
    runs of the last `timeout` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Alarm]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, delay_s: float, fn: Callable[[], None]) -> Alarm:
        """Call fn (on the watchdog thread) delay_s from now, unless cancelled first."""
        alarm = Alarm(self._clock() + delay_s, fn)
        with self._cond:
            heapq.heappush(self._heap, (alarm.due_s, next(self._seq), alarm))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="heddle-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0][2] is alarm:  # earlier than what the thread sleeps towards
                self._cond.notify()
        return alarm

    def pending(self) -> int:
        """Alarms neither fired nor cancelled (for tests and leak checks)."""
        with self._cond:
            return sum(not a.cancelled for _, _, a in self._heap)

    def _next_due(self) -> Alarm:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait_s = self._heap[0][0] - self._clock()
                if wait_s <= 0:
                    return heapq.heappop(self._heap)[2]
                self._cond.wait(wait_s)

    def _serve(self) -> None:
        while True:
            alarm = self._next_due()
            if alarm.cancelled:  # cancelled between the pop and now
                continue
            try:
                alarm.fn()
            except Exception:  # one failing alarm must not stop every later one
                log.exception("watchdog alarm failed")


# Shared by every executor of the process: one thread in all.
WATCHDOG = Watchdog()
