"""`heddle reload`: ask a running gateway to reload its config (models and pipelines) without a
restart; prints what was added, changed and removed, or why nothing changed."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from heddle.clients.client import DEFAULT_TARGET, HeddleClient
from heddle.clients.errors import HeddleError
from heddle.clients.tls_args import add_tls_args, tls_kwargs

__all__ = ["add_reload_parser", "run_reload"]


def add_reload_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `reload` on an argparse subparsers object; sets `func=run_reload`."""
    p = subparsers.add_parser("reload", help="reload a running gateway's config (models, pipelines) without a restart")
    p.add_argument("--config", default="", help="config file path on the server's machine (default: the one it runs)")
    p.add_argument("--target", default=DEFAULT_TARGET, help=f"gateway HOST:PORT (default {DEFAULT_TARGET})")
    p.add_argument("--token", default=None, help="admin bearer token")
    add_tls_args(p)
    p.set_defaults(func=run_reload)
    return p


def run_reload(args: argparse.Namespace) -> int:
    """0 when reloaded; 1 with the server's reason when nothing changed."""
    try:
        with HeddleClient(args.target, token=args.token, **tls_kwargs(args)) as client:
            status = client.reload_config(args.config, timeout_s=600)
    except HeddleError as exc:
        print(f"heddle reload: {exc}", file=sys.stderr)
        return 1
    print(f"reloaded {status.config_path} in {status.load_ms:.0f} ms")
    for what in ("models", "pipelines"):
        for change in ("added", "changed", "removed"):
            names = list(getattr(status, f"{what}_{change}"))
            if names:
                print(f"  {what} {change}: {', '.join(names)}")
    return 0
