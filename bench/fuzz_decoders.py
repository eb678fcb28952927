"""Benchmark (issue 11): a fuzz of the request decoders and validators, heddle.v1 and KServe.

Hypothesis makes the cases (tests/fuzz_requests.py, the strategies the test suite fuzzes with, at
scale here): tensors of every datatype, well-formed or with their name, datatype, shape or bytes
mangled; absurd shapes; KServe raw and typed contents; parameters of every kind and value;
priorities, deadlines, ids, requested outputs and generation options; raw bytes (random, or a real
request cut or corrupted).

1. In-process, the bulk (--cases, default 100,000): each request through the real servicers
   (GatewayServicer.Infer, KServeServicer.ModelInfer) of a server in this process, only the
   transport left out: validation, decoding, the scheduler and the stages are the real ones.
2. Over gRPC (--wire-cases, default 10,000): messages unary and on InferStream / ModelStreamInfer,
   and raw bytes, to a `heddle serve` process of its own.

Every answer must be an allowed status code (ALLOWED_CODES); "unexpected" counts the others and
any crash (an exception instead of a status, or a hang). Neither server may log an error (a bug a
fine status code can hide). Afterwards both must answer their health check SERVING, the process
must be alive, and the in-process server's core must hold no request. Prints the counts and writes
bench/results/<date>/fuzz_decoders.json; exits 1 on any unexpected answer. There is no reference to
compare with: the result is a count, not a speed.

    .venv/bin/python -m bench.fuzz_decoders                                # ~10 minutes on 2 cores
    .venv/bin/python -m bench.fuzz_decoders --cases 2000 --wire-cases 500  # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bench.harness import ROOT, free_port, machine_info, results_path, server_process

# The fuzz strategies and callers are the suite's own (tests/fuzz_*.py, tests/server_fixtures.py), run
# here by the hundred thousand: tests/ is not a package, so its folder goes on the path as pytest's does.
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_callers import ErrorLog, InProcess, OverGrpc, Tally  # noqa: E402
from fuzz_requests import ALLOWED_CODES, FUZZ_CONFIG, cases  # noqa: E402
from server_fixtures import parse_test_document, running_server  # noqa: E402

from heddle.server.config.builder import to_toml  # noqa: E402
from heddle.server.observe.logs import configure_logging  # noqa: E402


def run_cases(strategy: st.SearchStrategy, n: int, answer: Callable[[Any], str], tally: Tally,
              label: str) -> float:
    """Feed n hypothesis-made cases to `answer`, counting into `tally`; returns the seconds taken.
    Generation only (no shrinking, no example database): a failure is counted, not minimised."""
    t0 = time.perf_counter()
    done = [0]

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(item=strategy)
    def feed(item) -> None:
        case, stream = item if isinstance(item, tuple) else (item, False)  # over gRPC: (case, on a stream)
        try:
            answer_code = answer(item)
        except Exception as exc:  # counted, not fatal: a run is minutes long
            answer_code = f"caller error {type(exc).__name__}: {str(exc)[:160]}"
        tally.add(answer_code, case, stream)
        done[0] += 1
        if done[0] % 10_000 == 0:
            print(f"  {label}: {done[0]} cases, {time.perf_counter() - t0:.0f} s, "
                  f"{tally.num_unexpected} unexpected", flush=True)
    feed()
    return time.perf_counter() - t0


def serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def part_report(tally: Tally, elapsed_s: float, **extra: Any) -> dict[str, Any]:
    cases_n = sum(tally.counts.values())
    return {"cases": cases_n, "elapsed_s": round(elapsed_s, 1), "cases_per_s": round(cases_n / elapsed_s, 1),
            "codes": dict(tally.counts.most_common()),
            "by_kind": {k: dict(c.most_common()) for k, c in sorted(tally.by_kind.items())},
            "unexpected": tally.num_unexpected, "unexpected_examples": tally.unexpected, **extra}


def in_process(n: int, cache_dir: str | None) -> dict[str, Any]:
    """The bulk: through the servicers of a server on a loop thread of this process."""
    overrides = {"cache_dir": cache_dir} if cache_dir else {}
    with running_server(parse_test_document(FUZZ_CONFIG, **overrides)) as running, ErrorLog() as errors:
        caller, tally = InProcess(running.server, running.loop), Tally()
        elapsed = run_cases(cases(raw=False), n, caller.answer, tally, "in-process")

        async def footprint():
            return running.server.runtime.core.footprint()
        held = asyncio.run_coroutine_threadsafe(footprint(), running.loop).result(30)
        return part_report(tally, elapsed, serving_after=serving(running.target), core_footprint_after=held,
                           errors_logged=len(errors.messages), error_examples=errors.messages[:10])


def over_grpc(n: int, out_dir: Path) -> dict[str, Any]:
    """The share on the wire: a `heddle serve` process, unary calls, streams and raw bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "fuzz.toml"
        config.write_text(to_toml(FUZZ_CONFIG))
        port = free_port()
        target = f"127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "heddle.server.cli", "serve", "--config", str(config), "--grpc-port",
               str(port), "--metrics-port", str(free_port()), "--http-port", "0", "--log-level", "warning",
               "--log-json"]
        log_path = out_dir / "logs" / "fuzz_decoders_server.log"
        with server_process(cmd, target, log_path, timeout_s=300) as proc:
            caller, tally = OverGrpc(target), Tally()
            # One message in four on a stream; raw bytes go unary.
            streams = st.tuples(cases(), st.integers(0, 3)).map(lambda t: (t[0], t[1] == 0 and t[0].raw is None))
            try:
                elapsed = run_cases(streams, n, lambda item: caller.answer(*item), tally, "over gRPC")
            finally:
                caller.close()
            alive = proc.poll() is None
            serving_after = alive and serving(target)
        errors = [line for line in log_path.read_text(errors="replace").splitlines()
                  if '"level": "error"' in line or '"level": "critical"' in line]
        return part_report(tally, elapsed, server_alive=alive, serving_after=serving_after,
                           errors_logged=len(errors), error_examples=[e[:400] for e in errors[:10]],
                           command=shlex.join(cmd))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=100_000, help="in-process cases (default 100000)")
    p.add_argument("--wire-cases", type=int, default=10_000, help="cases over gRPC (default 10000)")
    p.add_argument("--cache-dir", help="model cache for the in-process server (default: heddle's)")
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/<date>/fuzz_decoders.json)")
    args = p.parse_args()
    out = results_path("fuzz_decoders.json", args.out)
    configure_logging("warning")  # a refusal logs an info line: 100,000 of them would be the run
    report: dict[str, Any] = {"params": {"cases": args.cases, "wire_cases": args.wire_cases},
                              "command": shlex.join([sys.executable, *sys.argv]), "machine": machine_info(),
                              "allowed_codes": sorted(ALLOWED_CODES)}
    print(f"in-process: {args.cases} cases", flush=True)
    report["in_process"] = in_process(args.cases, args.cache_dir)
    print(f"over gRPC: {args.wire_cases} cases", flush=True)
    report["over_grpc"] = over_grpc(args.wire_cases, out.parent)
    parts = (report["in_process"], report["over_grpc"])
    report["passed"] = all(part["unexpected"] == 0 and part["errors_logged"] == 0 and part["serving_after"]
                           for part in parts) and not any(report["in_process"]["core_footprint_after"].values())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, part in (("in-process", parts[0]), ("over gRPC", parts[1])):
        print(f"{name}: {part['cases']} cases in {part['elapsed_s']} s, unexpected {part['unexpected']}, "
              f"errors logged {part['errors_logged']}, serving after: {part['serving_after']}")
        for line in part["error_examples"]:
            print(f"  ERROR LOGGED: {line}")
        for kind, codes in part["by_kind"].items():
            print(f"  {kind:14} " + ", ".join(f"{c} {n}" for c, n in codes.items()))
        for answer, case in part["unexpected_examples"]:
            print(f"  UNEXPECTED {answer}: {case}")
    print(f"{'PASSED' if report['passed'] else 'FAILED'}; wrote {out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
