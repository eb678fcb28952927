"""Benchmark (issue 11): 10x the box's capacity against `heddle serve` on its embedded default, with
overload admission on and, as the reference measured in the same run, switched off.

Per mode, a `heddle serve` process of its own (`on`: the embedded default as shipped; `off`: the
embedded default's TOML plus `[admission] enabled = false`):
1. warm-up: the default scenario at its own rates for --warmup-s;
2. capacity (once, on the first mode's server): the default scenario's apps as closed loops
   (--capacity-concurrency requests in flight each, no think time) for --capacity-s; the box's
   capacity is the requests answered OK per second;
3. overload: the top class at its own rate (a camera does not speed up under load) and every lower
   class open loop (the closed background as Poisson at --background-hz), scaled so that the total
   offered is --factor x capacity, for --duration s, then up to --drain-s for replies. No gRPC
   timeout: requests without a deadline in the scenario have none in the server either. The
   server's RSS, threads, fds and in-flight/queue gauges are sampled every second.

Figures per mode and priority class: offered req/s, goodput (OK within the deadline per second),
p50/p99 latency (client) and p99 of the server's own total_ms, SLO attainment (share of requests
with a deadline answered OK within it; refusals count as misses), status counts, the share of
RESOURCE_EXHAUSTED carrying retry-after-ms; per mode: RSS before / max / after, threads and fds,
gauges at their max and after the drain, requests never answered (hangs), CPU of server and client.
Checks (admission on): the top class meets its SLO for >= --top-slo of its requests, lower classes
are refused RESOURCE_EXHAUSTED and every refusal carries a hint, no hangs, gauges back to 0, and
max RSS at most --rss-growth-mb over the RSS before. A benchmark, not a test.

    .venv/bin/python -m bench.overload                   # ~5 minutes
    .venv/bin/python -m bench.overload --duration 15     # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

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
    write_config,
)
from bench.load_workers import run_by_class
from bench.process_sampler import Sampler, gauges, sample, series_summary
from heddle.clients.bench_metrics import parse_samples, scrape
from heddle.clients.loadgen import LoadResult
from heddle.clients.report import summarize
from heddle.clients.scenarios import Scenario, load_scenario
from heddle.server.config.default import default_config_document

MODES = {"on": None, "off": {"enabled": False}}  # the embedded default's [admission]
GAUGE_KEYS = ("in_flight", "queued", "running", "llm_live", "frozen")


# ---- scenarios ------------------------------------------------------------------------------------
def closed_loop(base: Scenario, concurrency: int) -> Scenario:
    """Every app of base as a closed loop with `concurrency` in flight and no think time."""
    apps = tuple(replace(a, arrival="closed", concurrency=concurrency, think_ms=0.0, rate_hz=0.0) for a in base.apps)
    return replace(base, name=f"{base.name}_closed", apps=apps)


def overload_scenario(base: Scenario, capacity_rps: float, factor: float, background_hz: float) -> Scenario:
    """The top class as it is; lower classes open loop, scaled so the total offered is factor x capacity."""
    top = max(a.priority for a in base.apps)
    lower = [a if a.open_loop else replace(a, arrival="poisson", rate_hz=background_hz, concurrency=1)
             for a in base.apps if a.priority < top]
    top_apps = [a for a in base.apps if a.priority >= top]
    top_rps = sum(a.offered_rps or 0.0 for a in top_apps)
    lower_rps = sum(a.offered_rps for a in lower)
    scale = max(factor * capacity_rps - top_rps, 0.0) / lower_rps
    apps = tuple(top_apps) + tuple(replace(a, rate_hz=a.rate_hz * scale) for a in lower)
    return replace(base, name=f"{base.name}_x{factor:g}_capacity", apps=apps,
                   description=f"{base.name}: top class at its rate, lower classes x{scale:.1f}")


# ---- load -------------------------------------------------------------------------------------------
def settle(metrics_url: str, timeout_s: float) -> float | None:
    """Wait until the server has nothing in flight; seconds it took (None if it never did)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if gauges(metrics_url).get("in_flight") == 0:
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def server_counts(metrics_url: str) -> dict[str, float]:
    """Requests heddle itself answered so far (`answered`, every status: a call gRPC cancelled
    before handing it to heddle is not among them), and admission's refusals by reason and class."""
    counts = {"answered": 0.0}
    for (name, labels), value in parse_samples(scrape(metrics_url)).items():
        if name == "heddle_requests_total":
            counts["answered"] += value
        elif name == "heddle_admission_rejected_total":
            d = dict(labels)
            counts[f"refused {d.get('reason')} p{d.get('priority_class')}"] = value
    return counts


