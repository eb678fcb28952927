"""`inline = "auto"` (the default for ONNX Runtime and python models): a stage runs on the event
loop instead of its device's worker thread once its own compute time, measured on that device,
has stayed under a budget for a while.

Why: on a small box the hand-over to a worker and back costs ~25-30 us of CPU per run (pool
queue, thread wake-up, the loop's wake-up; bench/profile_hot_path.py), more than a 16->8 MLP or a
join stage computes. Running such a stage on the loop saves that and, at 8 clients, more than
doubled the tiny model's throughput (bench/tiny_vs_triton.py, `inline = true`). A stage that is
not tiny would stall every request while it runs, so the decision is measured, per (model,
device), from the compute time alone (queueing and hand-overs excluded): a stage starts on its
worker, moves to the loop after `WARM_RUNS` runs averaging under `BUDGET_S`, and goes back to the
worker (and must earn its way again) the first time one run takes over `EVICT_FACTOR` budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUDGET_S", "AutoInline"]

BUDGET_S = 50e-6  # about twice the hand-over a run on the loop saves: past that, the loop stalls more than it saves
WARM_RUNS = 16
EVICT_FACTOR = 4.0
_ALPHA = 0.2  # EWMA weight of the newest run


@dataclass(slots=True)
class _Record:
    runs: int = 0
    ewma_s: float = 0.0


class AutoInline:
    """Per (model, device), whether an `inline = "auto"` stage runs on the loop now."""

    def __init__(self, budget_s: float = BUDGET_S, warm_runs: int = WARM_RUNS) -> None:
        self.budget_s, self.warm_runs = budget_s, warm_runs
        self._records: dict[tuple[str, str], _Record] = {}

    def wanted(self, model: str, device: str) -> bool:
        record = self._records.get((model, device))
        return record is not None and record.runs >= self.warm_runs and record.ewma_s < self.budget_s

    def observe(self, model: str, device: str, compute_s: float) -> None:
        """One run's compute time (wherever it ran)."""
        record = self._records.setdefault((model, device), _Record())
        if compute_s > EVICT_FACTOR * self.budget_s:  # a slow run: back to the worker, measured afresh
            record.runs, record.ewma_s = 0, compute_s
            return
        record.ewma_s = compute_s if record.runs == 0 else (1 - _ALPHA) * record.ewma_s + _ALPHA * compute_s
        record.runs += 1

    def inlined(self) -> list[tuple[str, str]]:
        """The (model, device) pairs running on the loop now: for status and tests."""
        return sorted(k for k in self._records if self.wanted(*k))
