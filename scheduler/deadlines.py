"""The core's deadline index: requests by deadline, earliest first, holding only live ones."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator

from heddle.scheduler.state import Request

__all__ = ["DeadlineHeap", "usable_deadline"]


def usable_deadline(deadline_s: float | None) -> float | None:
    """A request's deadline as the core keeps it. Drivers other than the server (which refuses
    absurd deadlines) may hand any float: +inf means none, which keeps budgets free of inf - inf;
    NaN compares false with everything, so it would sit at the heap's root and stop every
    expiry, and it is refused (ValueError). Huge or negative finite deadlines are ordinary:
    never reached, or already passed (shed at the next step)."""
    if deadline_s is None or deadline_s == math.inf:
        return None
    if math.isnan(deadline_s):
        raise ValueError("deadline_s is NaN: it cannot be ordered against any time")
    return deadline_s


class DeadlineHeap:
    """Requests with a deadline, popped in deadline order once it has passed.

    A finished request must leave at once, whatever its deadline (its client-chosen id can be
    large, its deadline far away), but removing from the middle of a heap costs O(n). So the heap
    holds only `(deadline_s, seq)` and a map holds the live requests: `discard` drops the request
    from the map and leaves a stale entry that `pop_due` skips. The heap is rebuilt when stale
    entries outnumber live ones (checked after a discard and after popping), so it holds at most
    twice the live requests and empties when none is left; each pop stays O(log n), and a rebuild
    is paid for by the discards before it.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, Request] = {}  # seq -> request, until it ends or its deadline passes

    def push(self, request: Request) -> None:
        """Track a request; its deadline must be a number NaN is not (NaN would stop every pop)."""
        deadline_s = request.deadline_s
        if deadline_s is None or math.isnan(deadline_s):
            raise ValueError(f"request {request.seq}: deadline_s {deadline_s} cannot be ordered")
        heapq.heappush(self._heap, (deadline_s, request.seq))
        self._live[request.seq] = request

    def discard(self, request: Request) -> None:
        """Forget a request (it ended); no-op if it is not tracked."""
        if self._live.pop(request.seq, None) is not None:
            self._compact()

    def pop_due(self, now: float) -> Iterator[Request]:
        """The live requests whose deadline is at or before `now`, earliest first; each leaves."""
        while self._heap and self._heap[0][0] <= now:
            request = self._live.pop(heapq.heappop(self._heap)[1], None)
            if request is not None:
                yield request
        self._compact()  # popping live requests can leave the stale ones the majority too

    def due(self, now: float) -> bool:
        """Is any entry's deadline at or before `now` (stale ones too)? The step's cheap test."""
        return bool(self._heap) and self._heap[0][0] <= now

    def first(self, accept: Callable[[Request], bool]) -> float | None:
        """The earliest deadline among live requests that `accept` takes (None if none does).
        Walks the heap in deadline order through a frontier of positions, so it costs
        O(k log k) for the k entries before the answer instead of a scan of every request."""
        heap, live = self._heap, self._live
        while heap and heap[0][1] not in live:  # stale roots leave for good: no walk passes them again
            heapq.heappop(heap)
        if not heap:
            return None
        root = live.get(heap[0][1])
        if root is not None and accept(root):  # the common case: no walk to set up
            return heap[0][0]
        frontier = [(heap[0], 0)]
        while frontier:
            (deadline_s, seq), i = heapq.heappop(frontier)
            request = self._live.get(seq)  # a seq is pushed once: a live one's entry is never stale
            if request is not None and accept(request):
                return deadline_s
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return None

    def _compact(self) -> None:
        """Drop the stale entries once they outnumber the live ones: O(n), paid for by the
        discards that made at least half of them stale."""
        if len(self._heap) > 2 * len(self._live):
            self._heap = [entry for entry in self._heap if entry[1] in self._live]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        """Live requests tracked."""
        return len(self._live)

    @property
    def num_entries(self) -> int:
        """Heap entries, stale ones included (at most twice the live requests)."""
        return len(self._heap)