def box_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole box from /proc/stat: busy = all but idle and iowait."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


# ---- figures ------------------------------------------------------------------------------------------
def class_figures(result: LoadResult, scenario: Scenario) -> dict[str, Any]:
    """Per priority class: offered rate, goodput, latency, SLO attainment, statuses and hints."""
    summary = summarize(result.records, result.window_s, [a.name for a in scenario.apps])
    out = {}
    for cls, stats in summary["classes"].items():
        records = [r for r in result.records if str(r.priority) == cls]
        server_ms = [r.server_total_ms for r in records if r.server_total_ms is not None]
        refused = stats["rejections"].get("RESOURCE_EXHAUSTED", {"count": 0, "with_retry_hint": 0})
        rate = sum(a.offered_rps or 0.0 for a in scenario.apps if str(a.priority) == cls)
        latency = stats["latency_ms"] or {}
        out[cls] = {
            "offered_rps": rate, "requests": stats["requests"], "ok": stats["ok"],
            "goodput_rps": stats["goodput_rps"], "p50_ms": latency.get("p50"), "p99_ms": latency.get("p99"),
            "server_p99_ms": float(np.percentile(server_ms, 99)) if server_ms else None,
            "slo_attainment": None if stats["violation_rate"] is None else 1.0 - stats["violation_rate"],
            "status_counts": stats["status_counts"], "unfinished": stats["unfinished"],
            "resource_exhausted": refused["count"],
            "retry_hint_share": refused["with_retry_hint"] / refused["count"] if refused["count"] else None,
            "send_lag_ms_p99": (stats["send_lag_ms"] or {}).get("p99"),
        }
    return out


