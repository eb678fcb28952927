"""Benchmark (issue 4 acceptance): every scheduling policy live on this machine, then the simulator's
prediction of the same runs from `heddle profile`'s table and the server's recorded trace.

One run, in order:
1. zoo models built at bench sizes (a CNN for the frames, a transformer encoder for the background),
   and a generated config with this box's devices: cpu0 and cpu1 (ONNX Runtime, one pinned core
   each) and py0 (python stages);
2. `heddle profile` on that config: the measured run-time table;
3. `heddle serve --trace` on that config (a subprocess); per policy (switched with Admin.SetPolicy):
   a periodic high-priority frame stream with a deadline (preprocess -> CNN -> postprocess) plus a
   saturating low-priority background (closed loop, encoder -> classifier, no deadline);
4. per policy, its part of the trace replayed by `heddle simulate --trace --profile --platform local`;
5. JSON out: live and simulated deadline violation rate (DVR) and p50/p99 per priority class, the
   error of each prediction, and the acceptance checks (twill's live DVR at most half of fcfs's;
   each prediction within 25%).

Live figures are the server's: a request's latency is its total_ms (arrival at the scheduler to
its end), the span the simulator models; a violation is a non-OK answer or deadline_missed.

    .venv/bin/python bench/policies_live.py                    # all policies, ~5 minutes
    .venv/bin/python bench/policies_live.py --policy fcfs --policy twill --duration-s 15
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from dataclasses import asdict
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway_overhead import free_port, machine_info, server_process

from heddle.backends.zoo.build import build_model
from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.loadgen import RequestRecord, run_load
from heddle.clients.scenarios import App, Scenario
from heddle.scheduler.policies import POLICIES
from heddle.scheduler.tracefile import percentile

BENCH_DIR = Path(__file__).resolve().parent
HEDDLE = [sys.executable, "-m", "heddle.server.cli"]
FRAME_PRIORITY, BACKGROUND_PRIORITY = 4, 1
CALIBRATION = "calibration"  # the fcfs run whose recorded stage runs make the under-load profile
# Run-time tables the simulator is fed: `heddle profile` through the executors, one device at a
# time; `heddle profile --from-trace` of the calibration run; and of the very run predicted (drawn
# near the same moment: --local-window-s). The acceptance is judged on the last.
PROFILES = ("isolated", "calibration", "same_run")


def build_models(cache: Path, args: argparse.Namespace) -> dict[str, Path]:
    widths = [int(w) for w in args.cnn_widths.split(",")]
    return {
        "frame_cnn": build_model("cnn", cache, widths=widths, blocks=args.cnn_blocks),
        "bg_encoder": build_model("encoder", cache, layers=args.encoder_layers, hidden=args.encoder_hidden,
                                  heads=4, max_seq=max(128, args.seq)),
        "bg_cls": build_model("text_cls", cache, hidden=args.encoder_hidden),
    }


def write_config(work: Path, models: dict[str, Path], grpc_port: int, metrics_port: int) -> Path:
    text = f"""[server]
policy = "fcfs"
grpc_port = {grpc_port}
metrics_port = {metrics_port}
cache_dir = "{work / 'cache'}"

[[devices]]
id = "cpu0"
kind = "cpu"
backend = "onnxruntime"
providers = ["CPUExecutionProvider"]
intra_op_threads = 1
cpu_affinity = [0]

[[devices]]
id = "cpu1"
kind = "cpu"
backend = "onnxruntime"
providers = ["CPUExecutionProvider"]
intra_op_threads = 1
cpu_affinity = [1]

[[devices]]
id = "py0"
kind = "cpu"
backend = "python"
slots = 2

[[models]]
name = "frame_cnn"
path = "{models['frame_cnn']}"

[[models]]
name = "bg_encoder"
kind = "transformer"
path = "{models['bg_encoder']}"

[[models]]
name = "bg_cls"
path = "{models['bg_cls']}"

