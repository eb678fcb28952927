"""Where a replay parts from the live run (issue #15 item 5): per (stage, device), the live stage runs'
queueing (ready to dispatch), service (dispatch to end as the scheduler saw it) and the backend's own
compute, beside the replay's queueing and service of the same requests, and how many runs each put
there. A gap in service says the run-time table lacks an effect; a gap in queueing with service
right says the scheduler's view or the load differs.

    .venv/bin/python -m bench.sim_vs_live bench/results/<date>/live_eval-work            # every seed and policy
    .venv/bin/python -m bench.sim_vs_live WORK --seed 1 --policy twill --policy fcfs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from heddle.scheduler.sim.profile_fill import fill_missing
from heddle.scheduler.sim.replay import ReplayLog, replay
from heddle.scheduler.sim.tracefile import MeasuredProfile, Trace, parse_profile, parse_trace

__all__ = ["compare_runs", "live_runs", "main", "sim_runs"]

# (request, stage) -> (ready_s, start_s, end_s, device, compute_s or None)
Runs = dict[tuple[str, str], tuple[float, float, float, str, float | None]]


def _upstream(trace: Trace) -> dict[tuple[str, str], list[str]]:
    """(pipeline, stage) -> the stages whose outputs it reads."""
    return {(name, s.name): list(s.after) for name, p in trace.pipelines.items() for s in p.stages}


def _with_ready(starts: Mapping[tuple[str, str], tuple[float, float, str, float | None]],
                arrival_s: Mapping[str, float], pipeline_of: Mapping[str, str],
                upstream: Mapping[tuple[str, str], list[str]]) -> Runs:
    out: Runs = {}
    for (rid, stage), (start, end, device, compute) in starts.items():
        ups = [starts[(rid, u)][1] for u in upstream[(pipeline_of[rid], stage)] if (rid, u) in starts]
        out[(rid, stage)] = (max([arrival_s[rid], *ups]), start, end, device, compute)
    return out


def live_runs(trace: Trace) -> Runs:
    """The live stage runs of a trace, each with when it became ready."""
    t0 = trace.arrivals[0].time_s
    arrival = {a.request_id: a.time_s - t0 for a in trace.arrivals}
    pipeline_of = {a.request_id: a.pipeline for a in trace.arrivals}
    starts = {(r.request_id, r.stage): (r.time_s - t0 - r.run_s, r.time_s - t0, r.device, r.compute_s)
              for r in trace.stage_runs if r.request_id in arrival}
    return _with_ready(starts, arrival, pipeline_of, _upstream(trace))


def sim_runs(trace: Trace, profile: MeasuredProfile, policy: str, seed: int, closed: Iterable[str]) -> Runs:
    """The replay's stage runs of the same trace (bench/policies_live.py's replay settings)."""
    log = ReplayLog()
    replay(trace, profile, policy, seed=seed, closed=tuple(closed), log=log)
    pipeline_of = {a.request_id: a.pipeline for a in trace.arrivals}
    starts = {(m.request_id, m.stage): (start, end, d.device, None) for start, end, d in log.runs for m in d.members}
    arrival = {r.request_id: r.arrival_s for r in log.requests}  # closed-loop ones: when the replay sent them
    return _with_ready(starts, arrival, pipeline_of, _upstream(trace))


def _mean(values: list[float]) -> float | None:
    return round(1e3 * statistics.fmean(values), 3) if values else None


def compare_runs(live: Runs, sim: Runs) -> dict[str, Any]:
    """Per stage@device: runs, mean queue and service (ms) live and simulated, live compute."""
    keys = sorted({(s, r[3]) for (_, s), r in live.items()} | {(s, r[3]) for (_, s), r in sim.items()})
    out = {}
    for stage, device in keys:
        lv = [r for (_, s), r in live.items() if s == stage and r[3] == device]
        sm = [r for (_, s), r in sim.items() if s == stage and r[3] == device]
        out[f"{stage}@{device}"] = {
            "runs": [len(lv), len(sm)],
            "queue_ms": [_mean([r[1] - r[0] for r in lv]), _mean([r[1] - r[0] for r in sm])],
            "service_ms": [_mean([r[2] - r[1] for r in lv]), _mean([r[2] - r[1] for r in sm])],
            "live_compute_ms": _mean([r[4] for r in lv if r[4] is not None]),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work", type=Path, help="a live_eval work folder (seed<N>/trace_<policy>.jsonl, profiles)")
    p.add_argument("--seed", type=int, action="append", help="seeds (default: every seed<N> folder)")
    p.add_argument("--policy", action="append", help="policies (default: every trace_<policy>.jsonl)")
    p.add_argument("--profile", default="profile_under_load.json")
    p.add_argument("--fill-from", default="profile.json", help="isolated profile for the pairs --profile lacks "
                   "('' for none)")
    p.add_argument("--out", type=Path, help="JSON out (default: print only)")
    args = p.parse_args(argv)
    measured = parse_profile(json.loads((args.work / args.profile).read_text()))
    isolated = parse_profile(json.loads((args.work / args.fill_from).read_text())) if args.fill_from else None
    seeds = args.seed or sorted(int(d.name[4:]) for d in args.work.glob("seed*") if d.is_dir())
    report: dict[str, Any] = {}
    for seed in seeds:
        folder = args.work / f"seed{seed}"
        policies = args.policy or sorted(f.stem[6:] for f in folder.glob("trace_*.jsonl") if f.stem != "trace_warmup")
        for policy in policies:
            trace = parse_trace((folder / f"trace_{policy}.jsonl").read_text())
            profile = measured if isolated is None else fill_missing(measured, isolated, trace.bandwidth)
            rows = compare_runs(live_runs(trace), sim_runs(trace, profile, policy, seed, ["background"]))
            report[f"seed{seed}/{policy}"] = rows
            print(f"\nseed {seed} {policy}: stage@device  runs live/sim  queue ms live/sim  service ms live/sim  "
                  "live compute ms")
            for key, r in rows.items():
                print(f"  {key:<16} {r['runs'][0]:5d}/{r['runs'][1]:<5d} {r['queue_ms'][0]!s:>8}/"
                      f"{r['queue_ms'][1]!s:<8} {r['service_ms'][0]!s:>8}/{r['service_ms'][1]!s:<8} "
                      f"{r['live_compute_ms']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
