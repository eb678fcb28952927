"""Benchmark (issue #15 item 3): the live evaluation on the emulated Orin NX-like box, every policy
over several seeds, each figure averaged over the seeds with its spread; then the simulator's
prediction of each policy from `heddle profile --under-load`'s table.

One run:
1. the models, the emulated box's config and its two profiles (isolated, under load), as
   bench/policies_live.py --box emulated makes them;
2. per seed, `heddle profile --under-load` (the box as it is then), then a `heddle serve --trace`
   of its own: a fcfs warm-up, then --rounds rounds in which
   every policy takes a turn (the order rotates each round, so a policy does not always follow
   the same one and the box's drift falls on all alike), switched with Admin.SetPolicy. Before
   and after each turn: the box's load average and the server's heddle_scheduler_actions
   counters (the turn's freezes and migrations);
3. per seed and policy: DVR, ANTT (latency / the pipeline's isolated critical path, the
   simulator's definition, from the isolated profile), mean and p99 latency per priority class,
   migrations, freezes, the turn's load average; and the simulator's prediction of that seed's
   arrivals (bench/policies_live.py's replay) from the under-load profile measured just before
   that seed's live run, its blind pairs filled from the isolated one (scheduler/sim/profile_fill.py);
4. JSON out (bench/results/<date>/live_eval.json): per seed, the mean over seeds with the
   spread (sample standard deviation, min, max), and the acceptance figures (bench/live_eval_figures.py).

Per-request files (traces, records, profiles) stay in the work folder (git-ignored), so the
simulation can be redone from them: --resimulate WORK.

    .venv/bin/python -m bench.live_eval                             # 3 seeds x 60 s per policy, ~25 min
    .venv/bin/python -m bench.live_eval --seeds 1 --duration-s 12   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench import policies_live as pl
from bench.harness import HEDDLE, free_port, machine_info, results_path, save_report, server_process, set_niceness
from bench.live_eval_figures import live_policy_figures, print_summary, summarise
from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.loadgen import RequestRecord, run_load
from heddle.scheduler.policies import POLICIES

__all__ = ["main", "scrape_actions", "turn_order"]


def scrape_actions(metrics_port: int) -> dict[str, float]:
    """heddle_scheduler_actions_total per action (freeze, migrate) from the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:  # noqa: S310
        text = reply.read().decode()
    out = {"freeze": 0.0, "migrate": 0.0}
    for line in text.splitlines():
        if line.startswith("heddle_scheduler_actions_total{"):
            action = line.split('action="', 1)[1].split('"', 1)[0]
            out[action] = float(line.rsplit(" ", 1)[1])
    return out


