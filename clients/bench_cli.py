"""The `heddle bench` subcommand: run a scenario against a gateway and write its report folder.

Importing this module has no side effects and needs neither rich nor matplotlib: the progress
bar and the plots are used when those (the `bench` extra) are installed, and skipped otherwise.
Exit status: 0 done, 1 the server could not be used, 2 a bad scenario or argument, 130 stopped
by Ctrl-C (the partial report is still written).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from heddle.clients.bench_metrics import metrics_delta, scrape
from heddle.clients.bench_text import app_line, summary_text
from heddle.clients.html_report import HTML_FILE, write_html
from heddle.clients.loadgen import LiveCounts, LoadResult, build_app_inputs, run_load
from heddle.clients.plots import plots_available, write_plots
from heddle.clients.report import (
    RECORDS_FILE,
    RUN_FILE,
    SUMMARY_CSV,
    SUMMARY_JSON,
    read_records,
    summarize,
    write_csv,
    write_records,
    write_summary,
)
from heddle.clients.scenarios import SCENARIOS, Scenario, ScenarioError, load_scenario
from heddle.clients.targets import add_target_args, async_client, resolve_target

__all__ = ["add_bench_parser", "build_report", "run_bench"]

METRICS_BEFORE, METRICS_AFTER = "metrics_before.prom", "metrics_after.prom"
STARTED_LINE = "bench: sending requests"  # printed to stderr when load starts (tests wait for it)


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `bench ...` on an argparse subparsers object; sets `func=run_bench`."""
    p = subparsers.add_parser("bench", help="load-test a gateway with a scenario and write a report")
    add_target_args(p)
    p.add_argument("--scenario", default=None, metavar="NAME|FILE",
                   help=f"a shipped scenario ({', '.join(SCENARIOS)}) or a TOML file; default: default")
    p.add_argument("--duration", type=float, default=20.0, metavar="S", help="seconds of load (default 20)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="report folder (default bench-results/<scenario>-<time>)")
    p.add_argument("--seed", type=int, default=0, help="seed for arrivals and generated inputs")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply every open-loop rate")
    p.add_argument("--drain", type=float, default=10.0, metavar="S",
                   help="after the load, wait this long for replies still in flight (default 10)")
    p.add_argument("--request-timeout", type=float, default=60.0, metavar="S",
                   help="gRPC timeout of each request (default 60)")
    p.add_argument("--metrics", default=None, metavar="URL",
                   help="heddle's /metrics URL, scraped before and after for the server-side view")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-scenarios", action="store_true", help="print the shipped scenarios and exit")
    p.add_argument("--rebuild", default=None, metavar="DIR",
                   help="rebuild the summary, plots and HTML of a report folder from its raw files; no load")
    p.set_defaults(func=run_bench)
    return p


@dataclasses.dataclass(slots=True)
class _Outcome:
    result: LoadResult
    devices: list[dict[str, Any]]
    metrics_before: str | None = None
    metrics_after: str | None = None


def run_bench(args: argparse.Namespace) -> int:
    """Run `heddle bench`; see the module docstring for exit codes."""
    if args.list_scenarios:
        for name in SCENARIOS:
            s = load_scenario(name)
            print(f"{name}: {s.description}\n  " + "\n  ".join(app_line(a) for a in s.apps))
        return 0
    if args.rebuild:
        try:
            print(summary_text(build_report(Path(args.rebuild))))
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"error: cannot rebuild {args.rebuild}: {err!r}", file=sys.stderr)
            return 2
        return 0
    try:
        scenario = load_scenario(args.scenario).scaled(args.rate_scale)
        if args.duration <= 0:
            raise ScenarioError(f"--duration must be positive, got {args.duration}")
    except ScenarioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started_at = dt.datetime.now(dt.timezone.utc)
    out = Path(args.out or f"bench-results/{scenario.name}-{started_at:%Y%m%d-%H%M%S}")
    try:
        outcome = asyncio.run(_bench(args, scenario))
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = _write_report(out, args, scenario, outcome, started_at)
    print(summary_text(summary))
    print(f"report: {out / HTML_FILE}  (records: {out / RECORDS_FILE})")
    if outcome.result.interrupted:
        print("interrupted: the report covers the part that ran", file=sys.stderr)
        return 130
    return 0


def _install_sigint(stop: asyncio.Event, abort: asyncio.Event, drain_s: float) -> bool:
    """First Ctrl-C stops sending and drains; a second cancels what is still in flight."""
    def on_sigint() -> None:
        if not stop.is_set():
            print(f"\nstopping: waiting up to {drain_s:g} s for replies (Ctrl-C again to cancel them)",
                  file=sys.stderr, flush=True)
            stop.set()
        else:
            abort.set()
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        return False
    return True


