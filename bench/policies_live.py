"""Benchmark (issue 4 acceptance): every scheduling policy live on this machine, then the simulator's
prediction of the same runs from `heddle profile`'s table and the server's recorded trace.

One run, in order:
1. zoo models built at bench sizes (a CNN for the frames, a transformer encoder for the background),
   and a generated config with this box's devices: cpu0 and cpu1 (ONNX Runtime, one pinned core
   each) and py0 (python stages);
2. `heddle profile` on that config twice: isolated (each model alone through the executors) and
   `--under-load` (the bench's own load on a server of its own: run times as serving sees them);
3. `heddle serve --trace` on that config (a subprocess): a fcfs warm-up, then the policies in
   interleaved rounds (switched with Admin.SetPolicy), each facing a periodic high-priority frame
   stream with a deadline (preprocess -> CNN -> postprocess) plus a saturating low-priority
   background (closed loop, encoder -> classifier, no deadline);
4. per policy, its part of the trace replayed by `heddle simulate --trace --profile --platform local`
   with each profile, and with the run's own trace as a diagnostic (same_run);
5. JSON out: live and simulated deadline violation rate (DVR) and p99 per priority class, the
   error of each prediction, and the acceptance checks (twill's live DVR at most half of fcfs's;
   each prediction from the under-load profile within 25%, or 2 points for a DVR).

Live figures are the server's: a request's latency is its total_ms (arrival at the scheduler to
its end), the span the simulator models; a violation is a non-OK answer or deadline_missed.
Figures and checks: bench/policies_compare.py.

    .venv/bin/python -m bench.policies_live                    # all policies, ~5 minutes
    .venv/bin/python -m bench.policies_live --policy fcfs --policy twill --duration-s 15
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench import harness
from bench.harness import (
    CPU_PROVIDERS,
    HEDDLE,
    ROOT,
    free_port,
    machine_info,
    pinned_devices,
    results_path,
    save_report,
    server_process,
    set_niceness,
)
from bench.policies_compare import (
    BACKGROUND_PRIORITY,
    FRAME_PRIORITY,
    acceptance,
    compare,
    live_figures,
    print_table,
    profile_summary,
)
from heddle.backends.zoo.build import build_model
from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.loadgen import RequestRecord, run_load
from heddle.clients.scenarios import App, Scenario
from heddle.scheduler.policies import POLICIES
from heddle.scheduler.sim.platforms import DLA_UNSUPPORTED_OPS
from heddle.server.config.builder import document, onnx_device, onnx_model, pipeline, python_device, stage, tensor
from heddle.server.config.default import FRAME_OPS

WARMUP = "warmup"  # fcfs load before the policies: lazy initialisation, the server's estimates settle


def build_models(cache: Path, args: argparse.Namespace) -> dict[str, Path]:
    widths = [int(w) for w in args.cnn_widths.split(",")]
    return {
        "frame_cnn": build_model("cnn", cache, widths=widths, blocks=args.cnn_blocks),
        "bg_encoder": build_model("encoder", cache, layers=args.encoder_layers, hidden=args.encoder_hidden,
                                  heads=4, max_seq=max(128, args.seq)),
        "bg_cls": build_model("text_cls", cache, hidden=args.encoder_hidden),
    }


# CFS periods per kind, not the actuator's 10 ms default. Short enough that a 5 ms CNN stage on the
# 58% "DLA" does not fit in one period's quota and run at full speed (at 10 ms it did: cnn 5.0 ms on
# dla0 and on gpu0, so the box was not heterogeneous for frames); long enough that every level's quota
# is at least the kernel's 1 ms minimum (a shorter quota is raised to 1 ms: at a 2 ms period the 15%
# "CPU cluster" ran at 50%). gpu0's 33% and dla0's 29% need >= 3.5 ms; cpu0's 8% needs 12.5 ms.
BANDWIDTH_PERIOD_US = {"gpu": 4000, "dla": 4000, "cpu": 12500}


def emulated_devices() -> list[dict[str, Any]]:
    """An Orin NX-like heterogeneous box on this machine's two cores (issue #15), each factor from
    scheduler/sim/platforms.py's ORIN_NX: "gpu0" owns core 0 at full speed; "dla0" gets 58% of core 1
    through a cgroup (resnet50 on a DLA: 1.08 / 1.87 ms of the GPU's speed) and refuses the
    transformer op types a DLA lacks (DLA_UNSUPPORTED_OPS); "cpu0" gets 15% of core 1 (the real CPU
    cluster is ~100x slower than the GPU on CNNs; 15% is the floor that still finishes a stage
    inside the frames' deadline)."""
    dla_ops = list(DLA_UNSUPPORTED_OPS)
    return [onnx_device("gpu0", cores=[0], kind="gpu", providers=CPU_PROVIDERS),
            onnx_device("dla0", cores=[1], kind="dla", providers=CPU_PROVIDERS, unsupported_ops=dla_ops,
                        dvfs={"kind": "cgroup", "values": [58], "period_us": BANDWIDTH_PERIOD_US["dla"]}),
            onnx_device("cpu0", cores=[1], kind="cpu", providers=CPU_PROVIDERS,
                        dvfs={"kind": "cgroup", "values": [15], "period_us": BANDWIDTH_PERIOD_US["cpu"]}),
            python_device("py0", slots=2, kind="cpu")]


def write_config(work: Path, models: dict[str, Path], grpc_port: int, metrics_port: int, box: str = "local",
                 devices: list[dict[str, Any]] | None = None, power: dict[str, Any] | None = None) -> Path:
    """Two pinned CPU devices and py0 (box "local"), or the emulated heterogeneous box (or `devices`);
    the frame chain (python -> CNN -> python) and the background text pipeline (encoder -> classifier)."""
    image, ids = tensor("image", "UINT8", (-1, 64, 64, 3)), tensor("input_ids", "INT64", (-1, -1))
    frames = pipeline("frames", [image], {"probs": "post.probs", "label": "post.label"}, [
        stage("pre", "preprocess", image="input:image"), stage("cnn", "frame_cnn", image="pre.image"),
        stage("post", "postprocess", logits="cnn.logits")],
        description="camera frame: preprocess (python) -> CNN -> postprocess (python)")
    background = pipeline("background", [ids, tensor("attention_mask", "INT64", (-1, -1))], {"logits": "cls.logits"}, [
        stage("encoder", "bg_encoder", input_ids="input:input_ids", attention_mask="input:attention_mask"),
        stage("cls", "bg_cls", pooled="encoder.pooled")],
        description="background text: transformer encoder -> classifier")
    server = {"policy": "fcfs", "grpc_port": grpc_port, "metrics_port": metrics_port, "cache_dir": str(work / "cache")}
    if devices is None:
        devices = emulated_devices() if box == "emulated" else pinned_devices([0, 1])
    doc = document(server=server, power=power, devices=devices, pipelines=[frames, background], models=[
        onnx_model("frame_cnn", str(models["frame_cnn"])),
        onnx_model("bg_encoder", str(models["bg_encoder"]), kind="transformer"),
        onnx_model("bg_cls", str(models["bg_cls"])), *FRAME_OPS])
    return harness.write_config(work / "config.toml", doc)


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
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads(out.read_text())


async def run_live(target: str, policies: list[str], args: argparse.Namespace) -> dict[str, list[RequestRecord]]:
    """Against one server: a warm-up under fcfs (the server's own estimates settle), then the
    policies in interleaved rounds, so a shared box's drift falls on every policy alike."""
    rng = np.random.default_rng(args.seed)
    inputs = app_inputs(args, rng)
    load = scenario(args)
    out: dict[str, list[RequestRecord]] = {}
    schedule = [(WARMUP, args.warmup_s)] + [(p, args.duration_s / args.rounds)
                                             for _ in range(args.rounds) for p in policies]
    async with AsyncHeddleClient(target) as client:
        for i, (policy, seconds) in enumerate(schedule):
            await client.set_policy("fcfs" if policy == WARMUP else policy)
            # No gRPC timeout: heddle takes one as the request's deadline, and the background has none.
            result = await run_load(client, load, inputs, seed=args.seed + i, drain_s=20.0, request_timeout_s=None,
                                    duration_s=seconds)
            out.setdefault(policy, []).extend(result.records)
    for policy, records in out.items():
        live = live_figures(records)
        print(f"  live {policy:<12} DVR {100 * live['violation_rate']:5.1f} %  frames p99 "
              f"{live['per_class'][str(FRAME_PRIORITY)]['p99_ms']:7.1f} ms  background "
              f"{live['per_class'][str(BACKGROUND_PRIORITY)]['requests']} req", flush=True)
    return out


def profile_under_load(config: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`heddle profile --under-load` on the bench's own scenario, in a server of its own before
    the live one: the table a user would measure on this box for this load."""
    scenario_file = out.with_suffix(".scenario.toml")
    scenario_file.write_text(scenario_toml(scenario(args)))
    cmd = [*HEDDLE, "profile", "--config", str(config), "--under-load", str(args.profile_load_s),
           "--scenario", str(scenario_file), "--shape", f"background:input_ids=1x{args.seq}",
           "--shape", f"background:attention_mask=1x{args.seq}", "--seed", str(args.seed), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies from /proc/stat: on a VM, CPU time the host gave to others, which
    no table measured beforehand can know about; (0, 0) where it cannot be read."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def steal_pct(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 2) if total > 0 else None


def scenario_toml(load: Scenario) -> str:
    lines = [f"name = {json.dumps(load.name)}", f"description = {json.dumps(load.description)}"]
    for app in load.apps:
        lines += ["", "[[apps]]"] + [f"{k} = {json.dumps(v)}" for k, v in asdict(app).items()
                                     if v is not None and not isinstance(v, (dict, list))]
    return "\n".join(lines) + "\n"


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


def simulate(trace: Path, profile_path: Path, policy: str, work: Path, extra: list[str],
             replicas: int) -> dict[str, Any]:
    out = work / f"sim_{policy}_{profile_path.stem}.json"
    subprocess.run([*HEDDLE, "simulate", "--trace", str(trace), "--profile", str(profile_path),
                    "--platform", "local", "--policy", policy, "--closed", "background", "--json", str(out),
                    "--replicas", str(replicas), *extra],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())["results"][0]
    return {"violation_rate": result["violation_rate"], "requests": result["requests"],
            "migrations": result["migrations"], "freezes": result["freezes"],
            "per_class": {str(p): c for p, c in result["per_class"].items()}, "placements": result["placements"]}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.monotonic()
    models = build_models(work / "models", args)
    grpc_port, metrics_port = free_port(), free_port()
    config = write_config(work, models, grpc_port, metrics_port, args.box)
    print("heddle profile (isolated, through the executors) ...", flush=True)
    isolated = profile(config, work / "profile.json", args)
    print(f"heddle profile --under-load {args.profile_load_s:g} (the bench's load, a server of its own) ...",
          flush=True)
    t0 = cpu_ticks()
    under_load = profile_under_load(config, work / "profile_under_load.json", args)
    t1 = cpu_ticks()
    trace = work / "trace.jsonl"
    target = f"127.0.0.1:{grpc_port}"
    print(f"serving {target}; warm-up {args.warmup_s:g} s, then {len(args.policy)} policies x {args.duration_s:g} s "
          f"in {args.rounds} interleaved rounds", flush=True)
    with server_process([*HEDDLE, "serve", "--config", str(config), "--trace", str(trace), "--http-port", "0",
                         "--log-level", "warning"], target, work / "server.log"):
        records = asyncio.run(run_live(target, args.policy, args))
    t2 = cpu_ticks()
    steal = {"profile_under_load": steal_pct(t0, t1), "live": steal_pct(t1, t2)}
    print(f"CPU steal (host time given to other VMs): {steal['profile_under_load']}% while profiling under load, "
          f"{steal['live']}% while live", flush=True)
    traces = split_trace(trace, records, work)
    for policy, rs in records.items():  # per request, for looking into a surprising figure
        (work / f"records_{policy}.json").write_text(json.dumps([asdict(r) for r in rs]) + "\n")
    results = {}
    for policy in args.policy:
        live = live_figures(records[policy])
        results[policy] = {"live": live}
        own = work / f"profile_run_{policy}.json"
        profile_from_trace(traces[policy], own)
        tables = {"isolated": work / "profile.json", "under_load": work / "profile_under_load.json",
                  "same_run": own}
        for name, path in tables.items():
            extra = ["--local-window-s", str(args.local_window_s)] if name == "same_run" else []
            sim = simulate(traces[policy], path, policy, work, extra, args.sim_replicas)
            results[policy][f"sim_{name}"] = sim
            results[policy][f"compare_{name}"] = compare(live, sim, args.tolerance, args.dvr_floor)
    return {
        "benchmark": "policies_live", "date": dt.date.today().isoformat(), "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "scenario": [asdict(a) for a in scenario(args).apps],
        "warmup": live_figures(records[WARMUP]),
        "profiles": {"isolated": profile_summary(isolated), "under_load": profile_summary(under_load)},
        "cpu_steal_pct": steal,
        "results": results, "acceptance": acceptance(results), "elapsed_s": time.monotonic() - started,
        "files": {"config": str(config), "trace": str(trace), "work": str(work)},
    }


def profile_from_trace(trace: Path, out: Path) -> dict[str, Any]:
    subprocess.run([*HEDDLE, "profile", "--from-trace", str(trace), "--out", str(out)], check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", action="append", help="policy to run (repeatable; default: all)")
    p.add_argument("--box", choices=("local", "emulated"), default="local",
                   help="local: two pinned CPU devices; emulated: an Orin NX-like gpu/dla/cpu box through "
                        "cgroup bandwidth caps (needs a writable cgroup; issue #15)")
    p.add_argument("--duration-s", type=float, default=25.0, help="live load per policy")
    p.add_argument("--rounds", type=int, default=5,
                   help="the policies take turns, duration-s / rounds each per round (drift hits all alike)")
    p.add_argument("--warmup-s", type=float, default=5.0, help="load under fcfs before the policies")
    p.add_argument("--profile-load-s", type=float, default=15.0, help="heddle profile --under-load seconds")
    p.add_argument("--fps", type=float, default=20.0, help="frame stream rate")
    p.add_argument("--deadline-ms", type=float, default=40.0, help="frame deadline")
    p.add_argument("--jitter-ms", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=8, help="background requests kept in flight")
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
    p.add_argument("--sim-replicas", type=int, default=5,
                   help="each prediction is the mean of this many replays (seeds seed, seed+1, ...)")
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
    args.nice = set_niceness(args.nice)
    out = results_path("policies_live.json", args.out)
    work = out.parent / "policies_live-work"  # models, traces, records: git-ignored
    work.mkdir(parents=True, exist_ok=True)
    report = run(args, work)
    print_table(report)
    save_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
