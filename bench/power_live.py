"""Benchmark (issue #15, the power-budget half): the emulated Orin NX-like box under a power budget
at half its unconstrained draw, kept by the REAL CPU-bandwidth actuator: twill + heddle's power
controller against every baseline policy + a plain throttling governor.

The box is bench/live_eval.py's (gpu0 core 0; dla0 and cpu0 throttled shares of core 1), each device
now with a bandwidth ladder (`dvfs = { kind = "cgroup", values = [...] }`: the platform's DVFS clock
steps as shares, scheduler/sim/platforms.py) and a power model (its ORIN_NX active power; ASSUMED
idle). Power is ESTIMATED (the models at each device's bandwidth level and busy fraction: the CPU
clock does not change, so a throttled device does the same work for the same energy, spread out).

One in-process gateway (so the bench can hand the levels to the governor: PowerLoop.use_governor),
per seed:
  unconstrained   twill, no budget: the mean estimated power after settling -> budget = it / 2;
  twill+controller  the budget through the controller (levels, freezes, admission);
  P+governor      for each baseline P: no controller budget, the governor sets every level.
The arms after the first take turns in an order rotated per seed. Each arm's load (the mixed
frames + background scenario) comes from a child process (bench.power_live --drive), so the client
does not share the server's GIL.

Reported, never asserted (bench/power_live_figures.py): per arm and seed, the share of settled
control periods within budget + 5%, mean power (estimated), the frames' DVR and its change from the
unconstrained run, mean latency overall and per class, DVFS level changes (the actuators' levels,
as heddle_dvfs_level exports them), freezes, the frame CNN's compute time on gpu0 with gpu0's mean
level (the actuator slows the device), the load average; then means over seeds with the spread.

    .venv/bin/python -m bench.power_live                          # 3 seeds x 8 arms x 60 s, ~27 min
    .venv/bin/python -m bench.power_live --seeds 1 --duration-s 15
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from bench import policies_live as pl
from bench.harness import CPU_PROVIDERS, ROOT, bench_module, machine_info, results_path, save_report, set_niceness
from bench.power_budget import InProcessServer
from bench.power_live_figures import arm_figures, print_summary, summarise
from heddle.scheduler.policies import POLICIES
from heddle.scheduler.sim.governor import ThrottlingGovernor
from heddle.scheduler.sim.platforms import DLA_UNSUPPORTED_OPS, ORIN_NX
from heddle.server.config.builder import onnx_device, python_device

__all__ = ["main", "power_devices"]

UNCONSTRAINED, CONTROLLED = "unconstrained", "twill+controller"
BASELINES = [p for p in POLICIES if p != "twill"]


def _ladder(top_pct: int, clocks: tuple[float, ...]) -> list[int]:
    return [max(1, round(top_pct * c)) for c in clocks]


def _active_w(idle_w: float, busy_w: float, share: float) -> float:
    """Busy watts at 100% bandwidth for a device whose busy power at `share` is busy_w (the estimate
    scales busy power above idle with the share: backends/power/dvfs_cgroup.bandwidth_power_model)."""
    return round(idle_w + (busy_w - idle_w) / share, 3)


def power_devices() -> list[dict[str, Any]]:
    """policies_live.emulated_devices() with a bandwidth ladder and a power model each. Ladders: ORIN_NX's
    level clocks times the device's top share. Busy power at the top level: resnet50's on that kind
    (gpu 8 W, dla 1.8 W, cpu 3 W, ORIN_NX); idle: plant.py's IDLE_W (ASSUMED)."""
    clocks = {d.kind: d.options["speed"]["level_clock"] for d in ORIN_NX.devices}
    busy = ORIN_NX.models["resnet50"].power_w
    idle = {"gpu": 1.0, "dla": 0.2, "cpu": 0.5}
    top = {"gpu": 100, "dla": 58, "cpu": 15}
    devices = []
    dla_ops = {"unsupported_ops": list(DLA_UNSUPPORTED_OPS)}
    for id_, kind, core, extra in (("gpu0", "gpu", 0, {}), ("dla0", "dla", 1, dla_ops), ("cpu0", "cpu", 1, {})):
        power = {"idle_w": idle[kind], "active_w": _active_w(idle[kind], busy[kind], top[kind] / 100)}
        devices.append(onnx_device(id_, cores=[core], kind=kind, providers=CPU_PROVIDERS, power=power,
                                   dvfs={"kind": "cgroup", "values": _ladder(top[kind], clocks[kind]),
                                         "period_us": pl.BANDWIDTH_PERIOD_US[kind]}, **extra))
    # The python stages (pre/post-processing): no knob; small ASSUMED power so the box sum covers them.
    devices.append(python_device("py0", slots=2, kind="cpu", power={"idle_w": 0.1, "active_w": [0.5]}))
    return devices


