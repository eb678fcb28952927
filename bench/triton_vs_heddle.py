"""Benchmark: a Triton ensemble of 3 models vs heddle running the same 3-stage pipeline, in one run.

Targets, all driven by the same tritonclient.grpc.aio ModelInfer code with the same payload:
  triton_ensemble  a real Triton server (nvidia-pytriton's tritonserver 2.51) serving `chain`, an
                   ensemble of backbone -> head_cls -> postprocess (python-backend models running
                   the zoo ONNX files with onnxruntime, and zoo.ops.postprocess in numpy)
  heddle_local     heddle's KServe v2 frontend, pipeline `chain_local`: the same 3 stages on heddle's
                   own ONNX Runtime devices (the embedded default's pinned CPU devices) and py0
  heddle_triton    heddle's pipeline `chain_triton`: every stage dispatched to that Triton server
  heddle_local_batched  `chain_local_batched`: chain_local with heddle's dynamic batching on its two
                   ONNX stages (max_batch 8, no wait when idle: as the embedded default's demo models)
Closed loop: per concurrency (default 1, 4, 16), each target in turn gets --warmup-s of unmeasured
load, then --duration-s measured: p50/p99 latency, throughput, server and client CPU per request.
Ratios are heddle / triton_ensemble. Writes JSON (--out). A benchmark, not a test.

    .venv/bin/python -m bench.triton_vs_heddle
    .venv/bin/python -m bench.triton_vs_heddle --concurrency 1 --concurrency 8 --duration-s 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio

from bench.harness import (
    closed_loop,
    detected_devices,
    free_port,
    heddle_command,
    machine_info,
    results_path,
    save_report,
    server_process,
    summarize,
    tree_cpu_s,
    wait_models_ready,
)
from bench.triton_ensemble import (
    ENSEMBLE,
    HEDDLE_LOCAL,
    HEDDLE_LOCAL_BATCHED,
    HEDDLE_TRITON,
    OUTPUTS,
    build_chain,
    check_answer,
    heddle_config_text,
    reference_outputs,
    write_triton_repository,
)
from heddle.backends.triton.server import TritonServer

__all__ = ["main"]

TARGETS = {"triton_ensemble": ENSEMBLE, "heddle_local": HEDDLE_LOCAL, "heddle_triton": HEDDLE_TRITON,
           "heddle_local_batched": HEDDLE_LOCAL_BATCHED}
NOTES = [
    "No priority levels and no queue-timeout policy in any Triton model: on Triton 2.51 with one "
    "python-backend instance either makes the dynamic batcher sometimes sleep its full 500 ms idle wait "
    "with requests queued (p99 ~0.5 s at 4-8 clients; see backends/triton/repo.py). heddle sends no "
    "priority to models without priority levels.",
    "Triton models are python-backend models running the same ONNX files with onnxruntime (1 intra-op "
    "thread); Triton's native onnxruntime backend is not in the nvidia-pytriton wheel.",
    "Closed loop, one gRPC channel per client, client and servers on the same machine: on a small box "
    "they share the CPU, so compare ratios from one run, not absolute figures across runs.",
]


# --- load ----------------------------------------------------------------------------------------

def _request(image: np.ndarray) -> tuple[list[tgrpc_aio.InferInput], list[tgrpc_aio.InferRequestedOutput]]:
    x = tgrpc_aio.InferInput("image", list(image.shape), "FP32")
    x.set_data_from_numpy(image)
    return [x], [tgrpc_aio.InferRequestedOutput(name) for name in OUTPUTS]


async def _closed_loop(clients: list, model: str, image: np.ndarray, seconds: float) -> tuple[list[float], list[str]]:
    """Every client sends its next request as soon as its last one is answered, for `seconds`."""
    inputs, outputs = _request(image)
    return await closed_loop(clients, model, inputs, outputs, seconds)


async def _measure(url: str, model: str, concurrency: int, image: np.ndarray, args: argparse.Namespace,
                   server_pids: dict[str, int]) -> dict[str, Any]:
    clients = [tgrpc_aio.InferenceServerClient(url) for _ in range(concurrency)]
    try:
        await _closed_loop(clients, model, image, args.warmup_s)
        cpu0 = {name: tree_cpu_s(pid) for name, pid in server_pids.items()}
        busy0, client_cpu0, t0 = machine_busy_s(), time.process_time(), time.perf_counter()
        latencies_ms, errors = await _closed_loop(clients, model, image, args.duration_s)
        wall_s = time.perf_counter() - t0
        client_cpu_s = time.process_time() - client_cpu0
        cpu1 = {name: tree_cpu_s(pid) for name, pid in server_pids.items()}
        busy1 = machine_busy_s()
    finally:
        for c in clients:
            await c.close()
    count = max(1, len(latencies_ms))
    stats = summarize(latencies_ms) if latencies_ms else {"count": 0}
    stats.update(throughput_rps=len(latencies_ms) / wall_s, wall_s=wall_s, errors=len(errors),
                 first_error=errors[0] if errors else None,
                 client_cpu_ms_per_request=client_cpu_s * 1e3 / count,
                 # Cores busy with anything but this client and the servers: noise on a shared box.
                 other_cpu_cores=(busy1 - busy0 - client_cpu_s - sum(cpu1[n] - cpu0[n] for n in cpu0)) / wall_s,
                 server_cpu_ms_per_request={name: (cpu1[name] - cpu0[name]) * 1e3 / count for name in cpu0})
    return stats


def machine_busy_s() -> float:
    """CPU seconds spent not idle, all cores together, since boot (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- servers -------------------------------------------------------------------------------------

def server_version(url: str) -> str:
    with tgrpc.InferenceServerClient(url) as client:
        meta = client.get_server_metadata()
    return f"{meta.name} {meta.version}"


@contextlib.contextmanager
def servers(args: argparse.Namespace, work: Path) -> Iterator[dict[str, Any]]:
    """Triton (serving the ensemble), then heddle (configured against it); yields urls, pids, info."""
    chain = build_chain(args.cache_dir)
    write_triton_repository(work / "repo", chain, max_batch_size=args.triton_max_batch_size,
                            instances=args.triton_instances)
    # start() raises TritonServerError quoting the server's log when it fails.
    triton = TritonServer(work / "repo", work_dir=work / "triton", ready_timeout_s=120).start()
    try:
        config = work / "heddle.toml"
        config.write_text(heddle_config_text(args.cache_dir, chain, triton.grpc_url,
                                             triton_slots=args.triton_slots))
        args.config = config
        port, metrics_port = free_port(), free_port()
        heddle_url = f"127.0.0.1:{port}"
        with server_process(heddle_command(args, port, metrics_port), heddle_url, work / "heddle.log",
                            timeout_s=120) as heddle:
            wait_models_ready(heddle_url, [HEDDLE_LOCAL, HEDDLE_TRITON, HEDDLE_LOCAL_BATCHED])
            yield {"chain": chain, "config_text": config.read_text(),
                   "urls": {"triton": triton.grpc_url, "heddle": heddle_url},
                   "pids": {"triton": triton.process.pid, "heddle": heddle.pid},
                   "triton_startup_s": triton.startup_s,
                   "versions": {"tritonserver": server_version(triton.grpc_url),
                                "heddle_server": server_version(heddle_url)}}
    finally:
        triton.stop()


# --- report --------------------------------------------------------------------------------------

def ratios(results: dict[str, dict[str, Any]], base: str = "triton_ensemble") -> dict[str, Any]:
    """target / base per concurrency: latency > 1 and throughput < 1 mean slower than Triton's ensemble."""
    out: dict[str, Any] = {}
    if base not in results:
        return out
    for target, by_conc in results.items():
        if target == base:
            continue
        out[f"{target}/{base}"] = {
            conc: {key: stats[key] / results[base][conc][key] for key in ("p50_ms", "p99_ms", "throughput_rps")
                   if stats.get(key) and results[base][conc].get(key)}
            for conc, stats in by_conc.items()}
    return out


def print_table(report: dict[str, Any]) -> None:
    rows = [("target", "clients", "req/s", "p50 ms", "p99 ms", "p50 x", "p99 x", "req/s x",
             "triton cpu ms/req", "heddle cpu ms/req", "other cores", "errors")]
    for target, by_conc in report["results"].items():
        for conc, s in by_conc.items():
            r = report["ratios"].get(f"{target}/triton_ensemble", {}).get(conc, {})
            cpu = s["server_cpu_ms_per_request"]
            rows.append((target, conc, f"{s['throughput_rps']:.1f}", f"{s.get('p50_ms', 0):.2f}",
                         f"{s.get('p99_ms', 0):.2f}",
                         *(f"{r[k]:.2f}" if k in r else "" for k in ("p50_ms", "p99_ms", "throughput_rps")),
                         f"{cpu['triton']:.2f}", f"{cpu['heddle']:.2f}", f"{s['other_cpu_cores']:.2f}",
                         str(s["errors"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    m, p = report["machine"], report["params"]
    print(f"triton_vs_heddle: {m['cpu_count']} CPUs ({m['cpu_model']}), {p['duration_s']} s per point, "
          f"batch {p['batch']}; ratios (x) are target / triton_ensemble")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _versions() -> dict[str, str | None]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    return {d: version(d) for d in ("tritonclient", "onnxruntime", "nvidia-pytriton", "onnx")}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    image = np.random.default_rng(0).standard_normal((args.batch, 3, 64, 64)).astype(np.float32)
    targets = {t: TARGETS[t] for t in args.target}
    results: dict[str, dict[str, Any]] = {t: {} for t in targets}
    with servers(args, work) as s:
        expected = reference_outputs(s["chain"], image)
        url_of = {t: s["urls"]["triton" if t == "triton_ensemble" else "heddle"] for t in TARGETS}
        for target, model in targets.items():
            check_answer(url_of[target], model, image, expected)
        # Targets take turns at each concurrency, so drift on a shared box hits them alike.
        for conc in args.concurrency:
            for target, model in targets.items():
                stats = asyncio.run(_measure(url_of[target], model, conc, image, args, s["pids"]))
                results[target][str(conc)] = stats
                print(f"  {target:<16} c={conc:<3} {stats['throughput_rps']:7.1f} req/s  "
                      f"p50 {stats.get('p50_ms', 0):6.2f} ms  p99 {stats.get('p99_ms', 0):6.2f} ms", flush=True)
    machine = machine_info()
    machine["versions"].update(_versions(), **s["versions"])
    return {
        "benchmark": "triton_vs_heddle",
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "params": {"concurrency": args.concurrency, "warmup_s": args.warmup_s, "duration_s": args.duration_s,
                   "batch": args.batch, "request_bytes": int(image.nbytes), "models": targets,
                   "triton_max_batch_size": args.triton_max_batch_size,
                   "triton_instances": args.triton_instances, "heddle_triton_slots": args.triton_slots,
                   "triton_priority_levels": 0, "triton_startup_s": s["triton_startup_s"]},
        "machine": machine, "notes": NOTES, "heddle_config": s["config_text"],
        "results": results, "ratios": ratios(results),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, action="append", help="closed-loop clients (repeatable; default 1 4 16)")
    p.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured load before each point")
    p.add_argument("--duration-s", type=float, default=8.0, help="measured load per (target, concurrency)")
    p.add_argument("--target", action="append", choices=list(TARGETS),
                   help="measure only these targets (repeatable; default all three)")
    p.add_argument("--batch", type=int, default=1, help="images per request")
    p.add_argument("--triton-instances", type=int, default=None,
                   help="instances of each Triton model (default: heddle's CPU device count, the same parallelism)")
    p.add_argument("--triton-max-batch-size", type=int, default=0,
                   help="0: no dynamic batching in Triton's models (heddle_local_batched is heddle's own)")
    p.add_argument("--triton-slots", type=int, default=8, help="heddle's calls in flight to Triton")
    p.add_argument("--cache-dir", type=Path, default=Path(os.path.expanduser(
        os.environ.get("HEDDLE_CACHE_DIR", "~/.cache/heddle"))), help="where the zoo models are built")
    p.add_argument("--heddle-cmd", default=None, help="command to run heddle (default: venv `heddle`)")
    p.add_argument("--keep-work", type=Path, default=None, help="keep the repository, config and logs here")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default bench/results/<date>/triton_vs_heddle.json)")
    args = p.parse_args(argv)
    args.concurrency = args.concurrency or [1, 4, 16]
    args.target = args.target or list(TARGETS)
    if args.triton_instances is None:
        args.triton_instances = _cpu_device_count()
    args.out = results_path("triton_vs_heddle.json", args.out)
    return args


def _cpu_device_count() -> int:
    return sum(d["backend"] == "onnxruntime" for d in detected_devices())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.keep_work or Path(tempfile.mkdtemp(prefix="heddle-tvh-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = run(args, work)
    finally:
        if args.keep_work is None:
            shutil.rmtree(work, ignore_errors=True)
    print_table(report)
    save_report(report, args.out)
    return 0 if all(s["errors"] == 0 for by_conc in report["results"].values() for s in by_conc.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
