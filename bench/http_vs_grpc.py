"""Benchmark: heddle's HTTP port (KServe v2 REST, binary tensors) against its gRPC port (KServe v2 gRPC)
on the tiny one-stage model (16->8 FP32 MLP), and against Triton's own HTTP endpoint, in one run.

One `heddle serve` process with the tiny model (bench/tiny_vs_triton.py's file and config) serves both
ports; Triton 2.51 (nvidia-pytriton's tritonserver, the model as a python-backend model running the same
ONNX file with onnxruntime, dynamic batcher on) is started too unless --no-triton. Closed loop per
concurrency (default 1 and 8), the targets taking turns: --warmup-s unmeasured, then --duration-s
measured (p50/p99, throughput, server CPU per request from /proc):
  grpc         tritonclient.grpc.aio against heddle's gRPC port (the reference)
  http         tritonclient.http.aio against heddle's HTTP port, binary data in and out
  triton_http  tritonclient.http.aio against Triton's HTTP port
Ratios http/grpc and http/triton_http per concurrency; --rounds repeats the sweep, medians reported.

    .venv/bin/python -m bench.http_vs_grpc
    .venv/bin/python -m bench.http_vs_grpc --rounds 3 --duration-s 5 --out bench/results/2026-12-03/http_vs_grpc.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http.aio as thttp_aio

from bench.harness import (
    closed_loop,
    free_port,
    heddle_command,
    machine_info,
    save_report,
    server_process,
    summarize,
    tree_cpu_s,
    wait_models_ready,
)
from bench.sweep import add_sweep_args, median_ratios, print_ratios, sweep, sweep_args
from bench.tiny_vs_triton import MODEL, build_tiny, heddle_config_text, reference
from heddle.backends.onnxruntime import read_io_spec
from heddle.backends.triton.repo import write_onnx_python_model
from heddle.backends.triton.server import TritonServer

__all__ = ["main"]

TARGETS = ("grpc", "http", "triton_http")
NOTES = [
    "grpc and http are the same heddle process, model and runtime: the ratio is the cost of the transport "
    "and its frontend (uvicorn + starlette + JSON header vs grpc.aio + protobuf).",
    "Triton's model is a python-backend model running the ONNX file with onnxruntime (its native onnxruntime "
    "backend is not in the nvidia-pytriton wheel), with its dynamic batcher; heddle runs the file in-process.",
    "Client and servers share the machine's cores: compare ratios from one run, not figures across runs.",
    "The clients are the libraries users run (tritonclient.grpc.aio, tritonclient.http.aio on aiohttp); their own "
    "CPU per request is reported beside the server's, since on a shared box it limits throughput too.",
]


def _client(target: str, url: str, x: np.ndarray) -> tuple[Any, list[Any], list[Any]]:
    """A KServe client of the target's protocol, the request's inputs and outputs in its library's types."""
    lib = tgrpc_aio if target == "grpc" else thttp_aio
    inputs = [lib.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)  # binary data on HTTP: tritonclient's default
    return lib.InferenceServerClient(url), inputs, [lib.InferRequestedOutput("y")]


async def _measure(target: str, url: str, pid: int, concurrency: int, x: np.ndarray, expected: np.ndarray,
                   args: argparse.Namespace) -> dict[str, Any]:
    made = [_client(target, url, x) for _ in range(concurrency)]
    clients, (_, inputs, outputs) = [c for c, _, _ in made], made[0]
    try:
        first = await clients[0].infer(MODEL, inputs, outputs=outputs)
        if not np.allclose(first.as_numpy("y"), expected, rtol=1e-5, atol=1e-6):
            raise RuntimeError(f"{target} does not answer what the model computes directly")
        await closed_loop(clients, MODEL, inputs, outputs, args.warmup_s)
        cpu0, client0, t0 = tree_cpu_s(pid), time.process_time(), time.perf_counter()
        latencies_ms, errors = await closed_loop(clients, MODEL, inputs, outputs, args.duration_s)
        wall_s, cpu_s = time.perf_counter() - t0, tree_cpu_s(pid) - cpu0
        client_s = time.process_time() - client0
    finally:
        for c in clients:
            await c.close()
    stats = summarize(latencies_ms) if latencies_ms else {"count": 0}
    stats.update(throughput_rps=len(latencies_ms) / wall_s, errors=len(errors),
                 first_error=errors[0] if errors else None,
                 server_cpu_ms_per_request=cpu_s * 1e3 / max(1, len(latencies_ms)),
                 client_cpu_ms_per_request=client_s * 1e3 / max(1, len(latencies_ms)))
    return stats


@contextlib.contextmanager
def servers(args: argparse.Namespace, work: Path) -> Iterator[dict[str, Any]]:
    model_path = build_tiny(work / "tiny.onnx")
    triton = None
    if "triton_http" in args.target:
        ins, outs = read_io_spec(model_path)
        repo = work / "repo"
        write_onnx_python_model(repo, MODEL, model_path, ins, outs, max_batch_size=64, instances=1)
        triton = TritonServer(repo, work_dir=work / "triton", ready_timeout_s=120).start()
    try:
        args.config = work / "heddle.toml"
        args.config.write_text(heddle_config_text(model_path, work / "cache"))
        gport, hport = free_port(), free_port()
        cmd = heddle_command(args, gport, free_port())
        cmd[cmd.index("--http-port") + 1] = str(hport)  # a known port rather than the harness's free one
        with server_process(cmd, f"127.0.0.1:{gport}", work / "heddle.log", timeout_s=120) as heddle:
            wait_models_ready(f"127.0.0.1:{gport}", [MODEL])
            yield {"model": model_path,
                   "urls": {"grpc": f"127.0.0.1:{gport}", "http": f"127.0.0.1:{hport}",
                            "triton_http": triton.http_url.removeprefix("http://") if triton else ""},
                   "pids": {"grpc": heddle.pid, "http": heddle.pid,
                            "triton_http": triton.process.pid if triton else 0}}
    finally:
        if triton is not None:
            triton.stop()


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for base in (b for b in ("grpc", "triton_http") if b in results and "http" in results):
        for conc, h in results["http"].items():
            b = results[base][conc]
            out[f"http/{base} c={conc}"] = {k: h[k] / b[k] for k in ("throughput_rps", "p50_ms", "p99_ms",
                                                                      "server_cpu_ms_per_request",
                                                                      "client_cpu_ms_per_request")
                                            if h.get(k) and b.get(k)}
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    with servers(args, work) as s:
        expected = reference(s["model"], x)
        rounds = sweep(args, lambda target, conc: asyncio.run(
            _measure(target, s["urls"][target], s["pids"][target], conc, x, expected, args)), _ratios)
    return {"benchmark": "http_vs_grpc",
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "params": {"targets": args.target, "concurrency": args.concurrency, "warmup_s": args.warmup_s,
                       "duration_s": args.duration_s, "rounds": args.rounds, "request": "x FP32 [1,16]"},
            "machine": machine_info(), "notes": NOTES, "rounds": rounds,
            "median_ratios": median_ratios([r["ratios"] for r in rounds])}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sweep_args(p, TARGETS, "http_vs_grpc.json")
    p.add_argument("--no-triton", action="store_true", help="leave Triton's HTTP endpoint out")
    args = sweep_args(p.parse_args(argv), TARGETS, "http_vs_grpc.json")
    args.target = [t for t in args.target if not (args.no_triton and t == "triton_http")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="heddle-http-") as tmp:
        report = run(args, Path(tmp))
    print_ratios(report)
    save_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
