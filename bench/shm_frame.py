"""Benchmark: a 1080p camera frame (1080x1920x3 UINT8, 6.2 MB) through a one-stage pipeline, sent as
bytes in the request against read from system shared memory, with the stage's own compute time
measured in the same run (ModelStatistics' compute_infer).

One `heddle serve` with a python stage that reads every byte of the frame (a per-channel mean, about
what a resize or normalisation touches) on the python pool. Sequential requests from one client
(tritonclient.grpc), each target in turn, --rounds times:
  bytes  the frame in raw_input_contents (serialised, sent over loopback gRPC, decoded)
  shm    the client writes the frame into its registered region, the request names the region: the
         server reads it in place (no copy), as a camera process writing frames into shared memory would
Reported: p50/p99 end to end per target, the stage's mean compute time, and p50 / compute.

    .venv/bin/python -m bench.shm_frame
    .venv/bin/python -m bench.shm_frame --requests 200 --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.utils.shared_memory as shm

from bench.harness import (
    free_port,
    heddle_command,
    machine_info,
    results_path,
    save_report,
    server_process,
    summarize,
    write_config,
)
from heddle.server.config.builder import document, pipeline, python_device, python_model, stage, tensor

__all__ = ["channel_means", "main"]

FRAME_SHAPE = (1080, 1920, 3)
MODEL = "frame"
NOTES = [
    "compute is the stage's own time (ModelStatistics compute_infer / count) in the same run; end to end is "
    "the client's, from before it writes the frame (shm) or builds the request (bytes) to the answer.",
    "Client and server share the machine's cores: compare ratios from one run.",
]


def channel_means(image: np.ndarray) -> dict[str, np.ndarray]:
    """The python stage: the frame's per-channel mean (reads every byte once)."""
    return {"means": image.reshape(-1, 3).mean(axis=0, dtype=np.float64).astype(np.float32)}


def config_doc() -> dict[str, Any]:
    image = tensor("image", "UINT8", FRAME_SHAPE)
    model = python_model("channel_means", "bench.shm_frame:channel_means", [image],
                         [tensor("means", "FP32", (3,))], devices=["py0"])
    return document(devices=[python_device("py0", kind="cpu", slots=1)], models=[model],
                    pipelines=[pipeline(MODEL, [image], {"means": "s.means"},
                                        [stage("s", "channel_means", image="input:image")])])


def _compute_ms(client: tgrpc.InferenceServerClient) -> tuple[int, float]:
    stats = client.get_inference_statistics(MODEL).model_stats[0].inference_stats
    return stats.compute_infer.count, stats.compute_infer.ns / 1e6


def _measure(client: tgrpc.InferenceServerClient, target: str, frame: np.ndarray, region: Any,
             requests: int) -> dict[str, Any]:
    count0, ms0 = _compute_ms(client)
    latencies_ms = []
    for _ in range(requests):
        t0 = time.perf_counter_ns()
        x = tgrpc.InferInput("image", list(FRAME_SHAPE), "UINT8")
        if target == "shm":
            shm.set_shared_memory_region(region, [frame])
            x.set_shared_memory("frame", frame.nbytes)
        else:
            x.set_data_from_numpy(frame)
        client.infer(MODEL, [x])
        latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)
    count1, ms1 = _compute_ms(client)
    stats = summarize(latencies_ms)
    stats["compute_ms_mean"] = (ms1 - ms0) / max(1, count1 - count0)
    stats["p50_over_compute"] = stats["p50_ms"] / stats["compute_ms_mean"]
    return stats


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    frame = np.random.default_rng(0).integers(0, 255, FRAME_SHAPE, dtype=np.uint8)
    args.config = write_config(work / "heddle.toml", config_doc())
    port = free_port()
    key = f"/heddle_bench_frame_{os.getpid()}"
    region = shm.create_shared_memory_region("frame", key, frame.nbytes)
    rounds = []
    try:
        with server_process(heddle_command(args, port, free_port()), f"127.0.0.1:{port}", work / "heddle.log"):
            client = tgrpc.InferenceServerClient(f"127.0.0.1:{port}")
            client.register_system_shared_memory("frame", key, frame.nbytes)
            for target in ("bytes", "shm"):  # warm-up: the first requests map pages and load the stage
                _measure(client, target, frame, region, 5)
            for i in range(args.rounds):
                results = {t: _measure(client, t, frame, region, args.requests) for t in ("bytes", "shm")}
                for t, s in results.items():
                    print(f"  round {i} {t:<5} p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms  compute "
                          f"{s['compute_ms_mean']:6.2f} ms  p50/compute x{s['p50_over_compute']:.2f}", flush=True)
                rounds.append(results)
            client.unregister_system_shared_memory()
            client.close()
    finally:
        shm.destroy_shared_memory_region(region)
    medians = {t: {k: statistics.median(r[t][k] for r in rounds)
                   for k in ("p50_ms", "p99_ms", "compute_ms_mean", "p50_over_compute")} for t in ("bytes", "shm")}
    medians["shm/bytes p50"] = {"ratio": medians["shm"]["p50_ms"] / medians["bytes"]["p50_ms"]}
    return {"benchmark": "shm_frame", "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "params": {"frame": list(FRAME_SHAPE), "requests": args.requests, "rounds": args.rounds},
            "machine": machine_info(), "notes": NOTES, "rounds": rounds, "medians": medians}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=100, help="sequential requests per target and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--heddle-cmd", default=None, help="command to run heddle (default: python -m heddle.server.cli)")
    p.add_argument("--out", type=Path, default=None, help="JSON (default bench/results/<date>/shm_frame.json)")
    args = p.parse_args(argv)
    # `python -m` from the repository root (server_process's cwd) lets the server import bench.shm_frame.
    args.heddle_cmd = args.heddle_cmd or f"{sys.executable} -m heddle.server.cli"
    args.out = results_path("shm_frame.json", args.out)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="heddle-frame-") as tmp:
        report = run(args, Path(tmp))
    for name, r in report["medians"].items():
        print(f"{name:<14} " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()))
    save_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
