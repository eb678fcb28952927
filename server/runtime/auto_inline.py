"""`inline = "auto"` (the default for ONNX Runtime and python models): a stage runs on the event
loop instead of its device's worker thread once its own compute time, measured on that device,
has stayed under a budget for a while.

Why: on a small box the hand-over to a worker and back costs ~25-30 us of CPU per run (pool
queue, thread wake-up, the loop's wake-up; bench/profile_hot_path.py), more than a 16->8 MLP or a
join stage computes. Running such a stage on the loop saves that and, at 8 clients, more than
doubled the tiny model's throughput (bench/tiny_vs_triton.py, `inline = true`). A stage that is
not tiny would stall every request while it runs, so the decision is measured, per (model,
device), from the run's CPU time on the thread that ran it (not wall time: on a worker, wall
time also counts the wait for the GIL the busy loop holds; nor does CPU time count a preemption
on a busy box). A stage starts on its worker, and runs
on the loop while the median of its last `WINDOW` runs' CPU time is under `BUDGET_S` (a median,
so that an odd slow run does not move it) and their median wall time under `WALL_BOUND_S`: a
stage that waits (a sleep, I/O, a remote call, a GPU) uses little CPU but would hold the loop for
its whole wait. A run over `HARD_S` (a real stall) sends it back at once, to be
measured afresh. The observation is made on the thread that ran the stage (a worker or the loop):
its writes are single dict/deque operations under the GIL, and a decision read a run late is
harmless.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

__all__ = ["BUDGET_S", "HARD_S", "WALL_BOUND_S", "WINDOW", "AutoInline"]

# What a run on a worker costs beyond the run itself is ~25-30 us of hand-over, and its first run
# after the hop measures ~60 us of CPU for ~10 us of work (caches the loop's work evicted; seen in
# the server for the 16->8 MLP: 60-64 us first run, 10-15 us for a second one right after).
# Past ~100 us of CPU the loop would lose more (it serves nothing while the stage runs, where a
# worker runs the stage in parallel with it, ORT releasing the GIL) than the hop costs.
BUDGET_S = 100e-6
WALL_BOUND_S = 4 * BUDGET_S  # room for the GIL wait a worker's wall time includes, not for a blocking wait
WINDOW = 16
HARD_S = 0.02


@dataclass(slots=True)
class _Record:
    cpu: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    wall: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    inline: bool = False


class AutoInline:
    """Per (model, device), whether an `inline = "auto"` stage runs on the loop now."""

    def __init__(self, budget_s: float = BUDGET_S) -> None:
        self.budget_s = budget_s
        self._records: dict[tuple[str, str], _Record] = {}

    def wanted(self, model: str, device: str) -> bool:
        record = self._records.get((model, device))
        return record is not None and record.inline

    def observe(self, model: str, device: str, cpu_s: float, wall_s: float) -> None:
        """One run's CPU time on the thread that ran it, and its wall time (wherever it ran)."""
        record = self._records.setdefault((model, device), _Record())
        if wall_s > HARD_S:
            record.cpu.clear()
            record.wall.clear()
            record.inline = False
            return
        record.cpu.append(cpu_s)
        record.wall.append(wall_s)
        record.inline = (len(record.cpu) == WINDOW and statistics.median(record.cpu) < self.budget_s
                         and statistics.median(record.wall) < WALL_BOUND_S)

    def inlined(self) -> list[tuple[str, str]]:
        """The (model, device) pairs running on the loop now: for status and tests."""
        return sorted(k for k, r in self._records.items() if r.inline)