# ---- the load (a child process: `python -m bench.power_live --drive SPEC OUT`) ------------------------------

async def _drive(spec: dict[str, Any]) -> list[dict[str, Any]]:
    from heddle.clients.aio import AsyncHeddleClient
    from heddle.clients.loadgen import run_load

    args = argparse.Namespace(**spec["args"])
    inputs = pl.app_inputs(args, np.random.default_rng(spec["seed"]))
    async with AsyncHeddleClient(spec["target"]) as client:
        await client.set_policy(spec["policy"])
        result = await run_load(client, pl.scenario(args), inputs, seed=spec["seed"], drain_s=20.0,
                                request_timeout_s=None, duration_s=spec["seconds"])
    return [asdict(r) for r in result.records]


def drive_main(spec_path: str, out_path: str) -> None:
    records = asyncio.run(_drive(json.loads(Path(spec_path).read_text())))
    Path(out_path).write_text(json.dumps(records))


# ---- one arm ----------------------------------------------------------------------------------------------

def _levels_metric(server: InProcessServer) -> dict[str, float | None]:
    registry = server.server.metrics.registry
    return {d: registry.get_sample_value("heddle_dvfs_level", {"device": d}) for d in server.server.power.actuators}


def _freezes(server: InProcessServer) -> float:
    value = server.server.metrics.registry.get_sample_value("heddle_scheduler_actions_total", {"action": "freeze"})
    return value or 0.0


def _quiesce(server: InProcessServer, timeout_s: float = 20.0) -> None:
    """Between arms: no budget, no governor, and wait until the controller has undone every level,
    freeze and refusal (it relaxes a rung per period)."""
    power = server.server.power
    server.call(power.use_governor, None)
    server.call(power.set_budget, None, {})
    ctl = power.controller
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not server.call(lambda: ctl.state == "ok" and not any(ctl.levels.values())):
        time.sleep(0.2)


def run_arm(server: InProcessServer, arm: str, policy: str, seconds: float, seed: int, args: argparse.Namespace,
            folder: Path) -> dict[str, Any]:
    """Load from a child process for `seconds` under `policy`; the periods, metric samples and records."""
    power = server.server.power
    spec = {"target": f"127.0.0.1:{server.server.grpc_port}", "policy": policy, "seconds": seconds, "seed": seed,
            "args": {k: getattr(args, k) for k in ("fps", "deadline_ms", "jitter_ms", "concurrency", "seq")}}
    spec_path, out_path = folder / f"{arm}.spec.json", folder / f"{arm}.records.json"
    spec_path.write_text(json.dumps(spec))
    start_s, freezes0, load0 = server.call(server.server.runtime.clock), _freezes(server), os.getloadavg()
    child = subprocess.Popen(bench_module("power_live", "--drive", str(spec_path), str(out_path)), cwd=ROOT)
    metric_levels: list[dict[str, float | None]] = []
    while child.poll() is None:  # heddle_dvfs_level as a scrape would see it, twice a second
        metric_levels.append(_levels_metric(server))
        time.sleep(0.5)
    if child.returncode:
        raise RuntimeError(f"the load for {arm} exited with status {child.returncode}")
    end_s = server.call(server.server.runtime.clock)
    periods = [asdict(p) for p in server.call(lambda: list(power.history)) if start_s <= p.t_s <= end_s]
    return {"arm": arm, "policy": policy, "start_s": start_s, "end_s": end_s, "periods": periods,
            "records": json.loads(out_path.read_text()), "freezes": _freezes(server) - freezes0,
            "loadavg_1m": [load0[0], os.getloadavg()[0]], "dvfs_level_metric": metric_levels}


