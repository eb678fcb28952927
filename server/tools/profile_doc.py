"""The profile document `heddle profile` writes: per (model, device, batch rows) the run times and
their summary, from runs timed through the executors or from a live server's trace.

Apart from profile_cmd.py, which owns measuring (sample inputs, the eligible pairs, timing on
each device's worker) and the command line: the document's shape is shared by both ways of
getting the times, and by profile_load.py's under-load runs, which read a trace.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Mapping
from typing import Any

from heddle.scheduler.sim.tracefile import PROFILE_FORMAT, dispatch_gaps, parse_trace, percentile

__all__ = ["format_rows", "profile_document", "profile_from_trace"]

_SCHEDULING_OPTIONS = ("unsupported_ops", "supported_ops")  # device options the replay needs


def profile_from_trace(trace_text: str, source: str, min_runs: int = 3) -> dict[str, Any]:
    """A profile from a live server's trace: per (model, device), the recorded stage runs as its
    scheduler saw them (dispatch to completion), i.e. measured under serving load."""
    trace = parse_trace(trace_text)
    runs: dict[tuple[str, str, int], list] = {}
    for r in sorted(trace.stage_runs, key=lambda r: r.time_s - r.run_s):
        if r.pass_owner:  # a batch's pass once, as a point of its batch curve (rows > 1)
            runs.setdefault((r.model, r.device, r.rows), []).append(r)
    runs = {k: v for k, v in runs.items() if len(v) >= min_runs}
    if not runs:
        raise ValueError(f"trace {source} has no stage runs recorded ({min_runs} or more per model and device)")
    used = {d for _, d, _ in runs}
    models = {m: {"backend": "", "op_types": [], "inputs": {}} for m, _, _ in sorted(runs)}
    doc = profile_document(source, [d for d in trace.devices if d.id in used], models,
                    {k: [r.run_s for r in v] for k, v in runs.items()},
                    {"method": "trace", "stage_runs": len(trace.stage_runs),
                     "trace_started_unix_s": trace.started_unix_s})
    for entry in doc["entries"]:  # when each run was dispatched, for replays that follow the machine's drift
        entry["sample_t_s"] = [round(r.time_s - r.run_s, 6)
                               for r in runs[(entry["model"], entry["device"], entry.get("batch", 1))]]
    doc["dispatch_gap_s"] = {d: round(g, 7) for d, g in dispatch_gaps(trace).items() if d in used}
    return doc


def profile_document(source: str, devices, models: Mapping, samples: Mapping[tuple[str, str, int], list[float]],
              method: Mapping[str, Any]) -> dict[str, Any]:
    """samples: (model, device, rows per pass) -> run times; a batched pass is an entry with its `batch`."""
    entries = [{
        "model": name, "device": device, "level": 0, **({"batch": rows} if rows > 1 else {}), "runs": len(runs),
        "latency_s": sum(runs) / len(runs), "tail_s": percentile(runs, 95),
        "p50_s": percentile(runs, 50), "p99_s": percentile(runs, 99), "min_s": min(runs), "max_s": max(runs),
        "samples_s": [round(s, 7) for s in runs],
    } for (name, device, rows), runs in samples.items()]
    return {
        "format": PROFILE_FORMAT, "created_unix_s": time.time(), "source": source, **method,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "processor": platform.processor() or platform.machine()},
        "devices": [{"id": d.id, "kind": d.kind, "backend": d.backend, "slots": d.slots,
                     "options": {k: list(v) for k, v in d.options.items() if k in _SCHEDULING_OPTIONS}}
                    for d in devices],
        "models": dict(models),
        "entries": entries,
    }


def format_rows(doc: Mapping[str, Any]) -> str:
    head = (f"{'model':<16} {'device':<8} {'batch':>5} {'runs':>5} {'mean ms':>9} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'p99 ms':>8}")
    rows = [f"{e['model']:<16} {e['device']:<8} {e.get('batch', 1):>5} {e['runs']:>5} {1e3 * e['latency_s']:>9.3f} "
            f"{1e3 * e['p50_s']:>8.3f} {1e3 * e['tail_s']:>8.3f} {1e3 * e['p99_s']:>8.3f}" for e in doc["entries"]]
    return "\n".join([head, *rows])
