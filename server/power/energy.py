"""Energy per stage run: each power domain's busy power, shared among the stages running on it.

A stage is charged, for every instant it runs, the power its domain draws while busy divided
by the number of stages running on that domain then. The busy power of a domain comes from
the power loop at each reading: the measured reading itself, or for an estimated device the
model's busy power at its current DVFS level (idle energy while nothing runs is charged to no
one). Bookkeeping is O(1) per event: each domain integrates the energy one stage running
throughout would have been charged, and a stage takes the difference between its end and its
start. Runs on the event loop thread only (no locks).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from heddle.scheduler.power_settings import PowerSource

__all__ = ["EnergyLedger", "combine_sources"]


@dataclass(slots=True)
class _Domain:
    rate_w: float = 0.0  # power while busy
    source: PowerSource = PowerSource.NONE
    running: int = 0
    share_j: float = 0.0  # energy charged so far to one stage running since the start
    last_s: float = 0.0

    def advance(self, now_s: float) -> None:
        if self.running and now_s > self.last_s:
            self.share_j += self.rate_w * (now_s - self.last_s) / self.running
        self.last_s = max(self.last_s, now_s)


@dataclass(slots=True)
class _Open:
    domain: str
    start_share_j: float
    carried_j: float = 0.0  # earlier steps of the same stage (LLM decode steps)


@dataclass(slots=True)
class EnergyLedger:
    """Devices map to power domains (`assign`); the power loop sets each domain's busy power
    (`set_rate`); the runtime reports stage starts and ends (`started`, `finished`)."""

    _domain_of: dict[str, str] = field(default_factory=dict)
    _domains: dict[str, _Domain] = field(default_factory=dict)
    _open: dict[tuple[str, str], _Open] = field(default_factory=dict)
    _carried: dict[tuple[str, str], float] = field(default_factory=dict)

    def assign(self, device: str, domain: str) -> None:
        """Charge stages on `device` from `domain`'s power (a device id or "+"-joined ids)."""
        self._domain_of[device] = domain
        self._domains.setdefault(domain, _Domain())

    def set_rate(self, domain: str, rate_w: float, source: PowerSource, now_s: float) -> None:
        d = self._domains.setdefault(domain, _Domain(last_s=now_s))
        d.advance(now_s)
        d.rate_w, d.source = max(0.0, rate_w), source

    def started(self, device: str, key: tuple[str, str], now_s: float) -> None:
        """A stage run began on `device`. A key still open (a multi-step stage whose previous
        step was not closed) is closed first, its energy carried over."""
        if key in self._open:
            self.stopped(key, now_s)
        domain = self._domain_of.get(device)
        if domain is None:
            return
        d = self._domains[domain]
        d.advance(now_s)
        d.running += 1
        self._open[key] = _Open(domain, d.share_j, self._carried.pop(key, 0.0))

    def stopped(self, key: tuple[str, str], now_s: float) -> None:
        """One step of a multi-step stage ended; the stage's energy so far is kept for it."""
        opened = self._open.pop(key, None)
        if opened is not None:
            self._carried[key] = opened.carried_j + self._close(opened, now_s)

    def finished(self, key: tuple[str, str], now_s: float) -> tuple[float, PowerSource]:
        """The stage ended: (joules, MEASURED | ESTIMATED), or (0.0, NONE) when unmetered."""
        opened = self._open.pop(key, None)
        carried_j = self._carried.pop(key, 0.0)
        if opened is None:
            return carried_j, PowerSource.NONE
        energy_j = opened.carried_j + carried_j + self._close(opened, now_s)
        return energy_j, self._domains[opened.domain].source

    def _close(self, opened: _Open, now_s: float) -> float:
        d = self._domains[opened.domain]
        d.advance(now_s)
        d.running = max(0, d.running - 1)
        return d.share_j - opened.start_share_j


def combine_sources(sources: Iterable[PowerSource]) -> PowerSource:
    """The source of a sum of energies: the one source they share, MIXED, or NONE if none."""
    found = {s for s in sources if s}
    if not found:
        return PowerSource.NONE
    return found.pop() if len(found) == 1 else PowerSource.MIXED
