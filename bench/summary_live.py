"""SUMMARY.md's sections of the live twill evaluation on the emulated Orin NX-like box (issue #15):
every policy over seeds (bench/live_eval.py) and the power budget with the bandwidth actuator
(bench/power_live.py), each table with its plot."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.summary_compare import md_table

__all__ = ["LIVE_JSON", "LIVE_PNG", "POWER_LIVE_JSON", "POWER_LIVE_PNG", "draw_live_plots", "live_sections"]

LIVE_JSON, LIVE_PNG = "live_eval.json", "live_eval.png"
POWER_LIVE_JSON, POWER_LIVE_PNG = "power_live.json", "power_live.png"
TOP = "4"  # the frames' priority class in both benches


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _ms(s: Mapping[str, Any] | None, scale: float = 1.0, digits: int = 1) -> str:
    """mean ± sample standard deviation over seeds."""
    if not s or s.get("mean") is None or math.isnan(s["mean"]):
        return "–"
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"


def live_table(doc: Mapping[str, Any]) -> list[str]:
    rows = []
    for policy, r in doc["per_policy"].items():
        live, sim, ok = r["live"], r["sim_under_load"], r["sim_vs_live"]
        rows.append([policy, _ms(live["dvr"], 100), _ms(live["antt"], 1, 2), _ms(live["mean_ms"]),
                     _ms(live[f"mean_ms_prio{TOP}"]), _ms(live[f"p99_ms_prio{TOP}"]), _ms(live["mean_ms_prio1"]),
                     _ms(live["p99_ms_prio1"]), _ms(live["migrations"], 1, 0), _ms(live["freezes"], 1, 0),
                     _ms(r["loadavg_1m"]), f"{_ms(sim['dvr'], 100)} / {_ms(sim['mean_ms'])}",
                     "yes" if all(c["ok"] for k, c in ok.items() if "not an acceptance" not in k) else "**no**"])
    return md_table(("policy", "DVR %", "ANTT", "mean ms", "frames mean", "frames p99", "bg mean", "bg p99",
                     "migrations", "freezes", "load 1m", "sim DVR % / mean ms", "sim within 25%"), rows)


def power_table(doc: Mapping[str, Any]) -> list[str]:
    rows = []
    for arm, r in doc["per_arm"].items():
        rows.append([arm, _ms(r["within_budget_5pct"], 100), _ms(r["mean_power_w"], 1, 2), _ms(r["top_dvr"], 100),
                     _ms(r["top_dvr_delta_points"]), _ms(r["mean_ms"]), _ms(r[f"mean_ms_prio{TOP}"]),
                     _ms(r["level_changes"], 1, 0), _ms(r["freezes"], 1, 0), _ms(r["loadavg_1m"])])
    return md_table(("policy + control", "periods ≤ budget+5% (%)", "power W (estimated)", "frames DVR %",
                     "Δ frames DVR vs unconstrained (points)", "mean ms", "frames mean ms", "DVFS level changes",
                     "freezes", "load 1m"), rows)


def _live_section(doc: Mapping[str, Any] | None, plot: bool) -> list[str]:
    lines = ["## 7. Live: every policy on the emulated Orin NX-like box (issue #15)", ""]
    if doc is None:
        return lines + ["Not run (no live_eval.json).", ""]
    p = doc["params"]
    lines += [f"bench/live_eval.py: {len(p['seeds'])} seeds x {p['duration_s']:g} s per policy ({p['rounds']} "
              f"rotated turns per seed), frames {p['fps']:g} FPS with a {p['deadline_ms']:g} ms deadline + "
              f"{p['concurrency']} closed-loop background clients; mean ± sample std over seeds. The server's "
              "latency (arrival to end); ANTT against the isolated profile; sim = `heddle simulate` replay of "
              "the same arrivals from the under-load profile (within 25% on DVR and mean latency). load 1m = the "
              "box's 1-minute load average around the policy's turns (other work on the box included).", ""]
    lines += live_table(doc) + ["", f"Acceptance: `{json.dumps(doc['acceptance'])}`", ""]
    if plot:
        lines += [f"![live evaluation]({LIVE_PNG})", ""]
    return lines


def _power_section(doc: Mapping[str, Any] | None, plot: bool) -> list[str]:
    lines = ["## 8. Live: a power budget at half the unconstrained draw, CPU-bandwidth actuator (issue #15)", ""]
    if doc is None:
        return lines + ["Not run (no power_live.json).", ""]
    lines += [f"bench/power_live.py: budget {_ms(doc['budget_w'], 1, 2)} W (ESTIMATED power: the devices' "
              "power models at their bandwidth level; the CPU clock does not change), twill + heddle's power "
              "controller against each baseline + a plain throttling governor, on the same box and load as "
              "section 7; mean ± std over seeds.", ""]
    lines += power_table(doc) + ["", f"Acceptance: `{json.dumps(doc['acceptance'])}`", ""]
    if plot:
        lines += [f"![power budget]({POWER_LIVE_PNG})", ""]
    return lines


def live_sections(results_dir: Path) -> list[str]:
    return [*_live_section(_load(results_dir / LIVE_JSON), (results_dir / LIVE_PNG).exists()),
            *_power_section(_load(results_dir / POWER_LIVE_JSON), (results_dir / POWER_LIVE_PNG).exists())]


def _bars(ax: Any, names: Sequence[str], series: Mapping[str, Sequence[Mapping[str, Any]]], scale: float,
          ylabel: str) -> None:
    """Grouped bars with the seeds' standard deviation as error bars."""
    width = 0.8 / max(len(series), 1)
    for j, (label, spreads) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
        means = [scale * (s["mean"] if s["mean"] is not None and not math.isnan(s["mean"]) else 0.0) for s in spreads]
        stds = [scale * (s["std"] if s["std"] is not None and not math.isnan(s["std"]) else 0.0) for s in spreads]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=label)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def draw_live_plots(results_dir: Path) -> list[Path]:
    """live_eval.png and power_live.png beside their JSON (those present). Needs matplotlib."""
    from matplotlib.figure import Figure

    drawn = []
    live = _load(results_dir / LIVE_JSON)
    if live is not None:
        names, rows = list(live["per_policy"]), list(live["per_policy"].values())
        fig = Figure(figsize=(11, 4), layout="constrained")
        dvr, mean = fig.subplots(1, 2)
        _bars(dvr, names, {"live": [r["live"]["dvr"] for r in rows],
                           "sim": [r["sim_under_load"]["dvr"] for r in rows]}, 100, "DVR % (frames)")
        _bars(mean, names, {"live frames": [r["live"][f"mean_ms_prio{TOP}"] for r in rows],
                            "live all": [r["live"]["mean_ms"] for r in rows],
                            "sim all": [r["sim_under_load"]["mean_ms"] for r in rows]}, 1, "mean latency ms")
        fig.suptitle("live, emulated Orin NX-like box: mean ± std over seeds")
        fig.savefig(results_dir / LIVE_PNG, dpi=110)
        drawn.append(results_dir / LIVE_PNG)
    power = _load(results_dir / POWER_LIVE_JSON)
    if power is not None:
        names, rows = list(power["per_arm"]), list(power["per_arm"].values())
        fig = Figure(figsize=(11, 4), layout="constrained")
        within, mean = fig.subplots(1, 2)
        _bars(within, names, {"periods ≤ budget + 5%": [r["within_budget_5pct"] for r in rows]}, 100, "%")
        within.axhline(99, color="k", lw=0.8, ls="--")
        _bars(mean, names, {"frames": [r[f"mean_ms_prio{TOP}"] for r in rows],
                            "all": [r["mean_ms"] for r in rows]}, 1, "mean latency ms")
        fig.suptitle("live power budget (ESTIMATED power), bandwidth actuator: mean ± std over seeds")
        fig.savefig(results_dir / POWER_LIVE_PNG, dpi=110)
        drawn.append(results_dir / POWER_LIVE_PNG)
    return drawn
