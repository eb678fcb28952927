"""`heddle top`: a live terminal view of a running gateway, from its metrics endpoint and its
ListDevices / GetPolicy RPCs: devices (busy, queue, DVFS level, power with its source), pipelines
(rate, p99, deadline violation rate) and the policy. `--once` prints one plain-text screen.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from heddle.clients.client import DEFAULT_TARGET, HeddleClient
from heddle.clients.errors import HeddleError
from heddle.clients.tls_args import add_tls_args, tls_kwargs
from heddle.clients.top_view import Frame, build_frame, parse_metrics

__all__ = ["add_top_parser", "render_text", "run_top"]

DEFAULT_METRICS = "http://127.0.0.1:8002/metrics"


def add_top_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `top` on an argparse subparsers object; sets `func=run_top`."""
    p = subparsers.add_parser("top", help="live view of a running gateway's devices, pipelines and policy")
    p.add_argument("--target", default=DEFAULT_TARGET, help=f"gateway HOST:PORT (default {DEFAULT_TARGET})")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"metrics endpoint URL (default {DEFAULT_METRICS})")
    p.add_argument("--token", default=None, help="admin bearer token (to read the policy beyond loopback)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between screens (default 2)")
    p.add_argument("--once", action="store_true", help="print one screen as plain text and exit")
    add_tls_args(p)
    p.set_defaults(func=run_top)
    return p


def _fmt(value: float | None, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _rows(frame: Frame) -> tuple[list[list[str]], list[list[str]]]:
    devices = [[d.device, d.kind, "up" if d.healthy else "DOWN", f"{d.running}/{d.slots}", str(d.queued),
                _fmt(None if d.busy is None else 100 * d.busy, ".0f") + ("%" if d.busy is not None else ""),
                _fmt(d.dvfs_level, ".0f"),
                "-" if d.power_w is None else f"{d.power_w:.1f} W ({d.power_source})"]
               for d in frame.devices]
    pipelines = [[p.pipeline, f"{p.rate_per_s:.1f}", f"{p.errors_per_s:.1f}", _fmt(p.p99_ms, ".1f"),
                  "-" if p.dvr is None else f"{100 * p.dvr:.1f}%"] for p in frame.pipelines]
    return devices, pipelines


DEVICE_HEAD = ["device", "kind", "health", "running", "queued", "busy", "dvfs", "power"]
PIPELINE_HEAD = ["pipeline", "req/s", "err/s", "p99 ms", "DVR"]


def _table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in [head, *rows])


def _header(frame: Frame, policy: str) -> str:
    return (f"heddle top: policy {policy}, {frame.in_flight:.0f} in flight, "
            f"rates over the last {frame.interval_s:.1f} s")


def render_text(frame: Frame, policy: str) -> str:
    """One screen as plain text (what --once prints)."""
    devices, pipelines = _rows(frame)
    return "\n\n".join([_header(frame, policy), _table(DEVICE_HEAD, devices),
                        _table(PIPELINE_HEAD, pipelines or [["(no request ended yet)", "", "", "", ""]])])


def _render_rich(frame: Frame, policy: str) -> Any:
    from rich.console import Group
    from rich.table import Table

    devices, pipelines = _rows(frame)
    tables = []
    for title, head, rows in (("devices", DEVICE_HEAD, devices), ("pipelines", PIPELINE_HEAD, pipelines)):
        table = Table(title=title, title_justify="left", expand=False)
        for name in head:
            table.add_column(name, justify="left" if name in ("device", "kind", "pipeline", "health") else "right")
        for row in rows:
            table.add_row(*row, style="bold red" if "DOWN" in row else None)
        tables.append(table)
    return Group(_header(frame, policy), *tables)


def _scrape(url: str) -> dict[Any, float]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (an operator-given URL)
        return parse_metrics(response.read().decode())


def _policy(client: HeddleClient) -> str:
    try:
        return client.get_policy(timeout_s=5).policy
    except HeddleError as exc:  # admin RPCs need the token beyond loopback: show the rest anyway
        return f"? ({exc.code().name})"


def _frames(args: argparse.Namespace, client: HeddleClient,
            sleep: Callable[[float], None] = time.sleep) -> Any:
    """Endless (policy, frame) pairs, one per interval."""
    before, t0 = _scrape(args.metrics), time.monotonic()
    while True:
        sleep(args.interval)
        after, t1 = _scrape(args.metrics), time.monotonic()
        yield _policy(client), build_frame(before, after, t1 - t0, client.list_devices(timeout_s=5))
        before, t0 = after, t1


def run_top(args: argparse.Namespace) -> int:
    """0 on --once or Ctrl-C; 1 when the gateway or its metrics endpoint cannot be reached."""
    try:
        with HeddleClient(args.target, token=args.token, **tls_kwargs(args)) as client:
            frames = _frames(args, client)
            if args.once:
                policy, frame = next(frames)
                print(render_text(frame, policy))
                return 0
            try:
                from rich.live import Live
            except ImportError:  # plain screens, one after another
                for policy, frame in frames:
                    print(render_text(frame, policy), end="\n\n", flush=True)
            with Live(auto_refresh=False) as live:
                for policy, frame in frames:
                    live.update(_render_rich(frame, policy), refresh=True)
    except KeyboardInterrupt:
        return 0
    except (urllib.error.URLError, OSError) as exc:
        print(f"heddle top: cannot read metrics at {args.metrics}: {exc}", file=sys.stderr)
        return 1
    except HeddleError as exc:
        print(f"heddle top: {args.target}: {exc}", file=sys.stderr)
        return 1
    return 0