def turn_order(policies: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, policy) turns: every policy once per round, the order rotated by one each round."""
    return [(r, policies[(i + r) % len(policies)]) for r in range(rounds) for i in range(len(policies))]


async def run_seed(target: str, metrics_port: int, args: argparse.Namespace, seed: int
                   ) -> tuple[dict[str, list[RequestRecord]], list[dict[str, Any]]]:
    """One seed against one server: warm-up, then the turns; records per policy and one row per turn."""
    inputs = pl.app_inputs(args, np.random.default_rng(seed))
    load = pl.scenario(args)
    records: dict[str, list[RequestRecord]] = {}
    turns: list[dict[str, Any]] = []
    schedule = [(-1, pl.WARMUP, args.warmup_s)] + [(r, p, args.duration_s / args.rounds)
                                                   for r, p in turn_order(args.policy, args.rounds)]
    async with AsyncHeddleClient(target) as client:
        for i, (round_, policy, seconds) in enumerate(schedule):
            await client.set_policy("fcfs" if policy == pl.WARMUP else policy)
            before, load_before = await asyncio.to_thread(scrape_actions, metrics_port), os.getloadavg()
            # No gRPC timeout: heddle takes one as the request's deadline, and the background has none.
            result = await run_load(client, load, inputs, seed=seed * 1000 + i, drain_s=20.0,
                                    request_timeout_s=None, duration_s=seconds)
            after, load_after = await asyncio.to_thread(scrape_actions, metrics_port), os.getloadavg()
            records.setdefault(policy, []).extend(result.records)
            turns.append({"round": round_, "policy": policy, "seconds": seconds, "requests": len(result.records),
                          "freezes": after["freeze"] - before["freeze"],
                          "migrations": after["migrate"] - before["migrate"],
                          "loadavg_1m": [load_before[0], load_after[0]]})
            print(f"  seed {seed} round {round_} {policy:<12} {len(result.records):5d} requests, load "
                  f"{load_after[0]:.1f}", flush=True)
    return records, turns


def live_seed(config: Path, work: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Serve one seed's turns; write its trace, per-policy traces and records into work/seed<N>."""
    folder = work / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    if args.profile_per_seed:  # the box as it is now: other work on a shared box drifts over half an hour
        print(f"seed {seed}: heddle profile --under-load {args.profile_load_s:g} ...", flush=True)
        pl.profile_under_load(config, folder / "profile_under_load.json", argparse.Namespace(**{**vars(args),
                                                                                                "seed": seed}))
    grpc_port, metrics_port = pl_ports(config)
    target, trace = f"127.0.0.1:{grpc_port}", folder / "trace.jsonl"
    t0 = pl.cpu_ticks()
    with server_process([*HEDDLE, "serve", "--config", str(config), "--trace", str(trace), "--http-port", "0",
                         "--log-level", "warning"], target, folder / "server.log"):
        records, turns = asyncio.run(run_seed(target, metrics_port, args, seed))
    steal = pl.steal_pct(t0, pl.cpu_ticks())
    pl.split_trace(trace, records, folder)
    for policy, rs in records.items():
        (folder / f"records_{policy}.json").write_text(json.dumps([asdict(r) for r in rs]) + "\n")
    (folder / "turns.json").write_text(json.dumps({"turns": turns, "cpu_steal_pct": steal}) + "\n")
    return {"turns": turns, "cpu_steal_pct": steal}


def pl_ports(config: Path) -> tuple[int, int]:
    """The gRPC and metrics ports written into the config."""
    import tomllib

    server = tomllib.loads(config.read_text())["server"]
    return int(server["grpc_port"]), int(server["metrics_port"])


def simulate_policy(trace: Path, profile: Path, policy: str, folder: Path, replicas: int, seed: int,
                    fill_from: Path | None = None) -> dict[str, Any]:
    """The simulator's replay of one policy's arrivals (bench/policies_live.py), every figure kept;
    fill_from: the isolated profile, for the pairs the under-load one never saw (scheduler/sim/profile_fill.py)."""
    import subprocess

    out = folder / f"sim_{policy}_{profile.stem}.json"
    fill = ["--fill-from", str(fill_from)] if fill_from is not None else []
    subprocess.run([*HEDDLE, "simulate", "--trace", str(trace), "--profile", str(profile), "--platform", "local",
                    "--policy", policy, "--closed", "background", "--json", str(out), "--replicas", str(replicas),
                    "--seed", str(seed), *fill], check=True, cwd=pl.ROOT, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())["results"][0]
    result.pop("placements", None)
    return result