[[models]]
name = "preprocess"
backend = "python"
function = "heddle.backends.zoo.ops:preprocess"
inputs = [{{ name = "image", datatype = "UINT8", shape = [-1, 64, 64, 3] }}]
outputs = [{{ name = "image", datatype = "FP32", shape = [-1, 3, 64, 64] }}]

[[models]]
name = "postprocess"
backend = "python"
function = "heddle.backends.zoo.ops:postprocess"
inputs = [{{ name = "logits", datatype = "FP32", shape = [-1, 10] }}]
outputs = [
  {{ name = "probs", datatype = "FP32", shape = [-1, 10] }},
  {{ name = "label", datatype = "INT64", shape = [-1] }},
]

[[pipelines]]
name = "frames"
description = "camera frame: preprocess (python) -> CNN -> postprocess (python)"
inputs = [{{ name = "image", datatype = "UINT8", shape = [-1, 64, 64, 3] }}]
outputs = {{ probs = "post.probs", label = "post.label" }}
stages = [
  {{ name = "pre", model = "preprocess", inputs = {{ image = "input:image" }} }},
  {{ name = "cnn", model = "frame_cnn", inputs = {{ image = "pre.image" }} }},
  {{ name = "post", model = "postprocess", inputs = {{ logits = "cnn.logits" }} }},
]

