"""`heddle config check [FILE]` and `heddle config schema`: a config checked as `heddle serve` would
check it at start, and the JSON Schema editors validate and complete config files with."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_config_parser", "run_config"]


def add_config_parser(sub) -> None:
    p = sub.add_parser("config", help="check a config file, or print its JSON Schema")
    actions = p.add_subparsers(dest="config_command", required=True)
    check = actions.add_parser("check", help="load a config as `heddle serve` would; exit 2 with the error")
    check.add_argument("file", nargs="?", help="TOML config file (default: the embedded default config)")
    actions.add_parser("schema", help="print the JSON Schema of config files (for editors)")


def run_config(args: argparse.Namespace) -> int:
    if args.config_command == "schema":
        from heddle.server.config.schema import json_schema

        print(json_schema())
        return 0
    return _check(args.file)


def _check(path: str | None) -> int:
    """Everything `heddle serve` checks before it opens a port: keys, types, devices, DAG wiring,
    model files read (built-in models built), Triton servers asked for undeclared IO."""
    from heddle.server.config.load import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"heddle: config error: {exc}", file=sys.stderr)
        return 2
    print(f"{config.source}: ok: {_count(len(config.devices), 'device')} "
          f"({', '.join(d.id for d in config.devices)}), {_count(len(config.models), 'model')}, "
          f"{_count(len(config.pipelines), 'pipeline')}, policy {config.server.policy}")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
