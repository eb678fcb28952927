"""Bench reports from raw per-request records: the records file, the summary (JSON and CSV).

Every figure in a summary is a function of the records file and the run's window_s (run.json),
so `summarize(read_records(...), window_s)` on the saved files gives the saved summary again.
Definitions (docs/BENCHMARKS.md explains how to read them):
- finished: the server answered (OK or an error); unfinished: cancelled by the bench at its end.
- deadline met: OK, the server did not flag it late, and client latency <= deadline_ms.
- throughput: OK responses / window_s; goodput: OK responses that met their deadline (or had
  none) / window_s; violation rate: finished requests with a deadline that did not meet it,
  over finished requests with a deadline.
- latency percentiles: numpy's default (linear interpolation), over OK responses only.
- llm (None when no OK record has `tokens`): over OK records with `tokens` in `extra`: tokens in
  all, tokens_per_s = those tokens / window_s, ttft_ms (server: arrival to first token),
  client_ttft_ms (streamed requests: send to first token event), tpot_ms (generations of more
  than one token), client_tpot_ms (streamed: first to last token event / (tokens - 1); the only
  figures a stream over the OpenAI API has), request_tokens_per_s = tokens / client latency of each request.
- energy (None when no OK record has `energy_j`): mean and total joules per OK request that has
  it, joules per generated token, labelled "estimated" unless every one was measured.
- rejections: per non-OK status of finished records, how many, how many carried a retry hint
  (retry_after_ms), and the hints' distribution.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from heddle.clients.loadgen import RequestRecord

__all__ = [
    "COVERED_EXTRA", "RECORDS_FILE", "RUN_FILE", "SUMMARY_CSV", "SUMMARY_JSON", "csv_rows", "deadline_met",
    "group_stats", "read_records", "summarize", "write_csv", "write_records", "write_summary",
]

RECORDS_FILE = "requests.jsonl"
RUN_FILE = "run.json"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
_PERCENTILES = (50, 90, 99)
# extra keys that the llm and energy figures cover: the CSV and HTML do not repeat them raw.
COVERED_EXTRA = frozenset({"tokens", "ttft_ms", "client_ttft_ms", "tpot_ms", "client_tpot_ms", "energy_j",
                           "energy_estimated"})


def write_records(path: Path, records: Iterable[RequestRecord]) -> None:
    """One JSON object per line, fields as in RequestRecord."""
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(dataclasses.asdict(rec), separators=(",", ":")) + "\n")


def read_records(path: Path) -> list[RequestRecord]:
    """The records a write_records file holds."""
    with open(path, encoding="utf-8") as f:
        return [RequestRecord(**json.loads(line)) for line in f if line.strip()]


def deadline_met(rec: RequestRecord) -> bool:
    """True for an OK response in time (always, for OK without a deadline); False otherwise."""
    if rec.status != "OK" or rec.server_deadline_missed:
        return False
    return rec.deadline_ms is None or rec.latency_ms <= rec.deadline_ms


def _dist(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    out = {f"p{q}": float(np.percentile(arr, q)) for q in _PERCENTILES}
    out.update(max=float(arr.max()), mean=float(arr.mean()))
    return out


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def group_stats(records: Sequence[RequestRecord], window_s: float) -> dict[str, Any]:
    """The figures for one group of records (an app, a priority class, or all)."""
    finished = [r for r in records if not r.client_cancelled]
    ok = [r for r in finished if r.status == "OK"]
    timed = [r for r in ok if r.server_total_ms is not None]
    with_deadline = [r for r in finished if r.deadline_ms is not None]
    met = sum(deadline_met(r) for r in with_deadline)
    status_counts: dict[str, int] = {}
    for r in finished:
        status_counts[r.status] = status_counts.get(r.status, 0) + 1
    return {
        "requests": len(records),
        "finished": len(finished),
        "unfinished": len(records) - len(finished),
        "ok": len(ok),
        "errors": len(finished) - len(ok),
        "status_counts": dict(sorted(status_counts.items())),
        "with_deadline": len(with_deadline),
        "deadline_met": met,
        "deadline_violations": len(with_deadline) - met,
        "violation_rate": (len(with_deadline) - met) / len(with_deadline) if with_deadline else None,
        "throughput_rps": len(ok) / window_s if window_s > 0 else None,
        "goodput_rps": sum(deadline_met(r) for r in ok) / window_s if window_s > 0 else None,
        "latency_ms": _dist([r.latency_ms for r in ok]),
        "server_total_ms_mean": _mean([r.server_total_ms for r in timed]),
        "queue_ms_mean": _mean([r.queue_ms for r in timed]),
        "compute_ms_mean": _mean([r.compute_ms for r in timed]),
        "client_overhead_ms_mean": _mean([r.latency_ms - r.server_total_ms for r in timed]),
        "queue_ms": _dist([r.queue_ms for r in timed]),
        "send_lag_ms": _dist([(r.sent_s - r.scheduled_s) * 1e3 for r in records]),
        "llm": _llm_stats(ok, window_s),
        "energy": _energy_stats(ok),
        "rejections": _rejections(finished),
        "extra": _extra_stats(records),
    }


def _extra_of(records: Sequence[RequestRecord], key: str) -> list[float]:
    return [float(r.extra[key]) for r in records if key in r.extra]


def _llm_stats(ok: Sequence[RequestRecord], window_s: float) -> dict[str, Any] | None:
    gens = [r for r in ok if "tokens" in r.extra]
    if not gens:
        return None
    tokens = sum(_extra_of(gens, "tokens"))
    # One token has no interval between tokens: its tpot (0) would drag the figure down.
    return {
        "requests": len(gens),
        "tokens": tokens,
        "tokens_per_s": tokens / window_s if window_s > 0 else None,
        "ttft_ms": _dist(_extra_of(gens, "ttft_ms")),
        "client_ttft_ms": _dist(_extra_of(gens, "client_ttft_ms")),
        "tpot_ms": _dist(_extra_of([r for r in gens if r.extra["tokens"] > 1], "tpot_ms")),
        "client_tpot_ms": _dist(_extra_of(gens, "client_tpot_ms")),
        "request_tokens_per_s": _dist([float(r.extra["tokens"]) / (r.latency_ms / 1e3)
                                       for r in gens if r.latency_ms > 0]),
    }


def _energy_stats(ok: Sequence[RequestRecord]) -> dict[str, Any] | None:
    metered = [r for r in ok if "energy_j" in r.extra]
    if not metered:
        return None
    joules = _extra_of(metered, "energy_j")
    llm = [r for r in metered if r.extra.get("tokens")]
    tokens = sum(_extra_of(llm, "tokens"))
    # A record without the flag counts as estimated: "measured" is claimed only when it was.
    estimated = any(r.extra.get("energy_estimated", 1.0) for r in metered)
    return {
        "requests": len(metered),
        "label": "estimated" if estimated else "measured",
        "mean_j": float(np.mean(joules)),
        "total_j": float(np.sum(joules)),
        "j_per_token": sum(_extra_of(llm, "energy_j")) / tokens if tokens else None,
    }


def _rejections(finished: Sequence[RequestRecord]) -> dict[str, dict[str, Any]]:
    by_status: dict[str, list[RequestRecord]] = {}
    for r in finished:
        if r.status != "OK":
            by_status.setdefault(r.status, []).append(r)
    out = {}
    for status, recs in sorted(by_status.items()):
        hints = [r.retry_after_ms for r in recs if r.retry_after_ms is not None]
        out[status] = {"count": len(recs), "with_retry_hint": len(hints), "retry_after_ms": _dist(hints)}
    return out


def _extra_stats(records: Sequence[RequestRecord]) -> dict[str, dict[str, float] | None]:
    # Every numeric key the records carry in `extra`, raw, over all records that have it; a new
    # per-request figure shows up here (and in the CSV) without being registered.
    keys = sorted({k for r in records for k in r.extra})
    return {k: _dist([float(r.extra[k]) for r in records if k in r.extra]) for k in keys}


def summarize(records: Sequence[RequestRecord], window_s: float,
              app_order: Sequence[str] = ()) -> dict[str, Any]:
    """Figures per app, per priority class and in total; apps in app_order, then by name."""
    by_app: dict[str, list[RequestRecord]] = {name: [] for name in app_order}
    by_class: dict[int, list[RequestRecord]] = {}
    for r in records:
        by_app.setdefault(r.app, []).append(r)
        by_class.setdefault(r.priority, []).append(r)
    apps = {}
    for name, recs in by_app.items():
        pipelines = sorted({r.pipeline for r in recs})
        priorities = sorted({r.priority for r in recs})
        apps[name] = {"pipeline": ",".join(pipelines), "priority": priorities[0] if len(priorities) == 1
                      else None, **group_stats(recs, window_s)}
    classes = {str(p): group_stats(by_class[p], window_s) for p in sorted(by_class, reverse=True)}
    return {"window_s": window_s, "total": group_stats(records, window_s), "apps": apps,
            "classes": classes}


def write_summary(path: Path, run: Mapping[str, Any], summary: Mapping[str, Any],
                  server_metrics: Mapping[str, Any] | None = None) -> None:
    """summary.json: the run description, the summary, and /metrics figures when scraped."""
    doc = {"run": dict(run), "summary": dict(summary)}
    if server_metrics is not None:
        doc["server_metrics"] = dict(server_metrics)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


_CSV_FIELDS = (
    "requests", "finished", "unfinished", "ok", "errors", "with_deadline", "deadline_met",
    "deadline_violations", "violation_rate", "throughput_rps", "goodput_rps",
    "server_total_ms_mean", "queue_ms_mean", "compute_ms_mean", "client_overhead_ms_mean",
)


def csv_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One flat row per app, per class and the total; nested figures become `latency_ms_p99` etc."""
    groups = [("app", name, s) for name, s in summary["apps"].items()]
    groups += [("class", name, s) for name, s in summary["classes"].items()]
    groups.append(("total", "all", summary["total"]))
    statuses = sorted({code for _, _, s in groups for code in s["status_counts"]})
    rows = []
    for kind, name, s in groups:
        row: dict[str, Any] = {"group": kind, "name": name, "pipeline": s.get("pipeline", ""),
                               "priority": s.get("priority", name if kind == "class" else "")}
        row.update({k: s[k] for k in _CSV_FIELDS})
        for nested in ("latency_ms", "queue_ms", "send_lag_ms"):
            for stat in ("p50", "p90", "p99", "max", "mean"):
                row[f"{nested}_{stat}"] = (s[nested] or {}).get(stat)
        row.update({f"status_{code}": s["status_counts"].get(code, 0) for code in statuses})
        row.update(_rejection_cells(s["rejections"], statuses))
        row.update(_llm_cells(s["llm"]))
        row.update(_energy_cells(s["energy"]))
        for key, dist in s["extra"].items():
            if key not in COVERED_EXTRA:
                row.update({f"{key}_{stat}": (dist or {}).get(stat) for stat in ("p50", "p99", "mean")})
        rows.append(row)
    return rows


