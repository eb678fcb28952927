"""PNG plots of a bench run, drawn from the raw records: latency CDF per class, violations per app, timeline.

matplotlib is an optional dependency (the `bench` extra); `plots_available()` says whether it is
importable, and the bench writes every other file without it. Figures are built with
matplotlib.figure.Figure, never pyplot, so no GUI backend or global state is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from heddle.clients.loadgen import RequestRecord

__all__ = ["PLOT_FILES", "plots_available", "write_plots"]

PLOT_FILES = {
    "latency_cdf": "latency_cdf.png",
    "violations": "violations.png",
    "timeline": "timeline.png",
}
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
        line = ax.scatter(*zip(*ok), s=6, label=name) if ok else None
        if bad:
            color = line.get_facecolor()[0] if line is not None else None
            ax.scatter(*zip(*bad), s=22, marker="x", color=color,
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


def write_plots(out_dir: Path, records: Sequence[RequestRecord], summary: Mapping[str, Any]
                ) -> dict[str, Path]:
    """Write the PNGs into out_dir; returns {plot name: path}. Needs matplotlib."""
    paths = {name: out_dir / file for name, file in PLOT_FILES.items()}
    _latency_cdf(records, paths["latency_cdf"])
    _violations(summary, paths["violations"])
    _timeline(records, list(summary["apps"]), paths["timeline"])
    return paths