def seed_results(work: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Live and simulated figures of every policy of one seed, from the files live_seed wrote."""
    folder = work / f"seed{seed}"
    turns = json.loads((folder / "turns.json").read_text())
    out: dict[str, Any] = {"cpu_steal_pct": turns["cpu_steal_pct"], "turns": turns["turns"], "policies": {}}
    for policy in args.policy:
        records = [RequestRecord(**r) for r in json.loads((folder / f"records_{policy}.json").read_text())]
        mine = [t for t in turns["turns"] if t["policy"] == policy]
        live = live_policy_figures(records, mine, folder / f"trace_{policy}.jsonl", work / "profile.json")
        under_load = folder / "profile_under_load.json"
        if not under_load.exists():
            under_load = work / "profile_under_load.json"
        sim = simulate_policy(folder / f"trace_{policy}.jsonl", under_load, policy, folder, args.sim_replicas, seed,
                              None if args.no_fill else work / "profile.json")
        # The simulator reports means per class only: overall, their mean weighted by requests.
        classes = [c for c in sim["per_class"].values() if c["requests"] and c["mean_ms"] is not None]
        sim["mean_ms"] = (sum(c["mean_ms"] * c["requests"] for c in classes) / sum(c["requests"] for c in classes)
                          if classes else None)
        out["policies"][policy] = {"live": live, "sim_under_load": sim}
    return out


def prepare(work: Path, args: argparse.Namespace) -> Path:
    """Models, the emulated box's config (fixed ports for every seed's server) and both profiles."""
    models = pl.build_models(work / "models", args)
    config = pl.write_config(work, models, free_port(), free_port(), "emulated")
    print("heddle profile (isolated) ...", flush=True)
    pl.profile(config, work / "profile.json", args)
    print(f"heddle profile --under-load {args.profile_load_s:g} ...", flush=True)
    pl.profile_under_load(config, work / "profile_under_load.json", args)
    return config


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.monotonic()
    loadavg_start = os.getloadavg()
    if not args.resimulate:
        config = prepare(work, args)
        for seed in args.seeds:
            print(f"seed {seed}: warm-up {args.warmup_s:g} s, then {len(args.policy)} policies x "
                  f"{args.duration_s:g} s in {args.rounds} rotated rounds", flush=True)
            live_seed(config, work, args, seed)
    seeds = {str(seed): seed_results(work, args, seed) for seed in args.seeds}
    return {
        "benchmark": "live_eval", "date": dt.date.today().isoformat(), "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k != "out"},
        "scenario": [asdict(a) for a in pl.scenario(args).apps],
        "profiles": {name: pl.profile_summary(json.loads((work / f"{file}.json").read_text()))
                     for name, file in (("isolated", "profile"), ("under_load", "profile_under_load"))},
        "loadavg": {"start": list(loadavg_start), "end": list(os.getloadavg())},
        "seeds": seeds, **summarise(seeds, args.policy, args.tolerance, args.dvr_floor),
        "elapsed_s": time.monotonic() - started, "work": str(work),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", action="append", help="policy to run (repeatable; default: all)")
    p.add_argument("--seeds", type=int, default=3, help="seeds (each a server of its own): 1..N")
    p.add_argument("--duration-s", type=float, default=60.0, help="live load per policy and seed")
    p.add_argument("--rounds", type=int, default=3, help="turns per policy and seed (duration-s / rounds each)")
    p.add_argument("--resimulate", metavar="WORK", help="no live runs: score and simulate the files in WORK again")
    p.add_argument("--one-profile", dest="profile_per_seed", action="store_false",
                   help="one under-load profile before every seed (default: one per seed, just before its "
                        "live run, so the replay's run times are the box's of that moment)")
    p.add_argument("--no-fill", action="store_true", help="replay from the under-load profile alone (pairs its "
                   "load never ran cannot be used), as before issue #15's fill")
    pl_defaults = pl.parse_args([])
    for key in ("warmup_s", "profile_load_s", "fps", "deadline_ms", "jitter_ms", "concurrency", "seq",
                "cnn_widths", "cnn_blocks", "encoder_layers", "encoder_hidden", "profile_runs", "tolerance",
                "dvr_floor", "sim_replicas", "nice"):
        p.add_argument("--" + key.replace("_", "-"), type=type(getattr(pl_defaults, key)),
                       default=getattr(pl_defaults, key), help="as bench.policies_live (default %(default)s)")
    p.add_argument("--out", help="JSON report (default bench/results/<date>/live_eval.json)")
    args = p.parse_args(argv)
    args.policy = args.policy or list(POLICIES)
    args.seeds = list(range(1, args.seeds + 1))
    args.profile_parallel = False
    args.seed = args.seeds[0]  # the under-load profile's load
    unknown = sorted(set(args.policy) - set(POLICIES))
    if unknown:
        p.error(f"unknown policies {unknown}; known: {sorted(POLICIES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_niceness(args.nice)
    out = results_path("live_eval.json", args.out)
    # Absolute: the config written there names its model files relative to itself.
    work = (Path(args.resimulate) if args.resimulate else out.parent / "live_eval-work").resolve()  # git-ignored
    work.mkdir(parents=True, exist_ok=True)
    report = run(args, work)
    print_summary(report)
    save_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
