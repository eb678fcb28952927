"""Prometheus series of the power budget: power per domain, budgets, energy, DVFS levels, frozen
work, the scheduler's freezes and migrations, and admission refusals (registered by
server/runtime/metrics.py's Metrics as `.power`)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["BOX", "PowerMetrics"]

BOX = "box"  # the `device` label of the whole-box budget


class PowerMetrics:
    """heddle_power_* series on a server's registry; every reading keeps its source label."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.power_watts = Gauge(
            "heddle_power_watts", "Power of a domain (device, '+'-joined devices on one rail, "
            "'board' or 'rail:NAME') at the last control period.",
            ["device", "source"], registry=registry)
        self.budget_watts = Gauge(
            "heddle_power_budget_watts", "Power budget in force: device='box' for the whole box, "
            "else a device's own budget (series absent: no budget).", ["device"], registry=registry)
        self.energy_joules = Counter(
            "heddle_energy_joules", "Energy charged to finished requests (estimated or measured, "
            "as each response says).", ["pipeline", "priority_class"], registry=registry)
        self.dvfs_level = Gauge(
            "heddle_dvfs_level", "DVFS level in effect (0 = fastest).", ["device"], registry=registry)
        self.frozen_tasks = Gauge(
            "heddle_frozen_tasks", "Stage runs held in their queues (power controller or policy).",
            registry=registry)
        # Counted so a live run can report them as the simulator does (its Driver counts the plan's).
        self.scheduler_actions = Counter(
            "heddle_scheduler_actions", "Queued stage runs the scheduler froze (power controller or "
            "policy) or migrated to another device, by action (freeze, migrate).", ["action"], registry=registry)
        self.admission_rejected = Counter(
            "heddle_admission_rejected", "Requests refused at admission, by reason "
            "(power, queue_full, overload, deadline).", ["reason", "priority_class"], registry=registry)
        self._budget_labels: set[str] = set()
        self._power_labels: dict[str, str] = {}

    def set_power(self, domain: str, source: str, watts: float) -> None:
        """One domain's reading; a domain whose source changed drops its old series."""
        old = self._power_labels.get(domain)
        if old is not None and old != source:
            self.power_watts.remove(domain, old)
        self._power_labels[domain] = source
        self.power_watts.labels(domain, source).set(watts)

    def set_budgets(self, box_w: float | None, device_w: Mapping[str, float]) -> None:
        """The budgets now in force; budgets no longer set disappear from the scrape."""
        wanted = {**({BOX: box_w} if box_w is not None else {}), **device_w}
        for label in self._budget_labels - set(wanted):
            self.budget_watts.remove(label)
        for label, watts in wanted.items():
            self.budget_watts.labels(label).set(watts)
        self._budget_labels = set(wanted)

    def observe_energy(self, pipeline: str, priority: int, joules: float) -> None:
        if joules > 0:
            self.energy_joules.labels(pipeline, str(priority)).inc(joules)

    def set_levels(self, levels: Mapping[str, int]) -> None:
        for device, level in levels.items():
            self.dvfs_level.labels(device).set(level)

    def set_frozen_tasks(self, n: int) -> None:
        self.frozen_tasks.set(n)

    def observe_actions(self, frozen: int, migrated: int) -> None:
        if frozen:
            self.scheduler_actions.labels("freeze").inc(frozen)
        if migrated:
            self.scheduler_actions.labels("migrate").inc(migrated)

    def observe_rejected(self, reason: str, priority: int) -> None:
        self.admission_rejected.labels(reason, str(priority)).inc()