[[pipelines]]
name = "background"
description = "background text: transformer encoder -> classifier"
inputs = [
  {{ name = "input_ids", datatype = "INT64", shape = [-1, -1] }},
  {{ name = "attention_mask", datatype = "INT64", shape = [-1, -1] }},
]
outputs = {{ logits = "cls.logits" }}
stages = [
  {{ name = "encoder", model = "bg_encoder", inputs = {{ input_ids = "input:input_ids", attention_mask = "input:attention_mask" }} }},
  {{ name = "cls", model = "bg_cls", inputs = {{ pooled = "encoder.pooled" }} }},
]
"""
    path = work / "config.toml"
    path.write_text(text)
    return path


def scenario(args: argparse.Namespace) -> Scenario:
    return Scenario("policies_live", (
        App("frames", "frames", "periodic", priority=FRAME_PRIORITY, deadline_ms=args.deadline_ms,
            rate_hz=args.fps, jitter_ms=args.jitter_ms),
        App("background", "background", "closed", priority=BACKGROUND_PRIORITY, concurrency=args.concurrency),
    ), "periodic high-priority frames with a deadline + a saturating low-priority closed loop")


def app_inputs(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, list[dict[str, np.ndarray]]]:
    return {
        "frames": [{"image": rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)} for _ in range(4)],
        "background": [{"input_ids": rng.integers(0, 100, (1, args.seq), dtype=np.int64),
                        "attention_mask": np.ones((1, args.seq), dtype=np.int64)} for _ in range(4)],
    }


def profile(config: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [*HEDDLE, "profile", "--config", str(config), "--runs", str(args.profile_runs), "--warmup", "5",
           "--shape", f"bg_encoder:input_ids=1x{args.seq}", "--shape", f"bg_encoder:attention_mask=1x{args.seq}",
           "--out", str(out)]
    if args.profile_parallel:
        cmd.append("--parallel")
    subprocess.run(cmd, check=True, cwd=BENCH_DIR.parent)
    return json.loads(out.read_text())


async def run_live(target: str, policies: list[str], args: argparse.Namespace) -> dict[str, list[RequestRecord]]:
    """Against one server: a calibration run under fcfs (its trace becomes the under-load profile;
    the server's own estimates settle), then each policy in turn."""
    rng = np.random.default_rng(args.seed)
    inputs = app_inputs(args, rng)
    load = scenario(args)
    out = {}
    async with AsyncHeddleClient(target) as client:
        for i, policy in enumerate([CALIBRATION, *policies]):
            await client.set_policy("fcfs" if policy == CALIBRATION else policy)
            t0 = time.monotonic()
            # No gRPC timeout: heddle takes one as the request's deadline, and the background has none.
            result = await run_load(client, load, inputs, seed=args.seed + i, drain_s=20.0, request_timeout_s=None,
                                    duration_s=args.calibration_s if policy == CALIBRATION else args.duration_s)
            out[policy] = result.records
            live = live_figures(result.records)
            print(f"  live {policy:<12} DVR {100 * live['violation_rate']:5.1f} %  frames p99 "
                  f"{live['per_class'][str(FRAME_PRIORITY)]['p99_ms']:7.1f} ms  background "
                  f"{live['per_class'][str(BACKGROUND_PRIORITY)]['requests']} req  ({time.monotonic() - t0:.0f} s)",
                  flush=True)
    return out


def live_figures(records: list[RequestRecord]) -> dict[str, Any]:
    """The simulator's figures from the live records: DVR over requests with a deadline (non-OK
    or late), p50/p99 of the server's total latency over OK requests, per priority class."""
    def stats(rs: list[RequestRecord]) -> dict[str, Any]:
        due = [r for r in rs if r.deadline_ms is not None]
        late = [r for r in due if r.status != "OK" or r.server_deadline_missed]
        ok = [r.server_total_ms for r in rs if r.status == "OK"]
        return {"requests": len(rs), "with_deadline": len(due), "violations": len(late),
                "violation_rate": len(late) / len(due) if due else 0.0,
                "p50_ms": percentile(ok, 50), "p99_ms": percentile(ok, 99),
                "statuses": {s: sum(r.status == s for r in rs) for s in sorted({r.status for r in rs})}}

    figures = stats(records)
    figures["per_class"] = {str(p): stats([r for r in records if r.priority == p])
                            for p in sorted({r.priority for r in records}, reverse=True)}
    runs: dict[str, list[float]] = {}
    for r in records:
        for s in r.stages:
            if s["status"] == "OK":
                runs.setdefault(f"{s['stage']}@{s['device']}", []).append(s["compute_ms"])
    figures["stage_compute_ms"] = {k: {"runs": len(v), "mean": float(np.mean(v)), "p50": percentile(v, 50),
                                       "p95": percentile(v, 95)} for k, v in sorted(runs.items())}
    return figures


def split_trace(trace: Path, records: dict[str, list[RequestRecord]], work: Path) -> dict[str, Path]:
    """One trace file per policy: the header and the arrivals of that policy's requests."""
    lines = trace.read_text().splitlines()
    header = lines[0]
    ids = {policy: {r.request_id for r in rs} for policy, rs in records.items()}
    out = {}
    for policy, wanted in ids.items():
        kept = [line for line in lines[1:] if json.loads(line).get("request_id") in wanted]
        path = work / f"trace_{policy}.jsonl"
        path.write_text("\n".join([header, *kept]) + "\n")
        out[policy] = path
    return out


def simulate(trace: Path, profile_path: Path, policy: str, work: Path, extra: list[str]) -> dict[str, Any]:
    out = work / f"sim_{policy}_{profile_path.stem}.json"
    subprocess.run([*HEDDLE, "simulate", "--trace", str(trace), "--profile", str(profile_path),
                    "--platform", "local", "--policy", policy, "--closed", "background", "--json", str(out), *extra],
                   check=True, cwd=BENCH_DIR.parent, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())["results"][0]
    return {"violation_rate": result["violation_rate"], "requests": result["requests"],
            "migrations": result["migrations"], "freezes": result["freezes"],
            "per_class": {str(p): c for p, c in result["per_class"].items()}, "placements": result["placements"]}


def within(live: float, sim: float, rel: float, abs_floor: float) -> dict[str, Any]:
    """Is the prediction within rel of the live figure (or abs_floor of it, for figures near 0)?"""
    if any(isinstance(v, float) and math.isnan(v) for v in (live, sim)):
        return {"live": live, "sim": sim, "rel_error": None, "ok": False}
    err = abs(sim - live)
    return {"live": live, "sim": sim, "rel_error": err / live if live else None,
            "ok": err <= rel * abs(live) or err <= abs_floor}


def compare(live: dict, sim: dict, args: argparse.Namespace) -> dict[str, Any]:
    out = {"violation_rate": within(live["violation_rate"], sim["violation_rate"], args.tolerance, args.dvr_floor)}
    for p, c in live["per_class"].items():
        if p in sim["per_class"]:
            out[f"p99_ms_prio{p}"] = within(c["p99_ms"], sim["per_class"][p]["p99_ms"], args.tolerance, 0.0)
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.monotonic()
    models = build_models(work / "models", args)
    grpc_port, metrics_port = free_port(), free_port()
    config = write_config(work, models, grpc_port, metrics_port)
    print("profiling (isolated, through the executors) ...", flush=True)
    isolated = profile(config, work / "profile.json", args)
    trace = work / "trace.jsonl"
    target = f"127.0.0.1:{grpc_port}"
    print(f"serving {target}; calibration {args.calibration_s:g} s, then {len(args.policy)} policies x "
          f"{args.duration_s:g} s", flush=True)
    with server_process([*HEDDLE, "serve", "--config", str(config), "--trace", str(trace), "--log-level",
                         "warning"], target, work / "server.log"):
        records = asyncio.run(run_live(target, args.policy, args))
    traces = split_trace(trace, records, work)
    for policy, rs in records.items():  # per request, for looking into a surprising figure
        (work / f"records_{policy}.json").write_text(json.dumps([asdict(r) for r in rs]) + "\n")
    calibration = profile_from_trace(traces[CALIBRATION], work / "profile_calibration.json")
    profiles = {"isolated": work / "profile.json", "calibration": work / "profile_calibration.json"}
    results = {}
    for policy in args.policy:
        live = live_figures(records[policy])
        results[policy] = {"live": live}
        own = work / f"profile_run_{policy}.json"
        profile_from_trace(traces[policy], own)
        for name, path in {**profiles, "same_run": own}.items():
            extra = ["--local-window-s", str(args.local_window_s)] if name == "same_run" else []
            sim = simulate(traces[policy], path, policy, work, extra)
            results[policy][f"sim_{name}"] = sim
            results[policy][f"compare_{name}"] = compare(live, sim, args)
    return {
        "benchmark": "policies_live", "date": dt.date.today().isoformat(), "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "scenario": [asdict(a) for a in scenario(args).apps],
        "calibration": live_figures(records[CALIBRATION]),
        "profiles": {name: _profile_summary(doc) for name, doc in (("isolated", isolated), ("calibration", calibration))},
        "results": results, "acceptance": acceptance(results), "elapsed_s": time.monotonic() - started,
        "files": {"config": str(config), "trace": str(trace), **{k: str(v) for k, v in profiles.items()}},
    }


def profile_from_trace(trace: Path, out: Path) -> dict[str, Any]:
    subprocess.run([*HEDDLE, "profile", "--from-trace", str(trace), "--out", str(out)], check=True,
                   cwd=BENCH_DIR.parent, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def _profile_summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {f"{e['model']}@{e['device']}": {"runs": e["runs"], "mean_ms": 1e3 * e["latency_s"],
                                            "p50_ms": 1e3 * e["p50_s"], "p95_ms": 1e3 * e["tail_s"]}
            for e in doc["entries"]}


def acceptance(results: dict[str, Any]) -> dict[str, Any]:
    fcfs, twill = results.get("fcfs"), results.get("twill")
    out: dict[str, Any] = {"twill_dvr_at_most_half_of_fcfs": (
        twill["live"]["violation_rate"] <= 0.5 * fcfs["live"]["violation_rate"] if fcfs and twill else None)}
    for name in PROFILES:
        checks = [(policy, key, c["ok"]) for policy, r in results.items() for key, c in r[f"compare_{name}"].items()]
        out[f"sim_{name}_within_tolerance"] = {
            "all": all(ok for *_, ok in checks),
            **{key: all(ok for _, k, ok in checks if k == key) for key in sorted({k for _, k, _ in checks})},
            "misses": [f"{policy}: {key}" for policy, key, ok in checks if not ok]}
    out["sim_predicts_live"] = out["sim_same_run_within_tolerance"]["all"]
    return out


def print_table(report: dict[str, Any]) -> None:
    for name in PROFILES:
        print(f"\nsimulated with the {name} profile")
        print(f"{'policy':<12} {'DVR live':>9} {'DVR sim':>8} {'frames p99 live/sim ms':>23} "
              f"{'bg p99 live/sim ms':>19}  within")
        for policy, r in report["results"].items():
            c = r[f"compare_{name}"]
            fp, bp = c.get(f"p99_ms_prio{FRAME_PRIORITY}", {}), c.get(f"p99_ms_prio{BACKGROUND_PRIORITY}", {})
            print(f"{policy:<12} {100 * c['violation_rate']['live']:8.1f}% {100 * c['violation_rate']['sim']:7.1f}% "
                  f"{fp.get('live', math.nan):11.1f}/{fp.get('sim', math.nan):<11.1f} "
                  f"{bp.get('live', math.nan):9.1f}/{bp.get('sim', math.nan):<9.1f}  "
                  f"{'yes' if all(x['ok'] for x in c.values()) else 'NO'}")
    print(f"\nacceptance: {json.dumps(report['acceptance'])}  ({report['elapsed_s']:.0f} s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", action="append", help="policy to run (repeatable; default: all)")
    p.add_argument("--duration-s", type=float, default=25.0, help="live load per policy")
    p.add_argument("--calibration-s", type=float, default=10.0,
                   help="load under fcfs before the policies, recorded for the under-load profile")
    p.add_argument("--fps", type=float, default=20.0, help="frame stream rate")
    p.add_argument("--deadline-ms", type=float, default=40.0, help="frame deadline")
    p.add_argument("--jitter-ms", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=4, help="background requests kept in flight")
    p.add_argument("--seq", type=int, default=64, help="background sequence length")
    p.add_argument("--cnn-widths", default="48,96,96")
    p.add_argument("--cnn-blocks", type=int, default=2)
    p.add_argument("--encoder-layers", type=int, default=4)
    p.add_argument("--encoder-hidden", type=int, default=256)
    p.add_argument("--profile-runs", type=int, default=40)
    p.add_argument("--profile-parallel", action="store_true", help="heddle profile --parallel")
    p.add_argument("--tolerance", type=float, default=0.25, help="relative error allowed of a prediction")
    p.add_argument("--dvr-floor", type=float, default=0.02,
                   help="absolute DVR error always allowed (25%% of a rate near 0 is below one run's resolution)")
    p.add_argument("--local-window-s", type=float, default=0.5,
                   help="same-run replays draw each run time from the runs recorded this close to it")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nice", type=int, default=-10,
                   help="niceness for the bench, profile and server processes (below 0 needs root): other "
                        "work on a shared box then disturbs the measurement less")
    p.add_argument("--out", help="JSON report (default bench/results/<date>/policies_live.json)")
    args = p.parse_args(argv)
    args.policy = args.policy or list(POLICIES)
    unknown = sorted(set(args.policy) - set(POLICIES))
    if unknown:
        p.error(f"unknown policies {unknown}; known: {sorted(POLICIES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        os.nice(args.nice - os.nice(0))  # children inherit it
    except PermissionError:
        print(f"cannot set niceness {args.nice} (not root); running at {os.nice(0)}", file=sys.stderr)
    args.nice = os.nice(0)
    out = Path(args.out) if args.out else BENCH_DIR / "results" / dt.date.today().isoformat() / "policies_live.json"
    work = out.parent / "policies_live-work"  # models, traces, records: git-ignored
    work.mkdir(parents=True, exist_ok=True)
    report = run(args, work)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
