"""Profile: where heddle's server CPU goes per request on the tiny model under closed-loop load (py-spy).

Starts `heddle serve` with bench/tiny_vs_triton.py's 16->8 MLP, drives it with --concurrency
tritonclient.grpc.aio clients for --duration-s, samples the server with `py-spy record --format raw`
(every thread, on-CPU samples only) and attributes each sample to the innermost frame that belongs to
a named part of the hot path (CATEGORIES, first match from the leaf up). Each part's share of the
samples times the server's CPU per request (from /proc over the same window) gives an estimated
CPU per request for that part: estimated, since sampling at --rate Hz has its own error and py-spy's
own sampling costs the 2-core box some CPU. Also prints the heaviest leaf frames.

    .venv/bin/pip install py-spy      # the bench extra has it
    .venv/bin/python -m bench.profile_hot_path --out bench/results/2026-12-03/profile_before.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
import time
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
    tree_cpu_s,
    wait_models_ready,
)
from bench.tiny_vs_triton import MODEL, _closed_loop, build_tiny, heddle_config_text

__all__ = ["CATEGORIES", "attribute", "main"]

# (part, pattern on "function (file:line)"): the first pattern matching a frame, from the leaf up, names
# the sample's part. Order matters where a heddle module calls a library (metrics before prometheus).
CATEGORIES: list[tuple[str, str]] = [
    ("onnxruntime run", r"onnxruntime/capi|backends/onnxruntime\.py"),
    ("metrics", r"runtime/metrics\.py|prometheus_client"),
    ("logs", r"structlog|observe/logs\.py|logging/"),
    ("energy bookkeeping", r"power/energy\.py"),
    ("trace", r"runtime/trace\.py"),
    ("kserve stats", r"kserve_stats\.py"),
    ("proto decode/encode", r"kserve_convert\.py|clients/tensors\.py|google/protobuf|_pb2"),
    ("validation", r"frontends/validation\.py|decode_guard\.py"),
    ("limits", r"runtime/limits\.py|runtime/inflight\.py|memory_estimate\.py"),
    ("scheduler core", r"(^|[ (/])scheduler/"),
    ("stage runner / executor hop", r"stage_runner\.py|concurrent/futures|stage_timeouts\.py|threading\.py"),
    ("runtime (jobs, step, resolve)", r"runtime/runtime\.py|runtime/stepping\.py|runtime/jobs\.py|"
                                       r"runtime/status\.py|runtime/llm_"),
    # The HTTP port (--protocol http): the server, the router, heddle's REST adapter and JSON.
    ("uvicorn + httptools", r"uvicorn/|httptools"),
    ("starlette", r"starlette/|anyio/"),
    ("http frontend (bodies, JSON)", r"frontends/http_|json/"),
    ("frontend handler", r"frontends/kserve\.py|frontends/service\.py|frontends/"),
    ("asyncio loop", r"asyncio/"),
    ("grpc.aio", r"grpc/"),
]
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*)(?::\d+)?\)$")


def attribute(raw: str) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Samples per part, per leaf frame, and in all, from py-spy's raw (collapsed) output."""
    parts: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    compiled = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaves[frames[-1]] += count
        part = "other"
        for frame in reversed(frames):
            part = next((name for name, rx in compiled if rx.search(frame)), "")
            if part:
                break
        parts[part or "other"] += count
    return parts, leaves, total


async def _load(url: str, concurrency: int, seconds: float, http_url: str = "") -> int:
    """Closed-loop load on the gRPC port, or on the HTTP port (tritonclient.http.aio, binary data) with http_url."""
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    lib = thttp_aio if http_url else tgrpc_aio
    clients = [lib.InferenceServerClient(http_url or url) for _ in range(concurrency)]
    try:
        if http_url:
            inp = thttp_aio.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            latencies, errors = await closed_loop(clients, MODEL, [inp], [thttp_aio.InferRequestedOutput("y")],
                                                  seconds)
        else:
            latencies, errors = await _closed_loop(clients, x, seconds)
    finally:
        for c in clients:
            await c.close()
    if errors:
        raise RuntimeError(f"{len(errors)} errors under load, first: {errors[0]}")
    return len(latencies)


def profile(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    args.config = work / "heddle.toml"
    args.config.write_text(heddle_config_text(build_tiny(work / "tiny.onnx"), work / "cache"))
    port, http_port = free_port(), free_port()
    url = f"127.0.0.1:{port}"
    cmd = heddle_command(args, port, free_port())
    cmd[cmd.index("--http-port") + 1] = str(http_port)
    http_url = f"127.0.0.1:{http_port}" if args.protocol == "http" else ""
    with server_process(cmd, url, work / "heddle.log", timeout_s=120) as proc:
        wait_models_ready(url, [MODEL])
        asyncio.run(_load(url, args.concurrency, args.warmup_s, http_url))
        raw_path = work / "profile.txt"
        spy = subprocess.Popen([args.py_spy, "record", "--pid", str(proc.pid), "--format", "raw", "--rate",
                                str(args.rate), "--duration", str(int(args.duration_s)), "--output", str(raw_path),
                                *(["--native"] if args.native else ["--nonblocking"]),
                                *(["--gil"] if args.gil else [])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # py-spy attaches before the measured load starts
        cpu0, t0 = tree_cpu_s(proc.pid), time.perf_counter()
        requests = asyncio.run(_load(url, args.concurrency, args.duration_s - 1.0, http_url))
        wall_s, cpu_s = time.perf_counter() - t0, tree_cpu_s(proc.pid) - cpu0
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw_path.exists():
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
        if args.raw_out is not None:
            shutil.copy(raw_path, args.raw_out)
    parts, leaves, total = attribute(raw_path.read_text())
    cpu_ms = cpu_s * 1e3 / max(1, requests)
    return {"benchmark": "profile_hot_path",
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "params": {"protocol": args.protocol, "concurrency": args.concurrency, "duration_s": args.duration_s,
                       "rate_hz": args.rate,
                       "native": args.native, "gil_only": args.gil},
            "machine": machine_info(), "requests": requests, "throughput_rps": requests / wall_s,
            "server_cpu_ms_per_request": cpu_ms, "samples": total,
            "parts": {p: {"samples": n, "share": n / total, "est_cpu_us_per_request": 1e3 * cpu_ms * n / total}
                      for p, n in parts.most_common()},
            "top_leaves": [{"frame": f, "share": n / total} for f, n in leaves.most_common(args.top)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc",
                   help="load the gRPC port (KServe gRPC) or the HTTP port (KServe REST, binary data)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--duration-s", type=float, default=15.0)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25, help="leaf frames to list")
    p.add_argument("--native", action="store_true", help="py-spy --native: C frames too (grpc core, protobuf)")
    p.add_argument("--gil", action="store_true", help="py-spy --gil: only samples holding the GIL")
    p.add_argument("--raw-out", type=Path, default=None, help="keep py-spy's collapsed stacks here")
    p.add_argument("--heddle-cmd", default=None)
    p.add_argument("--py-spy", default=shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="heddle-prof-") as tmp:
        report = profile(args, Path(tmp))
    print(f"{report['throughput_rps']:.0f} req/s, server CPU {report['server_cpu_ms_per_request']:.3f} ms/request, "
          f"{report['samples']} samples (estimated split)")
    for part, r in report["parts"].items():
        print(f"  {part:<32} {r['share']:6.1%}  ~{r['est_cpu_us_per_request']:6.0f} us/request")
    print("heaviest leaf frames:")
    for leaf in report["top_leaves"]:
        print(f"  {leaf['share']:6.1%}  {leaf['frame']}")
    if args.out is not None:
        save_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