def _rejection_cells(rejections: Mapping[str, Any], statuses: Sequence[str]) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for code in statuses:
        if code == "OK":
            continue
        r = rejections.get(code)
        cells[f"retry_hint_{code}"] = r["with_retry_hint"] if r else 0
        cells[f"retry_after_ms_p50_{code}"] = ((r or {}).get("retry_after_ms") or {}).get("p50")
    return cells


def _llm_cells(llm: Mapping[str, Any] | None) -> dict[str, Any]:
    if llm is None:
        return {}
    cells = {f"llm_{k}": llm[k] for k in ("requests", "tokens", "tokens_per_s")}
    for key, stats in (("ttft_ms", ("p50", "p90", "p99", "mean")), ("client_ttft_ms", ("p50", "p99", "mean")),
                       ("tpot_ms", ("p50", "p99", "mean")), ("client_tpot_ms", ("p50", "mean")),
                       ("request_tokens_per_s", ("p50", "mean"))):
        cells.update({f"llm_{key}_{stat}": (llm[key] or {}).get(stat) for stat in stats})
    return cells


def _energy_cells(energy: Mapping[str, Any] | None) -> dict[str, Any]:
    if energy is None:
        return {}
    return {f"energy_{k}": energy[k] for k in ("label", "requests", "mean_j", "total_j", "j_per_token")}


def write_csv(path: Path, summary: Mapping[str, Any]) -> None:
    """summary.csv: csv_rows with full float precision (repr), empty cells for missing figures."""
    rows = csv_rows(summary)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
