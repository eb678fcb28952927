"""PNG plots of a bench run, drawn from the raw records: latency CDF per class, violations per app, timeline.

Also: power over time (only when records carry `energy_j` in `extra`) and, for the benchmark
suite (bench/run_all.py), the deadline violation rate of every policy on every scenario.

matplotlib is an optional dependency (the `bench` extra); `plots_available()` says whether it is
importable, and the bench writes every other file without it. Figures are built with
matplotlib.figure.Figure, never pyplot, so no GUI backend or global state is involved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from heddle.clients.loadgen import RequestRecord

__all__ = [
    "PLOT_FILES", "POLICY_VIOLATIONS_FILE", "POWER_FILE", "plots_available", "power_series",
    "write_plots", "write_policy_violations",
]

PLOT_FILES = {
    "latency_cdf": "latency_cdf.png",
    "violations": "violations.png",
    "timeline": "timeline.png",
}
POWER_FILE = "power.png"  # written beside PLOT_FILES only when the records carry energy
POLICY_VIOLATIONS_FILE = "policy_violations.png"
_DPI = 110


def plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")


def _log_axis(axis) -> None:
    """Log scale labelled 1, 2, 5, 10, 20, ... instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _latency_cdf(records: Sequence[RequestRecord], path: Path) -> None:
    fig = _figure(7.5, 4.2)
    ax = fig.add_subplot()
    classes = sorted({r.priority for r in records}, reverse=True)
    for priority in classes:
        lat = np.sort([r.latency_ms for r in records if r.priority == priority and r.status == "OK"])
        if lat.size:
            ax.step(lat, np.arange(1, lat.size + 1) / lat.size, where="post",
                    label=f"priority {priority} (n={lat.size})")
    ax.set_xscale("log")
    _log_axis(ax.xaxis)
    ax.set_xlabel("latency (ms, client-measured, OK responses)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("Latency CDF per priority class")
    if classes:
        ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path)


