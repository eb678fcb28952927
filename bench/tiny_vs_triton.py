"""Benchmark: a tiny one-stage model (16->8 FP32 MLP) on Triton, on heddle and on a raw grpc.aio echo, in one run.

What heddle's own per-request work costs when the model costs almost nothing (#13's "lean hot path"):
  triton  a real Triton 2.51 (nvidia-pytriton's tritonserver) serving `tiny` as a python-backend model
          running the ONNX file with onnxruntime, dynamic batcher on (max_batch_size 64,
          max_queue_delay_microseconds 100), one instance
  heddle  `heddle serve` with the same ONNX file on its own ONNX Runtime CPU devices, KServe v2 frontend,
          as shipped (`inline = "auto"`: on the loop once measured tiny)
  heddle_worker  the same server and file as model `tiny_worker`, `inline = false` (always a worker thread)
  heddle_inline  the same server and file as model `tiny_inline`, with `inline = true` (run on the loop)
  heddle_batched  the same server and file as model `tiny_batched`, with heddle's dynamic batching on
          (max_batch 64, max_queue_delay_us 100: Triton's batcher settings)
  echo    a bare grpc.aio server answering ModelInfer with the pre-serialised right answer: the floor
          for any Python gRPC server receiving the same bytes (no proto parsing, no model)
All three are driven by the same tritonclient.grpc.aio `infer()` of one FP32 [1,16] input. Closed loop,
per concurrency (default 1 and 8) each target in turn: --warmup-s unmeasured, then --duration-s measured
(p50/p99, throughput, server CPU per request from /proc). Ratios are heddle(_inline) / triton and / echo.
--rounds repeats the whole sweep and reports each ratio's median (the box is shared: one round is noisy).

    .venv/bin/python -m bench.tiny_vs_triton
    .venv/bin/python -m bench.tiny_vs_triton --rounds 3 --duration-s 5 --out bench/results/2026-12-03/tiny.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as tgrpc_aio
from grpc_health.v1 import health as health_aio
from grpc_health.v1 import health_pb2_grpc
from tritonclient.grpc import service_pb2 as kpb

from bench.harness import (
    bench_module,
    closed_loop,
    detected_devices,
    free_port,
    heddle_command,
    machine_info,
    onnx_ids,
    save_report,
    server_process,
    summarize,
    tree_cpu_s,
    wait_models_ready,
)
from bench.sweep import add_sweep_args, median_ratios, print_ratios, sweep, sweep_args
from heddle.backends.onnxruntime import read_io_spec
from heddle.backends.triton.repo import write_onnx_python_model
from heddle.backends.triton.server import TritonServer
from heddle.server.config.builder import document, onnx_model, to_toml

__all__ = ["main"]

MODEL = "tiny"
TARGETS = ("triton", "heddle", "heddle_worker", "heddle_inline", "heddle_batched", "echo")
HEDDLE_TARGETS = ("heddle", "heddle_worker", "heddle_inline", "heddle_batched")
# The KServe model each target is asked for: heddle serves the file three times, once with inline = true,
# once with dynamic batching.
MODEL_OF = {"triton": MODEL, "heddle": MODEL, "heddle_worker": MODEL + "_worker", "heddle_inline": MODEL + "_inline",
            "heddle_batched": MODEL + "_batched", "echo": MODEL}
NOTES = [
    "Triton's model is a python-backend model running the ONNX file with onnxruntime (its native onnxruntime "
    "backend is not in the nvidia-pytriton wheel); heddle runs the same file in-process.",
    "Client and servers share the machine's cores: compare ratios from one run, not figures across runs.",
    "echo parses nothing: it answers every call with the same pre-serialised ModelInferResponse.",
]


def build_tiny(path: Path) -> Path:
    """x FP32 [N,16] -> relu(x @ W + b) FP32 [N,8], fixed random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
         helper.make_node("Relu", ["z"], ["y"])], MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def heddle_config_text(model_path: Path, cache_dir: Path, inline: bool = True, batched: bool = True,
                       worker: bool = True) -> str:
    """The embedded default's device tables; the tiny model on its ONNX Runtime CPU devices (and
    again with inline = false, inline = true, and with dynamic batching, unless not: a heddle from
    before those keys would refuse them)."""
    devices = detected_devices()
    cpu_ids = onnx_ids(devices)
    models = [onnx_model(MODEL, str(model_path), devices=cpu_ids)]
    if worker:
        models.append(onnx_model(f"{MODEL}_worker", str(model_path), devices=cpu_ids, inline=False))
    if inline:
        models.append(onnx_model(f"{MODEL}_inline", str(model_path), devices=cpu_ids, inline=True))
    if batched:
        models.append(onnx_model(f"{MODEL}_batched", str(model_path), devices=cpu_ids, max_batch=64,
                                 max_queue_delay_us=100))
    return to_toml(document(server={"cache_dir": str(cache_dir)}, devices=devices, models=models))


