"""The `heddle` command line: serve, infer, list, top, reload, bench, simulate, profile, config."""

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
    p.add_argument("--http-host")
    p.add_argument("--http-port", type=int)
    p.add_argument("--policy")
    p.add_argument("--insecure-admin", action="store_true", default=None,
                   help="serve the Admin RPCs beyond loopback with no admin token (refused otherwise)")
    p.add_argument("--log-level")
    p.add_argument("--log-json", action="store_true", default=None, help="JSON logs even on a terminal")
    p.add_argument("--trace", metavar="FILE", help="record arrivals as a JSON-lines trace (heddle simulate --trace)")


def _serve(args) -> int:
    from heddle.server.app import serve
    from heddle.server.config.load import ConfigError, load_config
    from heddle.server.observe.logs import configure_logging, get_logger

    configure_logging(args.log_level or "info", json_output=args.log_json)
    try:
        config = load_config(args.config, grpc_host=args.grpc_host, grpc_port=args.grpc_port,
                             metrics_host=args.metrics_host, metrics_port=args.metrics_port,
                             http_host=args.http_host, http_port=args.http_port,
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


def main(argv: list[str] | None = None) -> int:
    from heddle.clients.admin_cli import add_reload_parser
    from heddle.clients.bench_cli import add_bench_parser
    from heddle.clients.infer_cli import add_infer_parser, add_list_parser
    from heddle.clients.tls_args import TlsArgsError
    from heddle.clients.top import add_top_parser
    from heddle.server.tools.config_cmd import add_config_parser
    from heddle.server.tools.profile_cmd import add_profile_parser
    from heddle.server.tools.simulate_cmd import add_simulate_parser

    parser = argparse.ArgumentParser(prog="heddle", description="gRPC gateway for compound-AI pipelines")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve_parser(sub)
    add_infer_parser(sub)
    add_list_parser(sub)
    add_top_parser(sub)
    add_reload_parser(sub)
    add_bench_parser(sub)
    add_simulate_parser(sub)
    add_profile_parser(sub)
    add_config_parser(sub)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except TlsArgsError as exc:  # --ca/--cert/--key of a client command: one line, no traceback
        print(f"heddle {args.command}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from heddle.clients.admin_cli import run_reload
    from heddle.clients.bench_cli import run_bench
    from heddle.clients.infer_cli import run_infer, run_list
    from heddle.clients.top import run_top
    from heddle.server.tools.config_cmd import run_config
    from heddle.server.tools.profile_cmd import run_profile
    from heddle.server.tools.simulate_cmd import run_simulate

    if args.command == "serve":
        return _serve(args)
    if args.command == "simulate":
        return run_simulate(args)
    if args.command == "profile":
        return run_profile(args)
    if args.command == "config":
        return run_config(args)
    if args.command == "bench":
        return run_bench(args)
    if args.command == "reload":
        return run_reload(args)
    if args.command == "top":
        return run_top(args)
    if args.command == "infer":
        return run_infer(args)
    return run_list(args)


if __name__ == "__main__":
    sys.exit(main())
