"""The benchmark suite in one command: gateway overhead, heddle vs Triton, every policy on every scenario.

    .venv/bin/python -m bench.run_all                  # default settings (10.3 min measured on 2 cores)
    .venv/bin/python -m bench.run_all --quick          # the same parts, shorter (5.6 min measured)
    .venv/bin/python -m bench.run_all --only policies --scenario gaming --policy edf --policy fcfs

Parts run one after another on this machine, never at once (they would share the CPU):
  gateway   bench/gateway_overhead.py: raw gRPC echo vs heddle, each its own server process
  triton    bench/triton_vs_heddle.py: a real tritonserver vs heddle on the same models (skipped,
            with a note, when the script is absent)
  policies  one `heddle serve` (embedded default); per scenario and policy: Admin.SetPolicy, then
            `heddle bench --scenario S --duration D` into policies/S/P/ (same seed: same arrivals)
  sched     bench/sched_cost.py: the scheduler core's cost per stage decision at 10/100/1,000
            queued runs and per request on the recorded camera_analytics trace (in process)
  tiny      bench/tiny_vs_triton.py: a 16->8 MLP on Triton (dynamic batcher on), heddle (plain,
            inline, batched) and a raw grpc.aio echo, 1 and 8 clients
  perf      bench/perf_analyzer.py: Triton's perf_analyzer on heddle's KServe port and on a real
            Triton (batcher on), concurrency 1..8
  live      bench/live_eval.py: every policy live on the emulated Orin NX-like box (cgroup bandwidth
            caps), 3 seeds x 60 s each (1 x 12 s quick), with the simulator's prediction (issue #15)
  power     bench/power_live.py: that box under a budget at half its unconstrained (estimated) draw,
            twill + the controller vs each baseline + a throttling governor, 3 seeds x 60 s per arm
Writes --out (default bench/results/<date>/): each part's JSON and logs, run_all.json (settings,
machine, each part's status and time), then bench/summary.py's policies.json, policy_violations.png
and SUMMARY.md. Exit status 0 when every part that ran succeeded, 1 otherwise, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.harness import BENCH_DIR, free_port, heddle_base, machine_info, server_process
from bench.suite_parts import DEFAULT, PARTS, QUICK, Part, Settings, exit_note, run_logged, run_script
from bench.summary import (
    GATEWAY_JSON,
    MANIFEST_JSON,
    PERF_JSON,
    POLICIES_DIR,
    POLICY_FILE,
    SCHED_JSON,
    TINY_JSON,
    TRITON_JSON,
    build,
)
from bench.summary_live import LIVE_JSON, POWER_LIVE_JSON
from heddle.clients.client import HeddleClient
from heddle.clients.scenarios import SCENARIOS
from heddle.scheduler.policies import POLICIES

# DEFAULT, QUICK and Settings (bench/suite_parts.py) are re-exported: this module is where their
# callers have found them.
__all__ = ["DEFAULT", "QUICK", "Settings", "main"]

def _bench_line(run_dir: Path) -> str:
    try:
        total = json.loads((run_dir / "summary.json").read_text())["summary"]["total"]
    except (OSError, KeyError, ValueError):
        return "no summary"
    viol = total["violation_rate"]
    p99 = (total["latency_ms"] or {}).get("p99")
    line = (f"{total['ok']}/{total['requests']} ok, viol {'-' if viol is None else f'{100 * viol:.1f}%'}, "
            f"goodput {total['goodput_rps'] or 0:.1f}/s, p99 {'-' if p99 is None else f'{p99:.1f}'} ms")
    llm = total.get("llm")
    if llm:
        ttft = (llm["ttft_ms"] or {}).get("p99")
        line += f", LLM {llm['tokens_per_s'] or 0:.0f} tok/s TTFT p99 {'-' if ttft is None else f'{ttft:.0f}'} ms"
    return line


def bench_run(base: list[str], admin: HeddleClient, target: str, metrics_url: str, run_dir: Path,
              scenario: str, policy: str, settings: Settings, args: argparse.Namespace) -> int:
    """Switch the server to `policy`, run one `heddle bench` of `scenario` into run_dir."""
    info = admin.set_policy(policy, timeout_s=10.0)
    if info.policy != policy:
        raise RuntimeError(f"SetPolicy({policy!r}) left the server on {info.policy!r}")
    cmd = [*base, "bench", "--target", target, "--scenario", scenario, "--duration",
           f"{settings.duration_s:g}", "--seed", str(args.seed), "--rate-scale", f"{args.rate_scale:g}",
           "--drain", f"{settings.drain_s:g}", "--out", str(run_dir), "--no-progress",
           "--metrics", metrics_url]
    timeout_s = settings.duration_s + settings.drain_s + 90.0  # startup, plots: generous
    t0 = time.perf_counter()
    rc = run_logged(cmd, run_dir / "bench.log", timeout_s, echo=False)
    # The 1-min load average at the end covers the run: on a shared box it flags disturbed runs.
    meta = {"policy": policy, "confirmed_by": "Admin.SetPolicy", "bench_exit": rc,
            "wall_s": time.perf_counter() - t0, "loadavg_1m_after": os.getloadavg()[0],
            "command": shlex.join(cmd)}
    (run_dir / POLICY_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    label = f"{scenario} (warm-up)" if run_dir.name == "warmup" else scenario
    print(f"  {label:<20} {policy:<12} {_bench_line(run_dir)}"
          + ("" if rc == 0 else f"  [bench {exit_note(rc, timeout_s)}]"), flush=True)
    return rc


def run_policies(out: Path, settings: Settings, args: argparse.Namespace, part: Part) -> None:
    """The policies part: one server, every (scenario, policy) pair; fills in `part`."""
    shutil.rmtree(out / POLICIES_DIR, ignore_errors=True)  # only this run's folders get summarised
    base = heddle_base(args.heddle_cmd)
    port, metrics_port = free_port(), free_port()
    target, metrics_url = f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    serve = [*base, "serve", "--grpc-port", str(port), "--metrics-port", str(metrics_port), "--http-port", "0"]
    part.command = shlex.join(serve)
    failed: list[str] = []
    with server_process(serve, target, out / "logs" / "heddle_serve.log") as proc, \
            HeddleClient(target, token=os.environ.get("HEDDLE_ADMIN_TOKEN") or None) as admin:
        # Unmeasured: the first requests pay for lazy set-up and an empty profile table.
        warm = replace(settings, duration_s=min(3.0, settings.duration_s))
        bench_run(base, admin, target, metrics_url, out / "logs" / "warmup", "default",
                  args.policies[0], warm, args)
        for i, scenario in enumerate(args.scenarios):
            # Rotate which policy goes first, so drift on a shared box does not always hit the same one.
            k = i % len(args.policies)
            for policy in args.policies[k:] + args.policies[:k]:
                if proc.poll() is not None:
                    raise RuntimeError(f"heddle serve exited with status {proc.returncode}")
                run_dir = out / POLICIES_DIR / scenario / policy
                if bench_run(base, admin, target, metrics_url, run_dir, scenario, policy, settings, args):
                    failed.append(f"{scenario}/{policy}")
    part.status = "failed" if failed else "ok"
    if failed:
        part.note = f"bench failed for {', '.join(failed)} (see their bench.log)"


# --- the command ---------------------------------------------------------------------------------

def _write_manifest(out: Path, manifest: dict[str, Any], parts: dict[str, Part]) -> None:
    manifest["parts"] = {name: asdict(p) for name, p in parts.items()}
    (out / MANIFEST_JSON).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _run_part(name: str, out: Path, settings: Settings, args: argparse.Namespace, part: Part) -> None:
    if name == "gateway":
        run_script("gateway_overhead.py", GATEWAY_JSON, settings.gateway_args, out,
                   settings.gateway_timeout_s, part)
    elif name == "triton":
        run_script("triton_vs_heddle.py", TRITON_JSON, settings.triton_args, out,
                   settings.triton_timeout_s, part)
    elif name == "sched":  # pure and in process: no server, minutes at most
        run_script("sched_cost.py", SCHED_JSON, ("--quick",) if settings.mode == "quick" else (), out, 600.0, part)
    elif name == "tiny":  # issue #13's headline comparison: Triton with its batcher, heddle, a raw echo
        quick = settings.mode == "quick"
        run_script("tiny_vs_triton.py", TINY_JSON, ("--rounds", "1", "--duration-s", "2") if quick else (),
                   out, 900.0, part)
    elif name == "perf":  # Triton's own load generator at concurrency 1..8 (1..2 quick) on both servers
        run_script("perf_analyzer.py", PERF_JSON, ("--start-triton", "--triton-max-batch-size", "8",
                                                  "--concurrency-range", "1:2" if settings.mode == "quick" else "1:8"),
                   out, 1200.0, part)
    elif name == "live":  # issue #15: needs a writable cgroup (the emulated box's bandwidth caps)
        run_script("live_eval.py", LIVE_JSON, settings.live_args, out, settings.live_timeout_s, part)
    elif name == "power":  # issue #15's budget half: the same box, the real bandwidth actuator
        run_script("power_live.py", POWER_LIVE_JSON, settings.power_args, out, settings.live_timeout_s, part)
    else:
        run_policies(out, settings, args, part)


def run_suite(out: Path, settings: Settings, args: argparse.Namespace) -> int:
    """Run the selected parts in order, keep run_all.json current, then write the summary."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest: dict[str, Any] = {
        "suite": "heddle benchmark suite (issue 7)", "command": shlex.join(["python", *sys.argv]),
        "mode": settings.mode, "settings": asdict(settings), "scenarios": args.scenarios,
        "policies": args.policies, "seed": args.seed, "rate_scale": args.rate_scale,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "loadavg_start": list(os.getloadavg()),
    }
    parts = {name: Part() for name in PARTS}
    code = 0
    try:
        for name in args.only:
            print(f"== {name} ({settings.mode} settings)", flush=True)
            t0, part = time.perf_counter(), parts[name]
            try:
                _run_part(name, out, settings, args, part)
            except KeyboardInterrupt:
                part.status, code = "interrupted", 130
                raise
            except Exception as err:  # one broken part must not lose the others' results
                part.status, part.note = "failed", f"{type(err).__name__}: {err}"
            finally:
                part.wall_s = time.perf_counter() - t0
                _write_manifest(out, manifest, parts)
            print(f"== {name}: {part.status} in {part.wall_s:.0f} s {part.note}".rstrip(), flush=True)
            code = code or int(part.status == "failed")
    except KeyboardInterrupt:
        print("interrupted: summarising what ran", file=sys.stderr)
    manifest["wall_s"] = time.perf_counter() - started
    manifest["loadavg_end"] = list(os.getloadavg())
    _write_manifest(out, manifest, parts)
    summary = build(out)
    print(f"\nsuite: {manifest['wall_s'] / 60:.1f} min; wrote {summary}")
    return code


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="shorter runs of every part (a smoke run)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results/<date>)")
    p.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    p.add_argument("--scenario", action="append", choices=list(SCENARIOS), dest="scenarios",
                   help="policies part: these scenarios only (repeatable; default all shipped)")
    p.add_argument("--policy", action="append", choices=list(POLICIES), dest="policies",
                   help="policies part: these policies only (repeatable; default all)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="policies part: seconds per bench run (default 10, --quick 4)")
    p.add_argument("--seed", type=int, default=0, help="policies part: arrivals and inputs seed")
    p.add_argument("--rate-scale", type=float, default=1.0, help="policies part: multiply open-loop rates")
    p.add_argument("--heddle-cmd", default=None, help="command to run heddle (default: the venv's `heddle`)")
    args = p.parse_args(argv)
    args.only = [part for part in PARTS if part in (args.only or PARTS)]
    args.scenarios = args.scenarios or list(SCENARIOS)
    args.policies = args.policies or list(POLICIES)
    if args.out is None:
        args.out = BENCH_DIR / "results" / dt.date.today().isoformat()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else DEFAULT
    if args.duration is not None:
        settings = replace(settings, duration_s=args.duration)
    return run_suite(args.out.resolve(), settings, args)


if __name__ == "__main__":
    sys.exit(main())
