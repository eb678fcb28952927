"""Benchmark (issue 11): a soak. `heddle serve` on its embedded default under the default scenario
at a moderate load (--rate-scale x its rates) for --minutes; the server's RSS, threads, open fds
and in-flight/queue gauges sampled every --sample-s seconds. Figures: for each, the first and last
value, min, max and the least-squares slope per hour, over the whole run and over its second half
(RSS settles during the first minutes: arenas and caches fill); and the load's per-class figures.
Flat (slopes near 0 and last values back to the first) says nothing accumulates.

The reference in the same run is the run's own start: the first samples, taken after --warmup-s
of the same load, against the last ones. A benchmark, not a test.

    .venv/bin/python -m bench.soak                   # 30 minutes
    .venv/bin/python -m bench.soak --minutes 2       # check the script
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    HEDDLE,
    commit,
    free_port,
    machine_info,
    process_cpu_s,
    results_path,
    save_report,
    server_process,
    set_niceness,
)
from bench.load_workers import run_by_class
from bench.overload import GAUGE_KEYS, settle
from bench.process_sampler import Sampler, sample, series_summary
from heddle.clients.report import summarize
from heddle.clients.scenarios import load_scenario

KEYS = ("rss_mb", "threads", "fds", *GAUGE_KEYS)


def class_figures(summary: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for cls, s in summary["classes"].items():
        latency = s["latency_ms"] or {}
        out[cls] = {"requests": s["requests"], "goodput_rps": s["goodput_rps"], "p50_ms": latency.get("p50"),
                    "p99_ms": latency.get("p99"), "status_counts": s["status_counts"],
                    "slo_attainment": None if s["violation_rate"] is None else 1.0 - s["violation_rate"]}
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    grpc_port, metrics_port = free_port(), free_port()
    target, metrics_url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    cmd = [*HEDDLE, "serve", "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
           "--http-port", "0", "--log-level", "warning"]
    scenario = load_scenario(args.scenario).scaled(args.rate_scale)
    with server_process(cmd, target, work / "server.log", timeout_s=600) as proc:
        run_by_class(target, scenario, args.warmup_s, 10.0, args.seed, work / "load")
        sampler = Sampler(proc.pid, metrics_url, args.sample_s).start()
        cpu0 = process_cpu_s(proc.pid)
        print(f"soak: {args.minutes:g} min of {scenario.name} x{args.rate_scale:g}, sampling every "
              f"{args.sample_s:g} s ...", flush=True)
        result, client_cpu_s = run_by_class(target, scenario, args.minutes * 60, args.drain_s, args.seed + 1,
                                            work / "load")
        cpu1 = process_cpu_s(proc.pid)
        settled_s = settle(metrics_url, args.drain_s)
        samples = sampler.stop()
        after = sample(proc.pid, metrics_url, sampler.t0)
    loaded = [s for s in samples if s["t_s"] <= args.minutes * 60 + 5.0]  # the load's span, not the drain
    half = [s for s in loaded if s["t_s"] >= loaded[-1]["t_s"] / 2] if loaded else []
    summary = summarize(result.records, result.window_s, [a.name for a in scenario.apps])
    return {
        "series": {k: series_summary(loaded, k) for k in KEYS},
        "second_half": {k: series_summary(half, k) for k in KEYS},
        "after_drain": {k: after.get(k) for k in KEYS}, "settled_after_s": settled_s,
        "classes": class_figures(summary),
        "requests": len(result.records), "window_s": result.window_s,
        "unfinished": sum(r.client_cancelled for r in result.records),
        "cpu": {"server_cores": (cpu1 - cpu0) / result.window_s if cpu0 is not None else None,
                "client_cores": client_cpu_s / result.window_s},
        "samples": samples,
    }


def print_report(report: dict[str, Any]) -> None:
    p = report["params"]
    print(f"\nsoak {p['minutes']:g} min, {report['requests']} requests, commit {report['commit'][:10]}")
    print(f"{'figure':<10} {'first':>9} {'last':>9} {'min':>9} {'max':>9} {'slope/h':>10} {'2nd half slope/h':>17} "
          f"{'after drain':>11}")
    for key in KEYS:
        s, h = report["series"][key], report["second_half"][key]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{key:<10} {fmt(s['first']):>9} {fmt(s['last']):>9} {fmt(s['min']):>9} {fmt(s['max']):>9} "
              f"{fmt(s['slope_per_h']):>10} {fmt(h['slope_per_h']):>17} {fmt(report['after_drain'][key]):>11}")
    for cls, c in report["classes"].items():
        slo = "-" if c["slo_attainment"] is None else f"{c['slo_attainment']:.1%}"
        print(f"priority {cls}: {c['requests']} requests, goodput {c['goodput_rps']:.1f}/s, p99 "
              f"{c['p99_ms'] or 0:.1f} ms, SLO {slo}, " + ", ".join(f"{k} {v}" for k, v in c["status_counts"].items()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="minutes of load")
    p.add_argument("--scenario", default="default", help="a shipped scenario or a TOML file")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the scenario's open-loop rates")
    p.add_argument("--warmup-s", type=float, default=30.0, help="load before sampling starts")
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--drain-s", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nice", type=int, default=-10, help="niceness of bench and server (below 0 needs root)")
    p.add_argument("--out", help="JSON report (default bench/results/<date>/soak.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.nice = set_niceness(args.nice)
    out = results_path("soak.json", args.out)
    work = out.parent / "soak-work"  # server log and load records: git-ignored
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    report = {"benchmark": "soak", "date": dt.date.today().isoformat(), "commit": commit(), "machine": machine_info(),
              "params": {k: v for k, v in vars(args).items() if k != "out"}, **run(args, work),
              "elapsed_s": time.monotonic() - started}
    print_report(report)
    save_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
