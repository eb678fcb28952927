"""The tables `heddle simulate` prints: one row per policy (with the recorded row of a replayed
trace), and the markdown power-budget table of docs/POWER.md."""

from __future__ import annotations

import math
from collections.abc import Sequence

from heddle.scheduler.sim.power_budget import BudgetResult
from heddle.scheduler.sim.scoring import PolicyResult

__all__ = ["format_budget_table", "format_means", "format_table", "with_recorded_row"]


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_table(results: Sequence[PolicyResult]) -> str:
    """One row per policy: DVR, ANTT, p50/p99 latency (ms) per priority class, throughput."""
    classes = sorted({p for r in results for p in r.per_class}, reverse=True)
    head = ["policy", "DVR %", "ANTT", *(f"prio {p} p50/p99 ms" for p in classes), "req/s", "energy J", "migr", "frz"]
    rows = [head]
    for r in results:
        lat = [f"{r.per_class[p].p50_ms:.1f}/{r.per_class[p].p99_ms:.1f}" if p in r.per_class else "-" for p in classes]
        rows.append([r.policy, f"{100 * r.violation_rate:.1f}", f"{r.antt:.2f}", *lat,
                     f"{r.throughput_rps:.1f}", f"{r.energy_j:.1f}", str(r.migrations), str(r.freezes)])
    lines = _aligned(rows)
    if len(results) > 1:
        best = min(results, key=lambda r: r.violation_rate)
        worst = max(results, key=lambda r: r.violation_rate)
        lines.append(f"\nDVR spread: {100 * (worst.violation_rate - best.violation_rate):.1f} points "
                     f"(best {best.policy}, worst {worst.policy})")
    return "\n".join(lines)


def format_means(results: Sequence[PolicyResult]) -> str:
    """One row per policy: mean latency (ms) of each class's completed requests, and each device's
    utilisation (busy time over the run's span, %)."""
    classes = sorted({p for r in results for p in r.per_class}, reverse=True)
    devices = sorted({d for r in results for d in r.utilisation})
    rows = [["policy", *(f"prio {p} mean ms" for p in classes), *(f"{d} util %" for d in devices)]]
    for r in results:
        means = [f"{r.per_class[p].mean_ms:.1f}" if p in r.per_class else "-" for p in classes]
        rows.append([r.policy, *means, *(f"{100 * r.utilisation.get(d, math.nan):.1f}" for d in devices)])
    return "\n".join(_aligned(rows))


def with_recorded_row(results: list[PolicyResult], live: PolicyResult | None) -> str:
    """The simulator's table with what really happened as its last row; the spread line stays
    about the simulated policies."""
    table = format_table(results)
    if live is None:
        return table
    rows, _, _ = format_table([*results, live]).partition("\n\nDVR spread")
    _, spread, rest = table.partition("\n\nDVR spread")
    return rows + spread + rest


def format_budget_table(rows: Sequence[BudgetResult], top: int) -> str:
    """A markdown table: budget, control and policy, violation rates, p99 per class, power."""
    classes = sorted({p for r in rows for p in r.result.per_class}, reverse=True)
    head = ["budget W", "control + policy", "DVR % (all)", f"DVR % prio {top}"] + [
        f"p99 ms prio {p}" for p in classes] + ["completed", "mean W", "periods <= budget+5%"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        res = r.result
        cells = [f"{r.budget_w:g}" if r.budget_w else "none", f"{r.control} + {res.policy}",
                 f"{100 * res.violation_rate:.1f}", f"{100 * res.per_class[top].violation_rate:.1f}"]
        cells += [f"{res.per_class[p].p99_ms:.0f}" if p in res.per_class else "-" for p in classes]
        cells += [f"{res.completed}/{res.requests}", f"{r.mean_power_w:.1f}",
                  "-" if math.isnan(r.within_budget) else f"{100 * r.within_budget:.1f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