def run_seed(server: InProcessServer, seed: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    power = server.server.power
    # The governor moves the knobs there are (the bandwidth groups), not py0's disabled one.
    counts = {d: len(a.levels()) for d, a in power.actuators.items() if a.kind != "none" and len(a.levels()) > 1}
    _quiesce(server)
    free = run_arm(server, UNCONSTRAINED, "twill", args.duration_s, seed, args, folder)
    out = {UNCONSTRAINED: arm_figures(free, None, args.settle_s)}
    budget_w = out[UNCONSTRAINED]["mean_power_w"] / args.overload
    arms = [(CONTROLLED, "twill")] + [(f"{p}+governor", p) for p in BASELINES if p in args.policy]
    k = (seed - 1) % len(arms)
    for arm, policy in arms[k:] + arms[:k]:
        _quiesce(server)
        if arm == CONTROLLED:
            server.call(power.set_budget, budget_w, {})
        else:
            server.call(power.use_governor, ThrottlingGovernor(budget_w, counts))
        raw = run_arm(server, arm, policy, args.duration_s, seed, args, folder)
        out[arm] = arm_figures(raw, budget_w, args.settle_s)
        print(f"  seed {seed} {arm:<22} within budget+5% {100 * out[arm]['within_budget_5pct']:5.1f}%  "
              f"power {out[arm]['mean_power_w']:.2f} W (est.)  frames DVR {100 * out[arm]['top_dvr']:.1f}%  "
              f"mean {out[arm]['mean_ms']:.1f} ms", flush=True)
    _quiesce(server)
    return {"budget_w": budget_w, "counts": counts, "arms": out}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started, loadavg_start = time.monotonic(), os.getloadavg()
    models = pl.build_models(work / "models", args)
    config = pl.write_config(work, models, 0, 0, devices=power_devices(), power={"period_s": args.period_s})
    doc = tomllib.loads(config.read_text())
    doc["server"].update(cache_dir=str(work / "cache"), http_port=0)  # 8000 may be another server's
    server = InProcessServer(doc)
    try:
        seeds = {}
        for seed in args.seeds:
            print(f"seed {seed}: {UNCONSTRAINED}, then the arms, {args.duration_s:g} s each", flush=True)
            folder = work / f"seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            seeds[str(seed)] = run_seed(server, seed, args, folder)
        unavailable = [f"{n.what}: {n.reason}" for n in server.server.power.unavailable]
        actuators = {d: a.kind for d, a in server.server.power.actuators.items()}
    finally:
        server.close()
    return {
        "benchmark": "power_live", "date": dt.date.today().isoformat(), "machine": machine_info(),
        "params": {k: v for k, v in vars(args).items() if k != "out"}, "devices": power_devices(),
        "actuators": actuators, "power_not_used": unavailable,
        "power_source": "ESTIMATED (device power models at the bandwidth level in effect; no sensor)",
        "loadavg": {"start": list(loadavg_start), "end": list(os.getloadavg())}, "seeds": seeds,
        **summarise(seeds), "elapsed_s": time.monotonic() - started, "work": str(work),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--duration-s", type=float, default=60.0, help="load per arm and seed")
    p.add_argument("--policy", action="append", help="baselines to run with the governor (default: all six)")
    p.add_argument("--overload", type=float, default=2.0, help="unconstrained power / budget")
    p.add_argument("--period-s", type=float, default=0.1, help="control period")
    p.add_argument("--settle-s", type=float, default=5.0, help="periods before this are not scored")
    pl_defaults = pl.parse_args([])
    for key in ("fps", "deadline_ms", "jitter_ms", "concurrency", "seq", "cnn_widths", "cnn_blocks",
                "encoder_layers", "encoder_hidden", "nice"):
        p.add_argument("--" + key.replace("_", "-"), type=type(getattr(pl_defaults, key)),
                       default=getattr(pl_defaults, key), help="as bench.policies_live (default %(default)s)")
    p.add_argument("--out", help="JSON report (default bench/results/<date>/power_live.json)")
    args = p.parse_args(argv)
    args.seeds = list(range(1, args.seeds + 1))
    args.policy = args.policy or list(BASELINES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_niceness(args.nice)
    out = results_path("power_live.json", args.out)
    work = out.parent / "power_live-work"  # records, periods, models: git-ignored
    work.mkdir(parents=True, exist_ok=True)
    report = run(args, work)
    print_summary(report)
    save_report(report, out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--drive":
        drive_main(*sys.argv[2:])
    else:
        sys.exit(main())
