"""SUMMARY.md of a benchmark-suite results folder: one markdown table per part, built from its JSON files.

    .venv/bin/python -m bench.summary bench/results/2026-11-22     # rebuild policies.json, plot, SUMMARY.md

Inputs (any may be missing; the summary says which part did not run):
  run_all.json          what bench/run_all.py ran: settings, machine, each part's status and time
  gateway_overhead.json bench/gateway_overhead.py
  triton_vs_heddle.json bench/triton_vs_heddle.py
  policies/<scenario>/<policy>/   one `heddle bench` report folder per run (run.json, requests.jsonl)
                        plus policy.json (the policy the server confirmed); policies.json is
                        recomputed from these raw records every time, so it can always be checked.
  sched_cost.json, tiny_vs_triton.json, perf_analyzer.json   sections 4-6 (bench/summary_compare.py)
  live_eval.json, power_live.json   sections 7-8, twill live on the emulated box (bench/summary_live.py)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.summary_compare import cell as _f
from bench.summary_compare import (
    gateway_section,
    gateway_table,
    perf_section,
    sched_section,
    tiny_section,
    triton_section,
    triton_table,
)
from bench.summary_compare import md_table as _table
from bench.summary_compare import pct as _pct
from bench.summary_live import draw_live_plots, live_sections
from heddle.clients.plots import POLICY_VIOLATIONS_FILE, plots_available, write_policy_violations
from heddle.clients.report import RECORDS_FILE, RUN_FILE, read_records, summarize
from heddle.clients.scenarios import SCENARIOS
from heddle.scheduler.policies import POLICIES

__all__ = [
    "GATEWAY_JSON", "MANIFEST_JSON", "POLICIES_DIR", "POLICIES_JSON", "POLICY_FILE", "SUMMARY_MD",
    "TRITON_JSON", "build", "collect_policies", "gateway_table", "llm_table", "policies_table",
    "render_summary", "triton_table",
]

MANIFEST_JSON = "run_all.json"
GATEWAY_JSON = "gateway_overhead.json"
TRITON_JSON = "triton_vs_heddle.json"
POLICIES_JSON = "policies.json"
POLICIES_DIR = "policies"
POLICY_FILE = "policy.json"
SUMMARY_MD = "SUMMARY.md"
PART_TITLES = {"gateway": "gateway overhead", "triton": "heddle vs Triton", "policies": "scheduling policies",
               "sched": "scheduler cost", "tiny": "tiny model vs Triton", "perf": "perf_analyzer sweep",
               "live": "every policy live on the emulated box", "power": "power budget live on the emulated box"}
SCHED_JSON, TINY_JSON, PERF_JSON = "sched_cost.json", "tiny_vs_triton.json", "perf_analyzer.json"


# --- policies.json from the raw records ----------------------------------------------------------

def _order(names: Iterable[str], known: Sequence[str]) -> list[str]:
    """Known names in their shipped order, then the rest by name."""
    rank = {n: i for i, n in enumerate(known)}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def _figures(s: Mapping[str, Any]) -> dict[str, Any]:
    lat = s["latency_ms"] or {}
    return {"requests": s["requests"], "ok": s["ok"], "errors": s["errors"],
            "violation_rate": s["violation_rate"], "goodput_rps": s["goodput_rps"],
            "throughput_rps": s["throughput_rps"], "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
            "llm": _llm_figures(s["llm"]), "energy": s["energy"],
            "rejections": {code: {k: r[k] for k in ("count", "with_retry_hint")}
                           for code, r in s["rejections"].items()}}


def _llm_figures(llm: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if llm is None:
        return None
    def q(key: str, stat: str) -> float | None:
        return (llm[key] or {}).get(stat)
    return {"requests": llm["requests"], "tokens": llm["tokens"], "tokens_per_s": llm["tokens_per_s"],
            "ttft_p50_ms": q("ttft_ms", "p50"), "ttft_p99_ms": q("ttft_ms", "p99"),
            "client_ttft_p50_ms": q("client_ttft_ms", "p50"), "client_ttft_p99_ms": q("client_ttft_ms", "p99"),
            "tpot_p50_ms": q("tpot_ms", "p50"), "tpot_p99_ms": q("tpot_ms", "p99"),
            "request_tokens_per_s_p50": q("request_tokens_per_s", "p50")}


def _policy_run(results_dir: Path, folder: Path) -> dict[str, Any]:
    run = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    meta = json.loads((folder / POLICY_FILE).read_text()) if (folder / POLICY_FILE).exists() else {}
    apps = [a["name"] for a in run["scenario"]["apps"]]
    s = summarize(read_records(folder / RECORDS_FILE), run["window_s"], apps)
    top = next(iter(s["classes"]), None)  # classes are keyed highest priority first
    return {"scenario": run["scenario"]["name"], "policy": meta.get("policy", folder.name),
            "report": folder.relative_to(results_dir).as_posix(), "bench_exit": meta.get("bench_exit"),
            "loadavg_1m_after": meta.get("loadavg_1m_after"),
            "duration_s": run["duration_s"], "window_s": run["window_s"], "seed": run["seed"],
            "rate_scale": run.get("rate_scale", 1.0), "interrupted": run.get("interrupted", False),
            "total": _figures(s["total"]),
            "top_class": None if top is None else {"priority": top, **_figures(s["classes"][top])},
            "apps": {name: _figures(a) for name, a in s["apps"].items()}}


def collect_policies(results_dir: Path) -> dict[str, Any] | None:
    """policies.json's content recomputed from every policies/<scenario>/<policy>/ report folder
    (None when there is none); report paths are relative to results_dir."""
    base = results_dir / POLICIES_DIR
    folders = sorted(p.parent for p in base.glob(f"*/*/{RUN_FILE}")) if base.is_dir() else []
    runs = [_policy_run(results_dir, folder) for folder in folders]
    if not runs:
        return None
    scenarios = _order((r["scenario"] for r in runs), list(SCENARIOS))
    policies = _order((r["policy"] for r in runs), list(POLICIES))
    runs.sort(key=lambda r: (scenarios.index(r["scenario"]), policies.index(r["policy"])))
    return {"benchmark": "policies", "scenarios": scenarios, "policies": policies, "runs": runs}


# --- tables --------------------------------------------------------------------------------------

def _energy_header(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """The energy column's header, labelled estimated unless every figure was measured; None
    when no run has energy (older runs, or a server that meters none)."""
    labels = {run["total"]["energy"]["label"] for run in runs if run["total"].get("energy")}
    if not labels:
        return None
    return "J/req (measured)" if labels == {"measured"} else "J/req (estimated)"


def policies_table(doc: Mapping[str, Any]) -> list[str]:
    """One row per (scenario, policy); the lowest violation rate of each scenario in bold; an
    energy column when the runs carry energy."""
    best: dict[str, float] = {}
    for run in doc["runs"]:
        rate = run["total"]["violation_rate"]
        if rate is not None:
            best[run["scenario"]] = min(rate, best.get(run["scenario"], rate))
    energy = _energy_header(doc["runs"])
    rows = []
    for run in doc["runs"]:
        t, top = run["total"], run["top_class"] or {}
        viol = _pct(t["violation_rate"])
        if t["violation_rate"] is not None and t["violation_rate"] == best.get(run["scenario"]):
            viol = f"**{viol}**"
        failed = "" if run.get("bench_exit") in (0, None) else f" (bench exit {run['bench_exit']})"
        rows.append([run["scenario"], run["policy"] + failed, str(t["requests"]), str(t["ok"]), viol,
                     _f(t["goodput_rps"], 1), _f(t["p50_ms"]), _f(t["p99_ms"]),
                     f"{top.get('priority', '–')}: {_pct(top.get('violation_rate'))}",
                     _f(top.get("p99_ms")), _f(run.get("loadavg_1m_after"), 1)])
        if energy:
            rows[-1].insert(-1, _f((t.get("energy") or {}).get("mean_j"), 3))
    headers = ["scenario", "policy", "sent", "ok", "viol", "goodput /s", "p50 ms", "p99 ms",
               "top class: viol", "top class p99 ms", "load 1m"]
    if energy:
        headers.insert(-1, energy)
    return _table(headers, rows)


def llm_table(doc: Mapping[str, Any]) -> list[str]:
    """One row per (scenario, policy, app that generated tokens); [] when no app did. The lowest
    server TTFT p99 of each (scenario, app) in bold."""
    rows = [(run, name, app) for run in doc["runs"] for name, app in run["apps"].items() if app.get("llm")]
    best: dict[tuple[str, str], float] = {}
    for run, name, app in rows:
        ttft = app["llm"]["ttft_p99_ms"]
        if ttft is not None:
            key = (run["scenario"], name)
            best[key] = min(ttft, best.get(key, ttft))
    out = []
    for run, name, app in rows:
        g = app["llm"]
        ttft = _f(g["ttft_p99_ms"], 1)
        if g["ttft_p99_ms"] is not None and g["ttft_p99_ms"] == best.get((run["scenario"], name)):
            ttft = f"**{ttft}**"
        out.append([run["scenario"], run["policy"], name, f"{g['requests']}/{app['requests']}",
                    _pct(app["violation_rate"]), _f(g["tokens_per_s"], 1), _f(g["ttft_p50_ms"], 1), ttft,
                    _f(g["client_ttft_p99_ms"], 1), _f(g["tpot_p50_ms"]), _f(g["request_tokens_per_s_p50"], 0)])
    if not out:
        return []
    return _table(("scenario", "policy", "LLM app", "generated/sent", "viol", "tokens /s", "TTFT p50 ms",
                   "TTFT p99 ms", "client TTFT p99 ms", "TPOT p50 ms", "tok/s per request p50"), out)


# --- the page ------------------------------------------------------------------------------------

def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _machine_line(machine: Mapping[str, Any] | None) -> str:
    if not machine:
        return "Machine: not recorded."
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items() if v)
    return (f"Machine: {machine.get('cpu_count')} CPUs ({machine.get('cpu_model')}), "
            f"{machine.get('platform')}, Python {machine.get('python')}; {versions}.")


def _header(results_dir: Path, manifest: Mapping[str, Any] | None, machine: Mapping[str, Any] | None
            ) -> list[str]:
    lines = [f"# heddle benchmark suite: {results_dir.name}", "", _machine_line(machine), ""]
    if manifest is None:
        return lines + ["Parts: no run_all.json here; tables below are whatever JSON files the folder holds.", ""]
    load = manifest.get("loadavg_start"), manifest.get("loadavg_end")
    lines.append(f"Run: `{manifest.get('command')}` ({manifest.get('mode')} settings), started "
                 f"{manifest.get('started_at')}, {_f((manifest.get('wall_s') or 0) / 60, 1)} min in all; "
                 f"1-min load average {_f(load[0] and load[0][0])} at the start, "
                 f"{_f(load[1] and load[1][0])} at the end.")
    lines.append("")
    for name, part in manifest.get("parts", {}).items():
        took = "" if part.get("wall_s") is None else f" in {part['wall_s']:.0f} s"
        note = f": {part['note']}" if part.get("note") else ""
        lines.append(f"- {PART_TITLES.get(name, name)}: **{part.get('status')}**{took}{note}")
    return lines + [""]


def _policies_section(doc: Mapping[str, Any] | None, plot: Path | None) -> list[str]:
    lines = ["## 3. Every scheduling policy on every shipped scenario", ""]
    if doc is None:
        return lines + ["Not run (no policies/ report folders and no policies.json).", ""]
    runs = doc["runs"]
    durations = sorted({r["duration_s"] for r in runs})
    seeds, scales = sorted({r["seed"] for r in runs}), sorted({r["rate_scale"] for r in runs})
    lines += [f"One `heddle serve` (embedded default), policy switched with Admin.SetPolicy before each "
              f"`heddle bench` run of {', '.join(f'{d:g}' for d in durations)} s (seed "
              f"{', '.join(map(str, seeds))}, rate scale {', '.join(f'{s:g}' for s in scales)}): the "
              "same arrivals for every policy. viol = deadline violation rate of finished requests "
              "with a deadline (lowest per scenario in bold); goodput = OK in time per second; "
              "latency over OK responses; top class = the scenario's highest priority; load 1m = the box's "
              "1-minute load average as the run ended (this suite alone adds about 2).", ""]
    lines += policies_table(doc) + [""]
    if _energy_header(runs):
        lines += ["J/req: mean energy per OK request as the server accounted it; estimated unless a power "
                  "sensor measured it (compare between policies, not as absolute joules).", ""]
    llm = llm_table(doc)
    if llm:
        lines += ["LLM apps (streamed generations on `chat`): generated/sent = OK requests that generated "
                  "tokens / requests sent; tokens /s = their tokens over the run's window; TTFT from the "
                  "request's arrival at the server to its first token (lowest p99 per scenario and app in "
                  "bold); client TTFT from send to the first streamed token; TPOT = time per output token; "
                  "tok/s per request = a request's tokens over its client latency.", ""]
        lines += llm + [""]
    if plot is not None:
        lines += [f"![violation rate per policy]({plot.name})", ""]
    return lines


def render_summary(results_dir: Path, policies: Mapping[str, Any] | None = None) -> str:
    """SUMMARY.md's text from the folder's JSON files (policies: collect_policies's or policies.json)."""
    manifest = _load(results_dir / MANIFEST_JSON)
    gateway, triton = _load(results_dir / GATEWAY_JSON), _load(results_dir / TRITON_JSON)
    if policies is None:
        policies = _load(results_dir / POLICIES_JSON)
    machine = (manifest or {}).get("machine") or (gateway or {}).get("machine") or (triton or {}).get("machine")
    triton_note = ((manifest or {}).get("parts", {}).get("triton") or {}).get("note")
    plot = results_dir / POLICY_VIOLATIONS_FILE
    lines = [*_header(results_dir, manifest, machine), *gateway_section(gateway),
             *triton_section(triton, triton_note),
             *_policies_section(policies, plot if plot.exists() else None),
             *sched_section(_load(results_dir / SCHED_JSON)), *tiny_section(_load(results_dir / TINY_JSON)),
             *perf_section(_load(results_dir / PERF_JSON)), *live_sections(results_dir),
             "How to read these tables: docs/BENCHMARKS.md (section \"The benchmark suite\").", ""]
    return "\n".join(lines)


def build(results_dir: Path, *, plot: bool = True) -> Path:
    """Recompute policies.json from the raw records (when the folders are here), draw the policy
    plot (when matplotlib is installed), and write SUMMARY.md; returns its path."""
    policies = collect_policies(results_dir)
    if policies is not None:
        (results_dir / POLICIES_JSON).write_text(json.dumps(policies, indent=2) + "\n", encoding="utf-8")
        if plot and plots_available():
            rates: dict[str, dict[str, float | None]] = {}
            for run in policies["runs"]:
                rates.setdefault(run["scenario"], {})[run["policy"]] = run["total"]["violation_rate"]
            write_policy_violations(results_dir / POLICY_VIOLATIONS_FILE, rates)
    if plot and plots_available():
        draw_live_plots(results_dir)
    out = results_dir / SUMMARY_MD
    out.write_text(render_summary(results_dir, policies), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: summary.py RESULTS_DIR   (rebuilds policies.json, the plot and SUMMARY.md)",
              file=sys.stderr)
        return 2
    print(f"wrote {build(Path(args[0]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