async def _bench(args: argparse.Namespace, scenario: Scenario) -> _Outcome:
    stop, abort = asyncio.Event(), asyncio.Event()
    handled = _install_sigint(stop, abort, args.drain)
    try:
        async with async_client(args) as client:
            pipelines = await client.list_pipelines(timeout_s=10.0)
            # Devices are a heddle.v1 listing: over HTTP the report has none.
            devices = [] if resolve_target(args).protocol == "http" else [
                {"id": d.id, "kind": d.kind, "backend": d.backend, "providers": list(d.providers), "slots": d.slots}
                for d in await client.list_devices(timeout_s=10.0)]
            inputs = build_app_inputs(scenario.apps, pipelines, np.random.default_rng(args.seed))
            before = await asyncio.to_thread(scrape, args.metrics) if args.metrics else None
            counts = LiveCounts()
            print(STARTED_LINE, file=sys.stderr, flush=True)
            with _progress(args, counts) as progress:
                result = await progress.run(run_load(
                    client, scenario, inputs, duration_s=args.duration, seed=args.seed, stop=stop,
                    abort=abort, drain_s=args.drain, request_timeout_s=args.request_timeout,
                    counts=counts))
            after = await asyncio.to_thread(scrape, args.metrics) if args.metrics else None
    finally:
        if handled:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
    return _Outcome(result, devices, before, after)


class _Progress:
    """A rich progress bar over the load's duration, with live counts; a no-op without rich."""

    def __init__(self, duration_s: float, counts: LiveCounts, enabled: bool) -> None:
        self.duration_s, self.counts, self._bar = duration_s, counts, None
        if enabled:
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:
                return
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=False)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("load", total=self.duration_s, counts="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    async def run(self, load: Any) -> LoadResult:
        task = asyncio.ensure_future(load)
        if self._bar is None:
            return await task
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not task.done():
            self._show(loop.time() - t0)
            await asyncio.wait([task], timeout=0.2)  # a display refresh, not a wait for state
        self._show(loop.time() - t0, "done")
        return task.result()

    def _show(self, elapsed_s: float, state: str = "") -> None:
        c = self.counts
        state = state or ("load" if elapsed_s < self.duration_s else "draining")
        self._bar.update(self._task, completed=min(elapsed_s, self.duration_s), description=state,
                         counts=f"sent {c.sent}  ok {c.ok}  errors {c.errors}  in flight {c.in_flight}")


def _progress(args: argparse.Namespace, counts: LiveCounts) -> _Progress:
    return _Progress(args.duration, counts, enabled=not args.no_progress)


def _run_meta(args: argparse.Namespace, scenario: Scenario, outcome: _Outcome,
              started_at: dt.datetime) -> dict[str, Any]:
    apps = [{**dataclasses.asdict(a), "offered_rps": a.offered_rps} for a in scenario.apps]
    return {
        "scenario": {"name": scenario.name, "description": scenario.description, "apps": apps},
        "target": resolve_target(args).address, "protocol": resolve_target(args).protocol, "seed": args.seed,
        "duration_s": args.duration,
        "rate_scale": args.rate_scale, "drain_s": args.drain, "request_timeout_s": args.request_timeout,
        "window_s": outcome.result.window_s, "interrupted": outcome.result.interrupted,
        "started_at": started_at.isoformat(timespec="seconds"), "records_file": RECORDS_FILE,
        "host": platform.node(), "client_machine": {
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "server_devices": outcome.devices,
    }


def _write_report(out: Path, args: argparse.Namespace, scenario: Scenario, outcome: _Outcome,
                  started_at: dt.datetime) -> dict[str, Any]:
    """Save the raw files (run.json, records, /metrics scrapes), then build the report from them."""
    out.mkdir(parents=True, exist_ok=True)
    run = _run_meta(args, scenario, outcome, started_at)
    (out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    write_records(out / RECORDS_FILE, outcome.result.records)
    if outcome.metrics_before is not None and outcome.metrics_after is not None:
        (out / METRICS_BEFORE).write_text(outcome.metrics_before, encoding="utf-8")
        (out / METRICS_AFTER).write_text(outcome.metrics_after, encoding="utf-8")
    return build_report(out)


def build_report(out: Path) -> dict[str, Any]:
    """Summary JSON/CSV, plots and HTML from the raw files in `out`; returns the summary.

    The report is built only from what is saved (run.json, requests.jsonl, the /metrics
    scrapes), so running this again on a copied folder gives the same figures.
    """
    run = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    records = read_records(out / RECORDS_FILE)
    summary = summarize(records, run["window_s"], [a["name"] for a in run["scenario"]["apps"]])
    server_metrics = None
    if (out / METRICS_BEFORE).exists() and (out / METRICS_AFTER).exists():
        server_metrics = metrics_delta((out / METRICS_BEFORE).read_text(encoding="utf-8"),
                                       (out / METRICS_AFTER).read_text(encoding="utf-8"))
    write_summary(out / SUMMARY_JSON, run, summary, server_metrics)
    write_csv(out / SUMMARY_CSV, summary)
    images = write_plots(out, records, summary) if plots_available() else {}
    if not images:
        print("note: matplotlib is not installed (pip install 'heddle[bench]'): no plots", file=sys.stderr)
    doc = {"run": run, "summary": summary}
    if server_metrics is not None:
        doc["server_metrics"] = server_metrics
    write_html(out / HTML_FILE, doc, images)
    return summary
