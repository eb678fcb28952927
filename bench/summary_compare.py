"""SUMMARY.md's sections of the comparison parts (bench/run_all.py gateway, triton, sched, tiny, perf):
gateway overhead, heddle vs Triton, the scheduler core's cost, the tiny model against Triton,
perf_analyzer on both servers; and the table cells every section uses. Split from summary.py,
which keeps the page, the policies part and its raw-record figures."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["cell", "gateway_section", "gateway_table", "md_table", "pct", "perf_section", "ratio", "sched_section",
           "tiny_section", "triton_section", "triton_table"]


def cell(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def pct(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.1f}%"


def ratio(value: float | None) -> str:
    return "–" if value is None else f"x{value:.2f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def gateway_table(doc: Mapping[str, Any]) -> list[str]:
    """Per mode: sequential and concurrent latency, throughput, server CPU; then the ratio rows."""
    rows = []
    for mode, r in doc["results"].items():
        seq, conc = r["sequential"], r["concurrent"]
        rows.append([mode, cell(seq["p50_ms"]), cell(seq["p99_ms"]), cell(conc["p50_ms"]), cell(conc["p99_ms"]),
                     cell(conc["throughput_rps"], 0), cell(conc.get("server_cpu_ms_per_request"))])
    for name, r in doc.get("ratios", {}).items():
        rows.append([name, *(ratio(r.get(k)) for k in (
            "sequential.p50_ms", "sequential.p99_ms", "concurrent.p50_ms", "concurrent.p99_ms",
            "concurrent.throughput_rps")), ""])
    return md_table(("mode", "seq p50 ms", "seq p99 ms", "conc p50 ms", "conc p99 ms", "req/s",
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
            rows.append([target, str(conc), cell(s.get("throughput_rps"), 1), cell(s.get("p50_ms")),
                         cell(s.get("p99_ms")), ratio(r.get("p50_ms")), ratio(r.get("p99_ms")),
                         ratio(r.get("throughput_rps")), cell(_server_cpu(s.get("server_cpu_ms_per_request"))),
                         str(s.get("errors", "–"))])
    ref = f"/{base}" if base else ""
    return md_table(("target", "clients", "req/s", "p50 ms", "p99 ms", f"p50 x{ref}", f"p99 x{ref}",
                   f"req/s x{ref}", "server CPU ms/req", "errors"), rows)


def gateway_section(doc: Mapping[str, Any] | None) -> list[str]:
    lines = ["## 1. Gateway overhead vs a raw gRPC echo", ""]
    if doc is None:
        return lines + ["Not run (no gateway_overhead.json).", ""]
    p = doc.get("params", {})
    lines += [f"{p.get('requests')} requests per phase, {p.get('request_bytes')}-byte request, "
              f"{p.get('concurrency')} concurrent clients; `x` rows are heddle / raw echo "
              "(latency > 1 and req/s < 1 are what the gateway costs).", ""]
    return lines + gateway_table(doc) + [""]


def triton_section(doc: Mapping[str, Any] | None, note: str | None) -> list[str]:
    lines = ["## 2. heddle vs a real Triton server on the same models", ""]
    if doc is None:
        return lines + [f"Not run ({note or 'no triton_vs_heddle.json'}).", ""]
    p = doc.get("params", {})
    models = ", ".join(f"{t} = `{m}`" for t, m in p.get("models", {}).items())
    lines += [f"Closed loop, {p.get('duration_s')} s measured per point after {p.get('warmup_s')} s "
              f"warm-up; models: {models}. Server CPU sums every server process involved.", ""]
    lines += triton_table(doc) + [""]
    return lines + [f"- {n}" for n in doc.get("notes", [])] + ([""] if doc.get("notes") else [])



def sched_section(doc: Mapping[str, Any] | None) -> list[str]:
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
        cells = [cell(by_depth.get(d, {}).get("us_per_decision"), 0) for d in depths]
        lines.append(f"| {policy} | " + " | ".join(cells)
                     + f" | {cell(trace.get('us_per_request'), 0)} | {cell(trace.get('ratio_to_edf'), 2)} |")
    return lines + [""]


def tiny_section(doc: Mapping[str, Any] | None) -> list[str]:
    lines = ["## 5. The tiny one-stage model: heddle vs Triton (dynamic batcher on) vs a raw gRPC echo", ""]
    if doc is None:
        return lines + ["Not run (no tiny_vs_triton.json).", ""]
    p = doc.get("params", {})
    lines += [f"Closed loop, {p.get('duration_s')} s per point, median of {p.get('rounds')} rounds; request "
              f"{p.get('request')}. Ratios of the first target to the second (p50 < 1 and req/s > 1 favour "
              "the first; server CPU is per request).", "",
              "| comparison | p50 | req/s | server CPU |", "|---|---:|---:|---:|"]
    for name, r in doc.get("median_ratios", {}).items():
        lines.append(f"| {name} | {cell(r.get('p50_ms'), 2)} | {cell(r.get('throughput_rps'), 2)} | "
                     f"{cell(r.get('server_cpu_ms_per_request'), 2)} |")
    return lines + [""]


def perf_section(doc: Mapping[str, Any] | None) -> list[str]:
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
        share = h / tr if h and tr else None
        lines.append(f"| {model} | {c:.0f} | {cell(h, 0)} | {cell(tr, 0)} | {cell(share, 2)} |")
    return lines + [""]