def _violations(summary: Mapping[str, Any], path: Path) -> None:
    apps = list(summary["apps"].items())
    fig = _figure(7.5, 0.9 + 0.45 * max(len(apps), 1))
    ax = fig.add_subplot()
    names = [name for name, _ in apps]
    rates = [100.0 * (s["violation_rate"] or 0.0) for _, s in apps]
    ax.barh(range(len(apps)), rates, color="#c0504d")
    for i, (_, s) in enumerate(apps):
        label = (f"{s['deadline_violations']}/{s['with_deadline']}" if s["with_deadline"]
                 else "no deadline")
        ax.text(rates[i] + 1, i, label, va="center", fontsize="small")
    ax.set_yticks(range(len(apps)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 115)
    ax.set_xlabel("deadline violation rate (%)")
    ax.set_title("Deadline violations per app")
    ax.grid(True, axis="x", alpha=0.3)
    fig.savefig(path)


def _timeline(records: Sequence[RequestRecord], app_order: Sequence[str], path: Path) -> None:
    fig = _figure(7.5, 4.6)
    ax = fig.add_subplot()
    for name in app_order:
        ok = [(r.sent_s, r.latency_ms) for r in records if r.app == name and r.status == "OK"]
        bad = [(r.sent_s, r.latency_ms) for r in records
               if r.app == name and r.status != "OK" and not r.client_cancelled]
        line = ax.scatter(*zip(*ok, strict=True), s=6, label=name) if ok else None
        if bad:
            color = line.get_facecolor()[0] if line is not None else None
            ax.scatter(*zip(*bad, strict=True), s=22, marker="x", color=color,
                       label=f"{name}: errors" if line is None else None)
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_xlabel("send time (s since start)")
    ax.set_ylabel("latency (ms); x = error")
    ax.set_title("Latency over the run")
    ax.grid(True, which="both", alpha=0.3)
    if records:  # below the axes: over them it hides the points it explains
        fig.legend(loc="outside lower center", ncols=min(len(app_order), 3), fontsize="small",
                   markerscale=2, frameon=False)
    fig.savefig(path)


def power_series(records: Sequence[RequestRecord], bin_s: float = 1.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(bin start s, mean power W) from per-request `extra["energy_j"]`, by completion time.

    Each request's energy is put in the bin where its response arrived (sent_s + latency), so a
    bin's power is the energy of the work that finished in it over bin_s: the power drawn by the
    served requests, not the device's idle floor. Empty arrays when no record has energy.
    """
    done = [(r.sent_s + r.latency_ms / 1e3, float(r.extra["energy_j"]))
            for r in records if "energy_j" in r.extra and not r.client_cancelled]
    if not done:
        return np.zeros(0), np.zeros(0)
    ends_s, energy_j = np.array(done).T
    bins = np.floor(ends_s / bin_s).astype(np.int64)
    joules = np.bincount(bins - bins.min(), weights=energy_j)
    return (bins.min() + np.arange(joules.size)) * bin_s, joules / bin_s


def _power_over_time(records: Sequence[RequestRecord], app_order: Sequence[str], path: Path) -> None:
    fig = _figure(7.5, 3.8)
    ax = fig.add_subplot()
    t_s, power_w = power_series(records)
    ax.step(t_s, power_w, where="post", color="black", label="all")
    for name in app_order:
        t_app, p_app = power_series([r for r in records if r.app == name])
        if t_app.size:
            ax.step(t_app, p_app, where="post", alpha=0.7, label=name)
    ax.set_xlabel("response time (s since start, 1 s bins)")
    ax.set_ylabel("power (W) = energy of requests done / s")
    ax.set_title("Power over the run (from per-request energy)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.savefig(path)


def write_plots(out_dir: Path, records: Sequence[RequestRecord], summary: Mapping[str, Any]
                ) -> dict[str, Path]:
    """Write the PNGs into out_dir; returns {plot name: path}. Needs matplotlib.

    The power plot ("power": POWER_FILE) is added only when some record has `energy_j`.
    """
    paths = {name: out_dir / file for name, file in PLOT_FILES.items()}
    _latency_cdf(records, paths["latency_cdf"])
    _violations(summary, paths["violations"])
    _timeline(records, list(summary["apps"]), paths["timeline"])
    if any("energy_j" in r.extra for r in records):
        paths["power"] = out_dir / POWER_FILE
        _power_over_time(records, list(summary["apps"]), paths["power"])
    return paths


def write_policy_violations(path: Path, rates: Mapping[str, Mapping[str, float | None]]) -> Path:
    """Grouped bars: per scenario, one bar per policy, height = deadline violation rate (%).

    `rates` is {scenario: {policy: rate in [0, 1], or None when no request had a deadline}};
    a missing or None rate is drawn as no bar and labelled "n/a". Needs matplotlib.
    """
    scenarios = list(rates)
    policies = list(dict.fromkeys(p for by_policy in rates.values() for p in by_policy))
    fig = _figure(max(7.5, 1.4 * len(scenarios) + 2.5), 4.4)
    ax = fig.add_subplot()
    width = 0.8 / max(len(policies), 1)
    for j, policy in enumerate(policies):
        xs = np.arange(len(scenarios)) + (j - (len(policies) - 1) / 2) * width
        values = [rates[s].get(policy) for s in scenarios]
        ax.bar(xs, [100.0 * (v or 0.0) for v in values], width, label=policy)
        for x, v in zip(xs, values, strict=True):  # labelled, so a 0% bar is told apart from a missing one
            ax.text(x, 100.0 * (v or 0.0) + 0.5, "n/a" if v is None else f"{100 * v:.0f}",
                    ha="center", va="bottom", rotation=90, fontsize=6.5)
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_ylim(0, max(10.0, ax.get_ylim()[1] * 1.12))  # room for the labels
    ax.set_ylabel("deadline violation rate (%)")
    ax.set_title("Deadline violations per policy and scenario (lower is better)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.legend(title="policy", loc="outside right upper", fontsize="small", frameon=False)
    fig.savefig(path)
    return path
