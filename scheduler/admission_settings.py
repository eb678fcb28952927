"""What overload admission is configured with: the `[admission]` table (on by default) and the
share of the in-flight bound each priority class may fill. Pure data; decisions in admission.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AdmissionSettings", "class_limit"]


@dataclass(frozen=True, slots=True)
class AdmissionSettings:
    """The `[admission]` table. `enabled` turns overload admission on (the default) or off:
    latency refusals of lower classes whose predicted latency passes their deadline, and the
    bound on admitted requests in flight. `max_in_flight` is that bound for the top class;
    class p of L may fill p/L of it, so lower classes are refused first (0: no bound)."""

    enabled: bool = True
    max_in_flight: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"[admission] enabled must be true or false, got {self.enabled!r}")
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int) \
                or self.max_in_flight < 0:
            raise ValueError(f"[admission] max_in_flight must be an integer >= 0, got {self.max_in_flight!r}")

    @classmethod
    def from_table(cls, raw: Mapping[str, Any]) -> AdmissionSettings:
        """The `[admission]` table of a config; ValueError names an unknown key or a bad value."""
        unknown = sorted(set(raw) - {"enabled", "max_in_flight"})
        if unknown:
            raise ValueError(f"unknown [admission] keys {unknown}; known: ['enabled', 'max_in_flight']")
        return cls(**dict(raw))

    @property
    def bound(self) -> int | None:
        """The in-flight bound admission applies: None when off."""
        return self.max_in_flight if self.enabled and self.max_in_flight > 0 else None


def class_limit(max_in_flight: int, cls: int, top: int) -> int:
    """Requests in flight (every class counted) from which class `cls` is refused: the whole bound
    for the top class, cls/top of it below (at least 1), so a full box refuses the lowest class
    first and the top class only once every class below it is refused already."""
    if cls >= top:
        return max_in_flight
    return max(1, max_in_flight * max(cls, 1) // top)
