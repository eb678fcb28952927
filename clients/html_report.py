"""The bench's one-page HTML report: run description, tables per app and class, and the plots.

The page is self-contained (plots embedded as base64 PNG, CSS inline, no scripts), so it can be
mailed or attached to a CI run and still render; it reads summary.json's content, nothing else.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from heddle.clients.report import COVERED_EXTRA

__all__ = ["HTML_FILE", "render_html", "write_html"]

HTML_FILE = "report.html"
_LAG_WARN_MS = 10.0  # p99 send lag above this: the client did not keep to the arrival schedule

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto;
       max-width: 1240px; color: #1d2330; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 2px; } h2 { font-size: 17px; margin-top: 28px; }
.sub { color: #5a6372; margin-top: 0; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.card { border: 1px solid #d8dde6; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card .v { font-size: 20px; font-weight: 600; } .card .k { color: #5a6372; font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0 4px; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
th, td { border-bottom: 1px solid #e3e7ee; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f5f9; font-weight: 600; } th.grp { text-align: center; border-left: 2px solid #fff; } td:first-child, th:first-child { text-align: left; }
td:first-child { white-space: normal; max-width: 250px; }
.bad { color: #b3261e; font-weight: 600; } .warn { background: #fff4d6; padding: 6px 10px; }
.plots img { max-width: 100%; border: 1px solid #e3e7ee; margin: 6px 0; }
.meta { color: #5a6372; font-size: 12px; }
.note { color: #5a6372; font-size: 12.5px; } dt { font-weight: 600; } dd { margin: 0 0 6px 16px; }
"""  # noqa: E501 (CSS, one line per group of rules)


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return escape(str(value))


def _pct(rate: float | None) -> str:
    return "–" if rate is None else f"{100 * rate:.1f}%"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table; a header "group|name" goes under a spanning "group" cell in a first header row."""
    groups: list[list[Any]] = []  # [group, span]
    for h in headers:
        group = h.split("|")[0] if "|" in h else ""
        if groups and groups[-1][0] == group:
            groups[-1][1] += 1
        else:
            groups.append([group, 1])
    top = ""
    if any(g for g, _ in groups):
        top = "<tr>" + "".join(f'<th colspan="{n}" class="grp">{escape(g)}</th>' for g, n in groups) + "</tr>"
    head = "".join(f"<th>{escape(h.split('|')[-1])}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return (f'<div class="scroll"><table><thead>{top}<tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _lat(s: Mapping[str, Any], key: str) -> str:
    return _num((s["latency_ms"] or {}).get(key), 2)


def _group_row(label: str, s: Mapping[str, Any]) -> list[str]:
    rate = _pct(s["violation_rate"])
    rate = f'<span class="bad">{rate}</span>' if (s["violation_rate"] or 0) > 0.05 else rate
    return [label, _num(s["requests"]), _num(s["ok"]), _num(s["errors"]),
            _num(s["throughput_rps"]), _num(s["goodput_rps"]), rate,
            *(_lat(s, k) for k in ("p50", "p90", "p99", "max")),
            _num(s["server_total_ms_mean"], 2), _num(s["queue_ms_mean"], 2),
            _num(s["compute_ms_mean"], 2), _num(s["client_overhead_ms_mean"], 2)]


_FIGURE_HEADERS = ("requests|sent", "requests|ok", "requests|errors", "per second|throughput",
                   "per second|goodput", "deadline|violations", "latency ms|p50", "latency ms|p90",
                   "latency ms|p99", "latency ms|max", "mean ms|server", "mean ms|queue",
                   "mean ms|compute", "mean ms|overhead")


def _app_label(name: str, s: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    deadline = meta.get("deadline_ms")
    offered = meta.get("offered_rps")
    parts = [s["pipeline"], f"priority {_num(s['priority'])}",
             f"deadline {deadline:g} ms" if deadline else "no deadline",
             f"{meta.get('arrival', '')} {offered:g}/s" if offered is not None
             else f"closed loop x{meta.get('concurrency', '?')}"]
    if meta.get("stream") or meta.get("max_new_tokens"):
        parts.append(("streamed" if meta.get("stream") else "unary")
                     + (f", {meta['max_new_tokens']} tokens" if meta.get("max_new_tokens") else ""))
    return f'<b>{escape(name)}</b><br><span class="meta">{escape(" · ".join(parts))}</span>'


def _apps_table(summary: Mapping[str, Any], apps_meta: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [_group_row(_app_label(name, s, apps_meta.get(name, {})), s)
            for name, s in summary["apps"].items()]
    return _table(("app", *_FIGURE_HEADERS), rows)


def _classes_table(summary: Mapping[str, Any]) -> str:
    rows = [_group_row(f"priority {escape(p)}", s) for p, s in summary["classes"].items()]
    rows.append(_group_row("all", summary["total"]))
    return _table(("class", *_FIGURE_HEADERS), rows)


def _status_table(summary: Mapping[str, Any]) -> str:
    groups = [*summary["apps"].items(), ("all", summary["total"])]
    codes = sorted({c for _, s in groups for c in s["status_counts"]})
    rows = [[escape(name), *(_num(s["status_counts"].get(c, 0)) for c in codes), _num(s["unfinished"])]
            for name, s in groups]
    return _table(("app", *codes, "unfinished (stopped by bench)"), rows)


def _server_metrics(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return ""
    queue = metrics.get("stage_queue", {})
    rows = []
    for key, c in metrics.get("stage_compute", {}).items():
        stage, _, device = key.rpartition("/")
        q = queue.get(stage)
        rows.append([escape(stage), escape(device), _num(c["count"], 0),
                     _num(q["mean_ms"], 2) if q else "–", _num(c["mean_ms"], 2)])
    table = _table(("pipeline/stage", "device", "runs", "queue mean ms (all devices)",
                    "compute mean ms"), rows)
    return f"<h2>Server view (/metrics, during the run)</h2>{table}"


def _groups(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, figures) for every app, every priority class and all."""
    return [*((f"<b>{escape(n)}</b>", s) for n, s in summary["apps"].items()),
            *((f"priority {escape(p)}", s) for p, s in summary["classes"].items()), ("all", summary["total"])]


