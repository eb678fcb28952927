"""Benchmark: what heddle's gateway adds over a raw gRPC echo, on loopback, measured in one run.

Modes, each against its own server process (started here, one at a time so they never share the CPU):
  raw            a grpc.aio unary echo server (generic handler, bytes in -> same bytes out)
  heddle         heddle Infer of the one-stage `echo` pipeline (bench/echo.toml), called with the
                 very same request bytes and no client-side (de)serialisation, like `raw`
  heddle_client  the same Infer through AsyncHeddleClient (adds tensor encode/decode in the client)
For each: sequential p50/p99 over --requests calls after --warmup, then --concurrency asyncio
clients (one channel each) sharing --requests calls: throughput, p50/p99, CPU ms per request.
Writes JSON (--out) with raw figures, heddle/raw ratios and machine info. A benchmark, not a test.

    .venv/bin/python -m bench.gateway_overhead --requests 2000 --payload-bytes 1024
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import _async as health_aio  # the asyncio HealthServicer
from grpc_health.v1 import health_pb2_grpc

from bench.harness import (
    BENCH_DIR,
    bench_module,
    free_port,
    heddle_command,
    machine_info,
    process_cpu_s,
    results_path,
    save_report,
    server_process,
    summarize,
)
from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.tensors import from_tensor, to_tensor
from heddle.v1 import heddle_pb2

__all__ = ["main"]

RAW_METHOD = "/bench.Echo/Echo"
HEDDLE_METHOD = "/heddle.v1.Gateway/Infer"
MODES = ("raw", "heddle", "heddle_client")
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_OPTIONS = [("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES)]

Call = Callable[[], Awaitable[Any]]
Close = Callable[[], Awaitable[None]]


# --- the raw echo server (runs as `python -m bench.gateway_overhead --serve-echo PORT`) --------------------

async def _serve_echo(port: int) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    server = grpc.aio.server(options=_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})  # no serializers: bytes
    server.add_generic_rpc_handlers((handler,))
    health = health_aio.HealthServicer()  # SERVING for "" from the start
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# --- figures -----------------------------------------------------------------------------------

def print_table(report: dict[str, Any]) -> None:
    rows = [("mode", "seq p50 ms", "seq p99 ms", "conc p50 ms", "conc p99 ms", "req/s",
             "srv cpu ms/req")]
    for mode, r in report["results"].items():
        seq, conc = r["sequential"], r["concurrent"]
        cpu = conc["server_cpu_ms_per_request"]
        rows.append((mode, f"{seq['p50_ms']:.3f}", f"{seq['p99_ms']:.3f}", f"{conc['p50_ms']:.3f}",
                     f"{conc['p99_ms']:.3f}", f"{conc['throughput_rps']:.0f}",
                     "-" if cpu is None else f"{cpu:.3f}"))
    for name, r in report["ratios"].items():
        rows.append((name, *(f"x{r[k]:.2f}" for k in (
            "sequential.p50_ms", "sequential.p99_ms", "concurrent.p50_ms", "concurrent.p99_ms",
            "concurrent.throughput_rps")), ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    p = report["params"]
    print(f"gateway overhead: {p['requests']} requests, request {p['request_bytes']} bytes, "
          f"concurrency {p['concurrency']}, {report['machine']['cpu_count']} CPUs")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --- clients and measurement -------------------------------------------------------------------

def make_payload(payload_bytes: int) -> tuple[np.ndarray, bytes]:
    """The FP32 input array and the serialized InferRequest both modes send."""
    array = np.random.default_rng(0).standard_normal(max(1, payload_bytes // 4)).astype(np.float32)
    request = heddle_pb2.InferRequest(pipeline="echo", inputs=[to_tensor("x", array)])
    return array, request.SerializeToString()


async def open_client(mode: str, target: str, array: np.ndarray, payload: bytes) -> tuple[Call, Close]:
    """One client of `mode`: an awaitable call sending one request, and a close."""
    if mode == "heddle_client":
        client = AsyncHeddleClient(target)
        return (lambda: client.infer("echo", {"x": array})), client.close
    channel = grpc.aio.insecure_channel(target, options=_OPTIONS)
    rpc = channel.unary_unary(RAW_METHOD if mode == "raw" else HEDDLE_METHOD)  # bytes in, bytes out
    return (lambda: rpc(payload)), channel.close


def check_reply(mode: str, reply: Any, array: np.ndarray, payload: bytes) -> None:
    """Fail loudly unless the server really echoed the input (no benchmarking a broken path)."""
    if mode == "raw":
        ok = reply == payload
    elif mode == "heddle":
        outputs = {t.name: from_tensor(t) for t in heddle_pb2.InferResponse.FromString(reply).outputs}
        ok = "y" in outputs and np.array_equal(outputs["y"], array)
    else:
        ok = np.array_equal(reply.outputs.get("y"), array)
    if not ok:
        raise RuntimeError(f"{mode}: the reply does not echo the request")


async def measure_sequential(call: Call, requests: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await call()
    latencies_ms = []
    for _ in range(requests):
        t0 = time.perf_counter_ns()
        await call()
        latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)
    return latencies_ms


async def measure_concurrent(clients: list[Call], requests: int, warmup: int,
                             server_pid: int) -> dict[str, Any]:
    for call in clients:
        for _ in range(max(1, warmup // len(clients))):
            await call()
    remaining = requests
    latencies_ms: list[float] = []

    async def worker(call: Call) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter_ns()
            await call()
            latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)

    server_cpu0, client_cpu0, t0 = process_cpu_s(server_pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(call) for call in clients))
    wall_s = time.perf_counter() - t0
    server_cpu1 = process_cpu_s(server_pid)
    stats = summarize(latencies_ms)
    stats["throughput_rps"] = requests / wall_s
    stats["wall_s"] = wall_s
    stats["client_cpu_ms_per_request"] = (time.process_time() - client_cpu0) * 1e3 / requests
    stats["server_cpu_ms_per_request"] = (
        None if server_cpu0 is None or server_cpu1 is None
        else (server_cpu1 - server_cpu0) * 1e3 / requests)
    return stats


async def measure_mode(mode: str, target: str, args: argparse.Namespace, array: np.ndarray,
                       payload: bytes, server_pid: int) -> dict[str, Any]:
    call, close = await open_client(mode, target, array, payload)
    try:
        check_reply(mode, await call(), array, payload)
        sequential = summarize(await measure_sequential(call, args.requests, args.warmup))
    finally:
        await close()
    opened = [await open_client(mode, target, array, payload) for _ in range(args.concurrency)]
    try:
        concurrent = await measure_concurrent([c for c, _ in opened], args.requests, args.warmup,
                                              server_pid)
    finally:
        for _, close in opened:
            await close()
    return {"sequential": sequential, "concurrent": concurrent}


def ratios(results: dict[str, Any], base: str = "raw") -> dict[str, Any]:
    """Each mode's figures divided by the raw echo's (latency > 1 and throughput < 1 are overhead)."""
    keys = {"sequential": ("p50_ms", "p99_ms", "mean_ms"),
            "concurrent": ("p50_ms", "p99_ms", "throughput_rps")}
    return {f"{mode}/{base}": {f"{phase}.{key}": results[mode][phase][key] / results[base][phase][key]
                               for phase, ks in keys.items() for key in ks}
            for mode in results if mode != base}


def run(args: argparse.Namespace) -> dict[str, Any]:
    array, payload = make_payload(args.payload_bytes)
    logs = args.out.parent
    results: dict[str, Any] = {}
    port = free_port()
    echo_cmd = bench_module("gateway_overhead", "--serve-echo", str(port))
    with server_process(echo_cmd, f"127.0.0.1:{port}", logs / "raw_echo.log") as proc:
        results["raw"] = asyncio.run(measure_mode("raw", f"127.0.0.1:{port}", args, array, payload,
                                                  proc.pid))
    if not args.skip_heddle:
        port, metrics_port = free_port(), free_port()
        target = f"127.0.0.1:{port}"
        with server_process(heddle_command(args, port, metrics_port), target, logs / "heddle.log",
                            health_service=args.health_service) as proc:
            for mode in ("heddle", "heddle_client"):
                results[mode] = asyncio.run(measure_mode(mode, target, args, array, payload, proc.pid))
    return {
        "benchmark": "gateway_overhead",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "params": {"requests": args.requests, "warmup": args.warmup, "concurrency": args.concurrency,
                   "payload_bytes": args.payload_bytes, "request_bytes": len(payload),
                   "config": str(args.config)},
        "machine": machine_info(),
        "results": results,
        "ratios": ratios(results),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="measured requests per phase")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured requests before each phase")
    p.add_argument("--payload-bytes", type=int, default=1024, help="FP32 input size in bytes")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent asyncio clients")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default bench/results/<date>/gateway_overhead.json)")
    p.add_argument("--config", type=Path, default=BENCH_DIR / "echo.toml")
    p.add_argument("--heddle-cmd", default=None, help="command to run heddle (default: venv `heddle`)")
    p.add_argument("--health-service", default="", help="health service name to wait for")
    p.add_argument("--skip-heddle", action="store_true", help="measure only the raw echo")
    p.add_argument("--serve-echo", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.config = args.config.resolve()  # the server runs from the repo root, not from here
    args.out = results_path("gateway_overhead.json", args.out)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_echo is not None:
        asyncio.run(_serve_echo(args.serve_echo))
        return 0
    report = run(args)
    print_table(report)
    save_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