# --- the raw echo (runs as `python -m bench.tiny_vs_triton --serve-echo PORT RESPONSE_FILE`) ---

async def _serve_echo(port: int, response: bytes) -> None:
    async def infer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return response

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)})
    server.add_generic_rpc_handlers((handler,))
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _echo_response(y: np.ndarray) -> bytes:
    response = kpb.ModelInferResponse(model_name=MODEL, model_version="1")
    response.outputs.add(name="y", datatype="FP32", shape=list(y.shape))
    response.raw_output_contents.append(y.astype("<f4").tobytes())
    return response.SerializeToString()


# --- load ----------------------------------------------------------------------------------------

async def _closed_loop(clients: list, x: np.ndarray, seconds: float,
                       model: str = MODEL) -> tuple[list[float], list[str]]:
    inp = tgrpc_aio.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return await closed_loop(clients, model, [inp], [tgrpc_aio.InferRequestedOutput("y")], seconds)


async def _measure(url: str, pid: int, model: str, concurrency: int, x: np.ndarray,
                   args: argparse.Namespace) -> dict[str, Any]:
    clients = [tgrpc_aio.InferenceServerClient(url) for _ in range(concurrency)]
    try:
        await _closed_loop(clients, x, args.warmup_s, model)
        cpu0, client0, t0 = tree_cpu_s(pid), time.process_time(), time.perf_counter()
        latencies_ms, errors = await _closed_loop(clients, x, args.duration_s, model)
        wall_s = time.perf_counter() - t0
        cpu_s, client_s = tree_cpu_s(pid) - cpu0, time.process_time() - client0
    finally:
        for c in clients:
            await c.close()
    count = max(1, len(latencies_ms))
    stats = summarize(latencies_ms) if latencies_ms else {"count": 0}
    stats.update(throughput_rps=len(latencies_ms) / wall_s, errors=len(errors),
                 first_error=errors[0] if errors else None, server_cpu_ms_per_request=cpu_s * 1e3 / count,
                 client_cpu_ms_per_request=client_s * 1e3 / count)
    return stats


def _check(url: str, model: str, x: np.ndarray, expected: np.ndarray) -> None:
    async def one() -> np.ndarray:
        async with tgrpc_aio.InferenceServerClient(url) as client:
            inp = tgrpc_aio.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return (await client.infer(model, [inp])).as_numpy("y")
    got = asyncio.run(one())
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"{url} does not answer what the model computes directly")


