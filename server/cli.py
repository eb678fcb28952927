"""The `heddle` command line: serve, infer, list, bench, simulate, profile."""

from __future__ import annotations

import argparse
import asyncio
import sys

__all__ = ["main"]


def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the gateway (embedded default config when --config is not given)")
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--grpc-host")
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--metrics-host")
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--policy")
    p.add_argument("--insecure-admin", action="store_true", default=None,
                   help="serve the Admin RPCs beyond loopback with no admin token (refused otherwise)")
    p.add_argument("--log-level")
    p.add_argument("--log-json", action="store_true", default=None, help="JSON logs even on a terminal")
    p.add_argument("--trace", metavar="FILE", help="record arrivals as a JSON-lines trace (heddle simulate --trace)")


def _serve(args) -> int:
    from heddle.server.app import serve
    from heddle.server.config import ConfigError, load_config
    from heddle.server.logs import configure_logging, get_logger

    configure_logging(args.log_level or "info", json_output=args.log_json)
    try:
        config = load_config(args.config, grpc_host=args.grpc_host, grpc_port=args.grpc_port,
                             metrics_host=args.metrics_host, metrics_port=args.metrics_port,
                             policy=args.policy, log_level=args.log_level, trace_file=args.trace,
                             insecure_admin=args.insecure_admin)
    except ConfigError as exc:
        print(f"heddle: config error: {exc}", file=sys.stderr)
        return 2
    if args.log_level is None and config.server.log_level != "info":
        configure_logging(config.server.log_level, json_output=args.log_json)
    from heddle.backends.base import BackendError
    from heddle.server.binding import StartError

    try:
        asyncio.run(serve(config))
    except StartError as exc:  # exposed admin RPCs, a taken port, a bad TLS file: one line, no traceback
        print(f"heddle: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:  # a model or device that cannot load: say so, without a traceback
        print(f"heddle: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        get_logger("heddle").error("cannot serve", error=str(exc))
        return 1
    return 0


def _add_simulate_parser(sub) -> None:
    from heddle.scheduler.replay import LOCAL_PLATFORM, add_replay_arguments
    from heddle.scheduler.simulator import add_simulate_arguments

    p = sub.add_parser("simulate", help="compare scheduling policies on a simulated platform (virtual clock)")
    add_simulate_arguments(p, extra_platforms=(LOCAL_PLATFORM,))
    add_replay_arguments(p)


def _simulate(args) -> int:
    import json
    from pathlib import Path

    from heddle.scheduler.simulator import run_from_args

    try:
        table, report = _replay(args) if args.trace or args.platform == "local" else run_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"heddle: {exc}", file=sys.stderr)
        return 2
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _replay(args) -> tuple[str, dict]:
    """`heddle simulate --trace FILE --profile FILE --platform local`: a live trace, replayed."""
    from heddle.scheduler.replay import run_replay_from_args
    from heddle.server.profile_cmd import load_profile_file

    if not (args.trace and args.profile and args.platform == "local"):
        raise ValueError("replaying a trace needs --trace FILE, --profile FILE (from `heddle profile`) "
                         "and --platform local together")
    with open(args.trace) as f:
        trace_text = f.read()
    return run_replay_from_args(args, trace_text, load_profile_file(args.profile))


def main(argv: list[str] | None = None) -> int:
    from heddle.clients.infer_cli import add_infer_parser, add_list_parser, run_infer, run_list
    from heddle.clients.bench_cli import add_bench_parser, run_bench
    from heddle.server.profile_cmd import add_profile_parser, run_profile

    parser = argparse.ArgumentParser(prog="heddle", description="gRPC gateway for compound-AI pipelines")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_parser(sub)
    add_infer_parser(sub)
    add_list_parser(sub)
    add_bench_parser(sub)
    _add_simulate_parser(sub)
    add_profile_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "profile":
        return run_profile(args)
    if args.command == "bench":
        return run_bench(args)
    if args.command == "infer":
        return run_infer(args)
    return run_list(args)


if __name__ == "__main__":
    sys.exit(main())