def _d(dist: Mapping[str, Any] | None, key: str, digits: int = 2) -> str:
    return _num((dist or {}).get(key), digits)


def _llm_table(summary: Mapping[str, Any]) -> str:
    rows = [[label, _num(g["requests"]), _num(g["tokens"], 0), _num(g["tokens_per_s"]),
             *(_d(g["ttft_ms"], k) for k in ("p50", "p90", "p99")),
             *(_d(g["client_ttft_ms"], k) for k in ("p50", "p99")),
             *(_d(g["tpot_ms"], k) for k in ("p50", "p99")), _d(g["request_tokens_per_s"], "p50", 1)]
            for label, s in _groups(summary) if (g := s["llm"])]
    if not rows:
        return ""
    return "<h2>LLM generation (OK requests that generated tokens)</h2>" + _table(
        ("app / class", "generations", "tokens", "tokens|per s of load", "TTFT ms, server|p50",
         "TTFT ms, server|p90", "TTFT ms, server|p99", "TTFT ms, client (streamed)|p50",
         "TTFT ms, client (streamed)|p99", "TPOT ms|p50", "TPOT ms|p99", "tokens/s per request|p50"), rows)


def _energy_table(summary: Mapping[str, Any]) -> str:
    rows = [[label, escape(e["label"]), _num(e["requests"]), _num(e["mean_j"], 3), _num(e["total_j"], 2),
             _num(e["j_per_token"], 4)] for label, s in _groups(summary) if (e := s["energy"])]
    if not rows:
        return ""
    estimated = any(s["energy"] and s["energy"]["label"] != "measured" for _, s in _groups(summary))
    title = "Energy per request" + (" (estimated: no power sensor measured it)" if estimated else "")
    return f"<h2>{escape(title)}</h2>" + _table(
        ("app / class", "source", "requests", "J per request (mean)", "J in all", "J per token"), rows)


def _rejections_table(summary: Mapping[str, Any]) -> str:
    rows = [[label, escape(code), _num(r["count"]), _num(r["with_retry_hint"]),
             _d(r["retry_after_ms"], "p50", 0), _d(r["retry_after_ms"], "max", 0)]
            for label, s in _groups(summary)[:len(summary["apps"])] + [("all", summary["total"])]
            for code, r in s["rejections"].items()]
    if not rows:
        return ""
    return "<h2>Errors by reason</h2>" + _table(
        ("app", "status", "requests", "with retry hint", "retry after ms|p50", "retry after ms|max"), rows)


def _extra(summary: Mapping[str, Any]) -> str:
    rows = [[escape(name), escape(key), _num(d.get("p50"), 2), _num(d.get("p99"), 2), _num(d.get("mean"), 2)]
            for name, s in summary["apps"].items() for key, d in s["extra"].items()
            if d and key not in COVERED_EXTRA]
    if not rows:
        return ""
    return "<h2>Further per-request figures</h2>" + _table(("app", "figure", "p50", "p99", "mean"), rows)


def _plots(images: Mapping[str, Path]) -> str:
    tags = []
    for name, path in images.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        tags.append(f'<img alt="{escape(name)}" src="data:image/png;base64,{data}">')
    return '<h2>Plots</h2><div class="plots">' + "".join(tags) + "</div>" if tags else ""


