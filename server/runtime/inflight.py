"""The server-wide budget of in-flight request memory, and giving freed memory back to the OS.

Bytes are taken when a request is admitted and given back when it ends, like power on dispatch
(STYLE.md rule 2). The top priority class may use the whole budget; lower classes stop short of it
by a reserve, so urgent work still gets in while big low-priority requests fill the rest.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from heddle.server.observe.logs import get_logger

__all__ = ["InflightBudget", "Reservation", "release_free_memory"]

log = get_logger("heddle.memory")
# How much the typical hold time (the retry hint) moves toward each new hold.
_HOLD_EWMA = 0.2
_FIRST_HINT_S = 0.1


@dataclass(slots=True, eq=False)
class Reservation:
    """Bytes one admitted request holds; release() gives them back (once, however often called).
    trim: a big request, after which freed memory should go back to the OS."""

    budget: InflightBudget
    nbytes: int
    taken_s: float
    trim: bool = False
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget.give_back(self)


class InflightBudget:
    """capacity_bytes for every in-flight request together; lower classes may use
    (1 - top_reserve_fraction) of it. Thread-safe: both front doors share it."""

    def __init__(self, capacity_bytes: int, top_reserve_fraction: float, top_priority: int,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[int], None] | None = None,
                 on_release: Callable[[Reservation], None] | None = None) -> None:
        self.capacity_bytes = capacity_bytes
        self.lower_capacity_bytes = int(capacity_bytes * (1.0 - top_reserve_fraction))
        self.top_priority = top_priority
        self._clock = clock
        self._on_change = on_change
        self._on_release = on_release
        self._lock = threading.Lock()
        self.used_bytes = 0
        self._hold_s = _FIRST_HINT_S

    def capacity_for(self, priority: int) -> int:
        return self.capacity_bytes if priority >= self.top_priority else self.lower_capacity_bytes

    def try_take(self, nbytes: int, priority: int) -> Reservation | None:
        """A reservation of nbytes, or None when it would take the class past its capacity."""
        with self._lock:
            if self.used_bytes + nbytes > self.capacity_for(priority):
                return None
            self.used_bytes += nbytes
            used = self.used_bytes
        self._changed(used)
        return Reservation(self, nbytes, self._clock())

    def give_back(self, held: Reservation) -> None:
        held_s = max(self._clock() - held.taken_s, 0.0)
        with self._lock:
            self.used_bytes -= held.nbytes
            used = self.used_bytes
            self._hold_s += _HOLD_EWMA * (held_s - self._hold_s)
        self._changed(used)
        if self._on_release is not None:
            self._on_release(held)

    def retry_after_s(self) -> float:
        """When to try again: how long admitted requests have typically held their bytes."""
        return max(self._hold_s, 0.001)

    def _changed(self, used: int) -> None:
        if self._on_change is not None:
            self._on_change(used)


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None where the C library has none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()
_trim_lock = threading.Lock()
_trim_scheduled = False  # a trim is due and has not started: a later call is covered by it


def release_free_memory(delay_s: float = 0.25) -> None:
    """Hand memory malloc keeps after a big request back to the OS, delay_s from now, off the loop.

    glibc raises its mmap threshold after freeing a large block, so later buffers up to 32 MB
    come from heaps it keeps: +200 MB stayed after a 0.5 MB text_classify batch with ONNX
    Runtime's arena off, and refused 61 MB requests left +300 MB of gRPC and protobuf buffers.
    malloc_trim returns those pages; a fixed mmap threshold would too, but cost 15-40% latency
    on every run (both measured, docs/CONFIG.md). The delay lets the request's message and
    response go first (gRPC drops them after the handler returns)."""
    global _trim_scheduled
    if _TRIM is None:
        return
    with _trim_lock:
        if _trim_scheduled:
            return
        _trim_scheduled = True
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # no loop (a synchronous caller): trim here and now
        _trim()
        return
    loop.call_later(delay_s, loop.run_in_executor, None, _trim)


def _trim() -> None:
    global _trim_scheduled
    with _trim_lock:
        _trim_scheduled = False  # from here on, memory freed later needs a trim of its own
    t0 = time.perf_counter()
    assert _TRIM is not None  # release_free_memory schedules a trim only where there is one
    _TRIM()
    log.debug("malloc_trim", took_ms=round((time.perf_counter() - t0) * 1e3, 2))
