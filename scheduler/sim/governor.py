"""The baseline a power controller is measured against: a plain throttling governor (DVFS only, every
device at once; no freezing, no admission). The simulator's power plant drives it (plant.py), and a
live server can hand it its levels for a benchmark (server/power/loop.py `use_governor`)."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ThrottlingGovernor"]


class ThrottlingGovernor:
    """Smoothed box power over 95% of the budget lowers every device one level; under 85% of it for
    `relax_periods` periods in a row raises every device one level."""

    def __init__(self, budget_w: float, counts: Mapping[str, int], smoothing: float = 0.5, relax_periods: int = 5):
        self.budget_w, self.counts = budget_w, dict(counts)
        self.smoothing, self.relax_periods = smoothing, relax_periods
        self.smoothed_w: float | None = None
        self._calm = 0

    def decide(self, box_w: float, levels: Mapping[str, int]) -> dict[str, int]:
        """One control period: every device's next level (0 = fastest) from the box's power."""
        old_w = self.smoothed_w
        self.smoothed_w = box_w if old_w is None else old_w + self.smoothing * (box_w - old_w)
        move = 0
        if self.smoothed_w > 0.95 * self.budget_w:
            move, self._calm = 1, 0
        elif self.smoothed_w < 0.85 * self.budget_w:
            self._calm += 1
            if self._calm >= self.relax_periods:
                move, self._calm = -1, 0
        return {device: min(count - 1, max(0, levels.get(device, 0) + move)) for device, count in self.counts.items()}