def _cards(total: Mapping[str, Any]) -> str:
    cards = [("requests", _num(total["requests"])), ("throughput /s", _num(total["throughput_rps"])),
             ("goodput /s", _num(total["goodput_rps"])), ("violations", _pct(total["violation_rate"])),
             ("p99 latency ms", _lat(total, "p99")), ("errors", _num(total["errors"]))]
    if total["llm"]:
        cards += [("LLM tokens /s", _num(total["llm"]["tokens_per_s"])),
                  ("TTFT p99 ms", _d(total["llm"]["ttft_ms"], "p99"))]
    if total["energy"]:
        cards.append((f"J per request ({total['energy']['label']})", _num(total["energy"]["mean_j"], 3)))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{v}</div><div class="k">{escape(k)}</div></div>'
        for k, v in cards) + "</div>"


def render_html(doc: Mapping[str, Any], images: Mapping[str, Path] | None = None) -> str:
    """The page for a summary.json document ({"run", "summary", optional "server_metrics"})."""
    run, summary = doc["run"], doc["summary"]
    scenario = run.get("scenario", {})
    apps_meta = {a["name"]: a for a in scenario.get("apps", [])}
    warn = ('<p class="warn">Stopped early (interrupted): figures cover the part that ran.</p>'
            if run.get("interrupted") else "")
    lag_p99 = (summary["total"]["send_lag_ms"] or {}).get("p99") or 0.0
    if lag_p99 > _LAG_WARN_MS:
        warn += (f'<p class="warn">The load generator fell behind: p99 send lag {lag_p99:,.1f} ms, so the '
                 "offered load was lower than the scenario's; a client on the server's cores "
                 "also inflates latency (see overhead).</p>")
    sub = (f"target {escape(str(run.get('target')))} · {escape(str(run.get('started_at')))} · "
           f"{summary['window_s']:.1f} s of load · seed {escape(str(run.get('seed')))} · "
           f"client host {escape(str(run.get('host', '')))}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>heddle bench: {escape(scenario.get('name', ''))}</title>
<style>{_CSS}</style></head><body>
<h1>heddle bench — {escape(scenario.get('name', ''))}</h1>
<p class="sub">{escape(scenario.get('description', ''))}<br>{sub}</p>{warn}
{_cards(summary['total'])}
<h2>Per app</h2>{_apps_table(summary, apps_meta)}
<h2>Per priority class</h2>{_classes_table(summary)}
<h2>Outcomes by gRPC status</h2>{_status_table(summary)}{_rejections_table(summary)}
{_llm_table(summary)}{_energy_table(summary)}
{_server_metrics(doc.get('server_metrics'))}{_extra(summary)}{_plots(images or {})}
<h2>How to read this</h2><dl class="note">
<dt>throughput / goodput</dt><dd>OK responses per second of load; goodput counts only those that met their deadline (or had none).</dd>
<dt>violations</dt><dd>finished requests with a deadline that were not OK in time (late, shed with DEADLINE_EXCEEDED, or failed), over finished requests with a deadline.</dd>
<dt>latency</dt><dd>client-measured, send to response, OK responses only. server: the server's own end-to-end time; queue / compute: sums over a request's stages of time queued and time running (parallel stages both count); overhead: client latency minus server time (network, gRPC in both processes, client; a saturated server loop shows here too).</dd>
<dt>LLM generation</dt><dd>requests that generated tokens, OK only. tokens per s of load: their tokens over the run's window; TTFT server: from the request's arrival at the server to its first token; TTFT client: from send to the first streamed token (apps with stream = true); TPOT: mean time between tokens of a generation (generations of 2+ tokens); tokens/s per request: a request's tokens over its client latency.</dd>
<dt>energy</dt><dd>joules per OK request as the server accounted them; "estimated" when no power sensor measured them (a model of power per device state), so compare them between runs on one box, not as watt-hours.</dd>
<dt>errors by reason</dt><dd>per status code, how many requests ended so and how many carried a retry hint (the server's retry-after-ms, sent with admission refusals).</dd>
<dt>source</dt><dd>every figure is recomputed from {escape(str(run.get('records_file', 'requests.jsonl')))} beside this page; see docs/BENCHMARKS.md.</dd>
</dl></body></html>
"""  # noqa: E501 (HTML prose, one line per definition)


def write_html(path: Path, doc: Mapping[str, Any], images: Mapping[str, Path] | None = None) -> Path:
    """Write render_html's page to path."""
    path.write_text(render_html(doc, images), encoding="utf-8")
    return path