def process_summary(samples: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("rss_mb", "threads", "fds", *GAUGE_KEYS):
        s = series_summary(samples, key)
        out[key] = {"before": before.get(key), "max": s["max"], "after": after.get(key)}
    return out


def measure_capacity(target: str, base: Scenario, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The box's capacity: requests answered OK per second with every app a closed loop."""
    closed = closed_loop(base, args.capacity_concurrency)
    result, _ = run_by_class(target, closed, args.capacity_s, 10.0, args.seed, work / "load")
    ok = sum(r.status == "OK" for r in result.records)
    print(f"capacity: {ok / result.window_s:.0f} req/s answered OK (closed loop, {len(base.apps)} apps x "
          f"{args.capacity_concurrency} in flight, {result.window_s:.0f} s)", flush=True)
    return {"rps": ok / result.window_s, "requests": len(result.records), "ok": ok,
            "window_s": result.window_s, "concurrency_per_app": args.capacity_concurrency}


# ---- one mode ------------------------------------------------------------------------------------------
def run_mode(mode: str, args: argparse.Namespace, work: Path, base: Scenario,
             capacity: dict[str, Any] | None) -> dict[str, Any]:
    grpc_port, metrics_port = free_port(), free_port()
    target, metrics_url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics"
    cmd = [*HEDDLE, "serve", "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
           "--http-port", "0", "--log-level", "warning"]
    if MODES[mode]:  # `on` is the embedded default itself, no --config
        doc = {**default_config_document(), "admission": MODES[mode]}
        cmd += ["--config", str(write_config(work / f"default_admission_{mode}.toml", doc))]
    with server_process(cmd, target, work / f"server_{mode}.log", timeout_s=600) as proc:
        run_by_class(target, base, args.warmup_s, 10.0, args.seed, work / "load")
        capacity = capacity or measure_capacity(target, base, args, work)
        settle(metrics_url, args.settle_s)
        scenario = overload_scenario(base, capacity["rps"], args.factor, args.background_hz)
        offered = sum(a.offered_rps for a in scenario.apps)
        print(f"[{mode}] offering {offered:.0f} req/s ({args.factor:g} x capacity) for {args.duration:g} s ...",
              flush=True)
        before, counts_before = sample(proc.pid, metrics_url, time.monotonic()), server_counts(metrics_url)
        cpu0, box0 = process_cpu_s(proc.pid), box_busy()
        sampler = Sampler(proc.pid, metrics_url, args.sample_s).start()
        result, client_cpu_s = run_by_class(target, scenario, args.duration, args.drain_s, args.seed + 1, work / "load")
        cpu1, box1 = process_cpu_s(proc.pid), box_busy()
        settle_s = settle(metrics_url, args.settle_s)
        samples = sampler.stop()
        after = sample(proc.pid, metrics_url, sampler.t0)
        counts = {k: v - counts_before.get(k, 0.0) for k, v in server_counts(metrics_url).items()}
    wall_s = samples[-1]["t_s"] if samples else result.window_s
    return {
        "mode": mode, "scenario": [asdict(a) for a in scenario.apps], "offered_rps": offered,
        "window_s": result.window_s, "classes": class_figures(result, scenario),
        "hangs": sum(r.client_cancelled for r in result.records), "settled_after_s": settle_s,
        "server_counts": counts, "sent": len(result.records),
        "process": process_summary(samples, before, after), "samples": samples,
        "cpu": {"server_cores": (cpu1 - cpu0) / wall_s if cpu0 is not None else None,
                "client_cores": client_cpu_s / wall_s,
                "box_busy_cores": (box1[0] - box0[0]) / max(box1[1] - box0[1], 1) * (os.cpu_count() or 1)},
    }, capacity


# ---- checks and output ------------------------------------------------------------------------------------
def checks(mode: dict[str, Any], args: argparse.Namespace) -> dict[str, bool]:
    classes = mode["classes"]
    top = max(classes, key=int)
    lower = [c for c in classes if c != top]
    refused = sum(classes[c]["resource_exhausted"] for c in lower)
    hinted = all(classes[c]["retry_hint_share"] in (None, 1.0) for c in lower)
    proc = mode["process"]
    return {
        "top_class_keeps_slo": (classes[top]["slo_attainment"] or 0.0) >= args.top_slo,
        "top_class_never_refused": classes[top]["resource_exhausted"] == 0,
        "lower_classes_refused_with_hint": refused > 0 and hinted,
        "no_hangs": mode["hangs"] == 0,
        "gauges_back_to_0": all(proc[k]["after"] == 0 for k in GAUGE_KEYS),
        "memory_bounded": proc["rss_mb"]["max"] - proc["rss_mb"]["before"] <= args.rss_growth_mb,
    }


def print_report(report: dict[str, Any]) -> None:
    cap = report["capacity"]
    print(f"\ncapacity {cap['rps']:.0f} req/s; overload x{report['params']['factor']:g} for "
          f"{report['params']['duration']:g} s")
    head = ("mode", "class", "offered/s", "goodput/s", "p50 ms", "p99 ms", "srv p99", "SLO", "RE", "hint", "statuses")
    rows = [head]
    for name, mode in report["modes"].items():
        for cls, c in mode["classes"].items():
            fmt = lambda v, f="{:.1f}": "-" if v is None else f.format(v)  # noqa: E731
            rows.append((name, cls, fmt(c["offered_rps"]), fmt(c["goodput_rps"]), fmt(c["p50_ms"]), fmt(c["p99_ms"]),
                         fmt(c["server_p99_ms"]), fmt(c["slo_attainment"], "{:.1%}"), str(c["resource_exhausted"]),
                         fmt(c["retry_hint_share"], "{:.0%}"),
                         ", ".join(f"{k} {v}" for k, v in c["status_counts"].items())))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for name, mode in report["modes"].items():
        print_mode(name, mode, report["checks"].get(name))


def print_mode(name: str, mode: dict[str, Any], checks_of: dict[str, bool] | None) -> None:
    p, cpu = mode["process"], mode["cpu"]
    print(f"{name}: RSS {p['rss_mb']['before']:.0f} -> max {p['rss_mb']['max']:.0f} -> {p['rss_mb']['after']:.0f} MB; "
          f"threads {p['threads']['before']}/{p['threads']['max']}/{p['threads']['after']}, fds "
          f"{p['fds']['before']}/{p['fds']['max']}/{p['fds']['after']}; max in flight {p['in_flight']['max']}, "
          f"queued {p['queued']['max']}")
    print(f"{name}: after the drain " + ", ".join(f"{k} {p[k]['after']}" for k in GAUGE_KEYS)
          + f"; hangs {mode['hangs']}; heddle answered {mode['server_counts']['answered']:.0f} of {mode['sent']} "
          f"sent; cores: server {cpu['server_cores']:.2f}, load generators {cpu['client_cores']:.2f}, "
          f"box {cpu['box_busy_cores']:.2f}")
    refusals = {k: v for k, v in mode["server_counts"].items() if k.startswith("refused") and v}
    print(f"{name} admission: " + (", ".join(f"{k} {v:.0f}" for k, v in sorted(refusals.items())) or "nothing refused"))
    if checks_of is not None:
        print(f"{name} checks: " + ", ".join(f"{k} {'ok' if v else 'FAIL'}" for k, v in checks_of.items()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of overload per mode")
    p.add_argument("--factor", type=float, default=10.0, help="offered load as a multiple of capacity")
    p.add_argument("--mode", action="append", choices=list(MODES), help="modes to run (default: on, off)")
    p.add_argument("--scenario", default="default", help="base scenario (a shipped name or a TOML file)")
    p.add_argument("--warmup-s", type=float, default=5.0)
    p.add_argument("--capacity-s", type=float, default=10.0)
    p.add_argument("--capacity-concurrency", type=int, default=2, help="in flight per app while measuring capacity")
    p.add_argument("--background-hz", type=float, default=20.0, help="the closed background app's rate, before scaling")
    p.add_argument("--drain-s", type=float, default=60.0, help="after the load, wait this long for replies")
    p.add_argument("--settle-s", type=float, default=60.0, help="then this long for the gauges to reach 0")
    p.add_argument("--sample-s", type=float, default=1.0, help="sampling period of RSS, threads, fds, gauges")
    p.add_argument("--top-slo", type=float, default=0.99, help="check: share of top-class requests in time")
    p.add_argument("--rss-growth-mb", type=float, default=256.0, help="check: max RSS over the RSS before")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nice", type=int, default=-10, help="niceness of bench and servers (below 0 needs root)")
    p.add_argument("--out", help="JSON report (default bench/results/<date>/overload.json)")
    args = p.parse_args(argv)
    args.mode = args.mode or list(MODES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.nice = set_niceness(args.nice)
    out = results_path("overload.json", args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base, capacity, modes = load_scenario(args.scenario), None, {}
    work = out.parent / "overload-work"  # server logs and configs: git-ignored
    work.mkdir(exist_ok=True)
    for mode in args.mode:
        modes[mode], capacity = run_mode(mode, args, work, base, capacity)
    report = {"benchmark": "overload", "date": dt.date.today().isoformat(), "commit": commit(),
              "machine": machine_info(), "params": {k: v for k, v in vars(args).items() if k != "out"},
              "capacity": capacity, "modes": modes,
              "checks": {m: checks(modes[m], args) for m in modes if m == "on"}}
    print_report(report)
    save_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
