"""SUMMARY.md of a benchmark-suite results folder: one markdown table per part, built from its JSON files.

    .venv/bin/python -m bench.summary bench/results/2026-11-22     # rebuild policies.json, plot, SUMMARY.md

Inputs (any may be missing; the summary says which part did not run):
  run_all.json          what bench/run_all.py ran: settings, machine, each part's status and time
  gateway_overhead.json bench/gateway_overhead.py
  triton_vs_heddle.json bench/triton_vs_heddle.py
  policies/<scenario>/<policy>/   one `heddle bench` report folder per run (run.json, requests.jsonl)
                        plus policy.json (the policy the server confirmed); policies.json is
                        recomputed from these raw records every time, so it can always be checked.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

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
               "sched": "scheduler cost", "tiny": "tiny model vs Triton", "perf": "perf_analyzer sweep"}
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

def _f(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.1f}%"


def _x(ratio: float | None) -> str:
    return "–" if ratio is None else f"x{ratio:.2f}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def gateway_table(doc: Mapping[str, Any]) -> list[str]:
    """Per mode: sequential and concurrent latency, throughput, server CPU; then the ratio rows."""
    rows = []
    for mode, r in doc["results"].items():
        seq, conc = r["sequential"], r["concurrent"]
        rows.append([mode, _f(seq["p50_ms"]), _f(seq["p99_ms"]), _f(conc["p50_ms"]), _f(conc["p99_ms"]),
                     _f(conc["throughput_rps"], 0), _f(conc.get("server_cpu_ms_per_request"))])
    for name, r in doc.get("ratios", {}).items():
        rows.append([name, *(_x(r.get(k)) for k in (
            "sequential.p50_ms", "sequential.p99_ms", "concurrent.p50_ms", "concurrent.p99_ms",
            "concurrent.throughput_rps")), ""])
    return _table(("mode", "seq p50 ms", "seq p99 ms", "conc p50 ms", "conc p99 ms", "req/s",
                   "server CPU ms/req"), rows)


def _server_cpu(value: Any) -> float | None:
    # triton_vs_heddle reports CPU per server process ({"triton": .., "heddle": ..}): both serve.
    if isinstance(value, Mapping):
        return sum(v for v in value.values() if v is not None)
    return value


def triton_table(doc: Mapping[str, Any]) -> list[str]:
    """Per target and client count: throughput, latency, ratios to the reference target, CPU, errors."""
    ratios = doc.get("ratios", {})
    base = next((k.split("/", 1)[1] for k in ratios), None)
    rows = []
    for target, by_conc in doc["results"].items():
        r_target = ratios.get(f"{target}/{base}", {})
        for conc, s in by_conc.items():
            r = r_target.get(conc, {})
            rows.append([target, str(conc), _f(s.get("throughput_rps"), 1), _f(s.get("p50_ms")),
                         _f(s.get("p99_ms")), _x(r.get("p50_ms")), _x(r.get("p99_ms")),
                         _x(r.get("throughput_rps")), _f(_server_cpu(s.get("server_cpu_ms_per_request"))),
                         str(s.get("errors", "–"))])
    ref = f"/{base}" if base else ""
    return _table(("target", "clients", "req/s", "p50 ms", "p99 ms", f"p50 x{ref}", f"p99 x{ref}",
                   f"req/s x{ref}", "server CPU ms/req", "errors"), rows)


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


def _gateway_section(doc: Mapping[str, Any] | None) -> list[str]:
    lines = ["## 1. Gateway overhead vs a raw gRPC echo", ""]
    if doc is None:
        return lines + ["Not run (no gateway_overhead.json).", ""]
    p = doc.get("params", {})
    lines += [f"{p.get('requests')} requests per phase, {p.get('request_bytes')}-byte request, "
              f"{p.get('concurrency')} concurrent clients; `x` rows are heddle / raw echo "
              "(latency > 1 and req/s < 1 are what the gateway costs).", ""]
    return lines + gateway_table(doc) + [""]


def _triton_section(doc: Mapping[str, Any] | None, note: str | None) -> list[str]:
    lines = ["## 2. heddle vs a real Triton server on the same models", ""]
    if doc is None:
        return lines + [f"Not run ({note or 'no triton_vs_heddle.json'}).", ""]
    p = doc.get("params", {})
    models = ", ".join(f"{t} = `{m}`" for t, m in p.get("models", {}).items())
    lines += [f"Closed loop, {p.get('duration_s')} s measured per point after {p.get('warmup_s')} s "
              f"warm-up; models: {models}. Server CPU sums every server process involved.", ""]
    lines += triton_table(doc) + [""]
    return lines + [f"- {n}" for n in doc.get("notes", [])] + ([""] if doc.get("notes") else [])


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


def _sched_section(doc: Mapping[str, Any] | None) -> list[str]:
    lines = ["## 4. Scheduler core cost per stage decision", ""]
    if doc is None:
        return lines + ["Not run (no sched_cost.json).", ""]
    depths = [str(d) for d in doc.get("params", {}).get("depths", [])]
    lines += [f"Core work per decision ({doc.get('params', {}).get('clock')} clock), µs, at each queue depth; "
              "trace: per request on the recorded camera_analytics trace, and its ratio to edf. Targets: "
              f"{doc.get('targets')}.", "",
              "| policy | " + " | ".join(f"{d} queued" for d in depths) + " | trace µs/request | ÷ edf |",
              "|---|" + "---:|" * (len(depths) + 2)]
    for policy, by_depth in doc.get("depth", {}).items():
        trace = doc.get("trace", {}).get(policy, {})
        cells = [_f(by_depth.get(d, {}).get("us_per_decision"), 0) for d in depths]
        lines.append(f"| {policy} | " + " | ".join(cells)
                     + f" | {_f(trace.get('us_per_request'), 0)} | {_f(trace.get('ratio_to_edf'), 2)} |")
    return lines + [""]


def _tiny_section(doc: Mapping[str, Any] | None) -> list[str]:
    lines = ["## 5. The tiny one-stage model: heddle vs Triton (dynamic batcher on) vs a raw gRPC echo", ""]
    if doc is None:
        return lines + ["Not run (no tiny_vs_triton.json).", ""]
    p = doc.get("params", {})
    lines += [f"Closed loop, {p.get('duration_s')} s per point, median of {p.get('rounds')} rounds; request "
              f"{p.get('request')}. Ratios of the first target to the second (p50 < 1 and req/s > 1 favour "
              "the first; server CPU is per request).", "",
              "| comparison | p50 | req/s | server CPU |", "|---|---:|---:|---:|"]
    for name, r in doc.get("median_ratios", {}).items():
        lines.append(f"| {name} | {_f(r.get('p50_ms'), 2)} | {_f(r.get('throughput_rps'), 2)} | "
                     f"{_f(r.get('server_cpu_ms_per_request'), 2)} |")
    return lines + [""]


def _perf_section(doc: Mapping[str, Any] | None) -> list[str]:
    lines = ["## 6. perf_analyzer against heddle's KServe port and a real Triton", ""]
    if doc is None:
        return lines + ["Not run (no perf_analyzer.json).", ""]
    rows: dict[tuple[str, float], dict[str, float]] = {}
    for run in doc.get("runs", []):
        model = run.get("heddle_model") or run.get("model")
        for row in run.get("rows", []):
            rows.setdefault((model, row["concurrency"]), {})[run["target"]] = row["throughput_infer_per_s"]
    lines += [f"{doc.get('perf_analyzer')}; throughput in inferences/s per concurrency.", "",
              "| model | concurrency | heddle | Triton | heddle ÷ Triton |", "|---|---:|---:|---:|---:|"]
    for (model, c), t in sorted(rows.items()):
        h, tr = t.get("heddle"), t.get("triton")
        ratio = h / tr if h and tr else None
        lines.append(f"| {model} | {c:.0f} | {_f(h, 0)} | {_f(tr, 0)} | {_f(ratio, 2)} |")
    return lines + [""]


def render_summary(results_dir: Path, policies: Mapping[str, Any] | None = None) -> str:
    """SUMMARY.md's text from the folder's JSON files (policies: collect_policies's or policies.json)."""
    manifest = _load(results_dir / MANIFEST_JSON)
    gateway, triton = _load(results_dir / GATEWAY_JSON), _load(results_dir / TRITON_JSON)
    if policies is None:
        policies = _load(results_dir / POLICIES_JSON)
    machine = (manifest or {}).get("machine") or (gateway or {}).get("machine") or (triton or {}).get("machine")
    triton_note = ((manifest or {}).get("parts", {}).get("triton") or {}).get("note")
    plot = results_dir / POLICY_VIOLATIONS_FILE
    lines = [*_header(results_dir, manifest, machine), *_gateway_section(gateway),
             *_triton_section(triton, triton_note),
             *_policies_section(policies, plot if plot.exists() else None),
             *_sched_section(_load(results_dir / SCHED_JSON)), *_tiny_section(_load(results_dir / TINY_JSON)),
             *_perf_section(_load(results_dir / PERF_JSON)),
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
