"""The closed-loop target sweep the same-box comparisons share (tiny_vs_triton, http_vs_grpc):
arguments, rounds in which targets take turns, and ratios reduced to their median over rounds."""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.harness import results_path

__all__ = ["add_sweep_args", "median_ratios", "print_ratios", "sweep", "sweep_args"]

Measure = Callable[[str, int], dict[str, Any]]  # (target, concurrency) -> stats of one closed loop


def add_sweep_args(p: argparse.ArgumentParser, targets: Sequence[str], out_name: str) -> None:
    p.add_argument("--concurrency", type=int, action="append", help="closed-loop clients (default 1 and 8)")
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--duration-s", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3, help="sweeps; each ratio's median is reported")
    p.add_argument("--target", action="append", choices=targets, help="only these targets (default all)")
    p.add_argument("--heddle-cmd", default=None, help="command to run heddle (default: venv `heddle`)")
    p.add_argument("--out", type=Path, default=None, help=f"JSON (default bench/results/<date>/{out_name})")


def sweep_args(args: argparse.Namespace, targets: Sequence[str], out_name: str) -> argparse.Namespace:
    """Defaults that depend on other arguments; targets keep their declared order."""
    args.concurrency = args.concurrency or [1, 8]
    args.target = [t for t in targets if t in (args.target or targets)]
    args.out = results_path(out_name, args.out)
    return args


def sweep(args: argparse.Namespace, measure: Measure,
          ratios: Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """`args.rounds` rounds; within one, every concurrency level and, per level, every target in
    turn, so drift on a shared box hits the targets alike and ratios are taken inside a round."""
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        results: dict[str, dict[str, Any]] = {t: {} for t in args.target}
        for conc in args.concurrency:
            for target in args.target:
                stats = measure(target, conc)
                results[target][str(conc)] = stats
                print(f"  round {i} {target:<11} c={conc:<2} {stats['throughput_rps']:7.1f} req/s  "
                      f"p50 {stats.get('p50_ms', 0):6.3f} ms  server cpu {stats['server_cpu_ms_per_request']:.3f} "
                      f"ms/req  errors {stats['errors']}", flush=True)
        rounds.append({"results": results, "ratios": ratios(results)})
    return rounds


def median_ratios(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {name: {k: statistics.median(r[name][k] for r in rounds if k in r[name]) for k in rounds[0][name]}
            for name in rounds[0]}


def print_ratios(report: dict[str, Any]) -> None:
    for name, r in report["median_ratios"].items():
        print(f"{name:<22} " + "  ".join(f"{k} x{v:.2f}" for k, v in r.items()))