@contextlib.contextmanager
def servers(args: argparse.Namespace, work: Path, x: np.ndarray) -> Iterator[dict[str, Any]]:
    model_path = build_tiny(work / "tiny.onnx")
    expected = reference(model_path, x)
    ins, outs = read_io_spec(model_path)
    repo = work / "repo"
    write_onnx_python_model(repo, MODEL, model_path, ins, outs, max_batch_size=64, instances=1)
    config = repo / MODEL / "config.pbtxt"  # the batcher waits up to 100 us for more, as #13 names it
    config.write_text(config.read_text().replace("dynamic_batching { }",
                                                 "dynamic_batching { max_queue_delay_microseconds: 100 }"))
    (work / "echo_response.bin").write_bytes(_echo_response(expected))
    triton = TritonServer(repo, work_dir=work / "triton", ready_timeout_s=120).start() \
        if "triton" in args.target else None
    try:
        args.config = work / "heddle.toml"
        args.config.write_text(heddle_config_text(model_path, work / "cache", "heddle_inline" in args.target,
                                                  "heddle_batched" in args.target, "heddle_worker" in args.target))
        hport, eport = free_port(), free_port()
        urls = {"triton": triton.grpc_url if triton else "", "heddle": f"127.0.0.1:{hport}",
                "heddle_worker": f"127.0.0.1:{hport}", "heddle_inline": f"127.0.0.1:{hport}",
                "heddle_batched": f"127.0.0.1:{hport}",
                "echo": f"127.0.0.1:{eport}"}
        echo_cmd = bench_module("tiny_vs_triton", "--serve-echo", str(eport), str(work / "echo_response.bin"))
        with server_process(heddle_command(args, hport, free_port()), urls["heddle"], work / "heddle.log",
                            timeout_s=120) as heddle, \
                server_process(echo_cmd, urls["echo"], work / "echo.log") as echo:
            wait_models_ready(urls["heddle"], [MODEL_OF[t] for t in args.target if t.startswith("heddle")] or [MODEL])
            for target in args.target:
                _check(urls[target], MODEL_OF[target], x, expected)
            yield {"urls": urls, "pids": {"triton": triton.process.pid if triton else 0, "heddle": heddle.pid,
                                          "heddle_worker": heddle.pid, "heddle_inline": heddle.pid,
                                          "heddle_batched": heddle.pid,
                                          "echo": echo.pid},
                   "triton_config": config.read_text(), "heddle_config": args.config.read_text()}
    finally:
        if triton is not None:
            triton.stop()


# --- report --------------------------------------------------------------------------------------

def _ratios(round_results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for mine in (t for t in HEDDLE_TARGETS if t in round_results):
        for base in (b for b in ("triton", "echo") if b in round_results):
            for conc, h in round_results[mine].items():
                b = round_results[base][conc]
                out[f"{mine}/{base} c={conc}"] = {
                    k: h[k] / b[k] for k in ("p50_ms", "p99_ms", "throughput_rps", "server_cpu_ms_per_request")
                    if h.get(k) and b.get(k)}
    return out


def _median_results(rounds: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    keys = ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request")
    first = rounds[0]["results"]
    return {t: {c: {k: statistics.median(r["results"][t][c][k] for r in rounds) for k in keys if k in first[t][c]}
                for c in first[t]} for t in first}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    with servers(args, work, x) as s:
        rounds = sweep(args, lambda target, conc: asyncio.run(
            _measure(s["urls"][target], s["pids"][target], MODEL_OF[target], conc, x, args)), _ratios)
    return {"benchmark": "tiny_vs_triton",
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "params": {"targets": args.target, "concurrency": args.concurrency, "warmup_s": args.warmup_s,
                       "duration_s": args.duration_s,
                       "rounds": args.rounds, "request": "x FP32 [1,16]"},
            "machine": machine_info(), "notes": NOTES, "triton_config": s["triton_config"],
            "heddle_config": s["heddle_config"], "rounds": rounds,
            "median_results": _median_results(rounds), "median_ratios": median_ratios([r["ratios"] for r in rounds])}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_sweep_args(p, TARGETS, "tiny_vs_triton.json")
    p.add_argument("--serve-echo", nargs=2, default=None, metavar=("PORT", "RESPONSE"), help=argparse.SUPPRESS)
    return sweep_args(p.parse_args(argv), TARGETS, "tiny_vs_triton.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_echo:
        asyncio.run(_serve_echo(int(args.serve_echo[0]), Path(args.serve_echo[1]).read_bytes()))
        return 0
    with tempfile.TemporaryDirectory(prefix="heddle-tiny-") as tmp:
        report = run(args, Path(tmp))
    save_report(report, args.out)
    for target, by_conc in report["median_results"].items():
        for conc, r in by_conc.items():
            print(f"median {target:<7} c={conc:<2} " + "  ".join(f"{k} {v:.3f}" for k, v in r.items()))
    print_ratios(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
