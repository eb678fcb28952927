"""What every benchmark shares: starting a server process and waiting for it to serve, the devices
of a benchmark's config (built with server/config/builder.py), CPU and machine figures, latency
summaries, and the report written under bench/results/<date>/.

The scripts are modules of the `bench` package, run from the repository root:
    .venv/bin/python -m bench.gateway_overhead
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heddle.server.config.builder import onnx_device, python_device, to_toml
from heddle.server.config.default import detect_devices

__all__ = [
    "BENCH_DIR", "HEDDLE", "ROOT", "bench_module", "closed_loop", "commit", "detected_devices", "free_port",
    "heddle_base", "heddle_command", "machine_info", "onnx_ids", "pinned_devices", "process_cpu_s", "results_path",
    "save_report", "server_process", "summarize", "tree_cpu_s", "wait_healthy", "wait_models_ready", "write_config",
]

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
HEDDLE = [sys.executable, "-m", "heddle.server.cli"]
CPU_PROVIDERS = ["CPUExecutionProvider"]


# --- where things go ----------------------------------------------------------------------------

def results_path(name: str, out: str | os.PathLike | None = None) -> Path:
    """`out` when given (made absolute: benchmarks write configs beside it that name their model
    files relative to themselves), else bench/results/<today>/<name>."""
    return Path(out).resolve() if out else BENCH_DIR / "results" / dt.date.today().isoformat() / name


def save_report(report: Mapping[str, Any], out: Path) -> None:
    """The report as indented JSON at `out` (folders made), and where it went."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def commit() -> str:
    """The checkout's commit, for the report ("" outside a git checkout)."""
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


def bench_module(name: str, *args: str) -> list[str]:
    """The command that runs bench/<name>.py as a module (its own subprocesses: echo servers, drivers)."""
    return [sys.executable, "-m", f"bench.{name}", *args]


# --- config -------------------------------------------------------------------------------------

def pinned_devices(cores: Sequence[int], *, prefix: str = "cpu", python_slots: int = 2,
                   cpu_keys: Mapping[str, Any] | None = None,
                   python_keys: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One ONNX Runtime CPU device per core (pinned, one intra-op thread: `prefix`0, 1, ...) and
    the python pool py0: what the single-box benchmarks run on, so their stages never share a core."""
    cpus = [onnx_device(f"{prefix}{i}", cores=[core], kind="cpu", providers=CPU_PROVIDERS, **(cpu_keys or {}))
            for i, core in enumerate(cores)]
    return [*cpus, python_device("py0", slots=python_slots, kind="cpu", **(python_keys or {}))]


def detected_devices() -> list[dict[str, Any]]:
    """The embedded default's devices for this machine (pinned CPU slices, GPUs, py0)."""
    return detect_devices()


def onnx_ids(devices: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ids of the CPU ONNX Runtime devices among `devices`."""
    return [d["id"] for d in devices if d.get("backend") == "onnxruntime" and d.get("kind", "cpu") == "cpu"]


def write_config(path: Path, doc: Mapping[str, Any]) -> Path:
    """A config document (server/config/builder.py) as the TOML file a `heddle serve` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(doc))
    return path


# --- server processes ---------------------------------------------------------------------------

def set_niceness(nice: int) -> int:
    """This process's niceness (children inherit it: other work on a shared box then disturbs a
    measurement less); below 0 needs root, and without it the run goes on at the current one,
    said on stderr. Returns the niceness in effect."""
    try:
        os.nice(nice - os.nice(0))
    except PermissionError:
        print(f"cannot set niceness {nice} (not root); running at {os.nice(0)}", file=sys.stderr)
    return os.nice(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(target: str, proc: subprocess.Popen, service: str, timeout_s: float) -> None:
    """Block until the gRPC health check says SERVING; fail early if the process exits."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with status {proc.returncode} before it was ready")
            try:
                # wait_for_ready: the call itself waits (up to 1 s) for the port to accept.
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0,
                                   wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                      grpc.StatusCode.NOT_FOUND):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} not SERVING after {timeout_s:.0f} s")
            time.sleep(0.05)  # only reached when the server answered NOT_SERVING: give it a moment


@contextlib.contextmanager
def server_process(cmd: list[str], target: str, log_path: Path, *, health_service: str = "",
                   timeout_s: float = 60.0) -> Iterator[subprocess.Popen]:
    """Start a server (from the repository root, so `-m bench.X` finds the package), wait for
    SERVING, yield it; stop it (SIGTERM, then SIGKILL) on the way out."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        try:
            wait_healthy(target, proc, health_service, timeout_s)
        except Exception:
            tail = log_path.read_text(errors="replace")[-4000:]
            print(f"server {shlex.join(cmd)} failed to start; log tail:\n{tail}", file=sys.stderr)
            raise
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_models_ready(url: str, models: list[str], timeout_s: float = 60.0) -> None:
    """Block until a KServe server (Triton, heddle) says every one of `models` is ready."""
    import tritonclient.grpc as tgrpc  # only the Triton benchmarks need it

    with tgrpc.InferenceServerClient(url) as client:
        deadline = time.monotonic() + timeout_s
        while not all(client.is_model_ready(m) for m in models):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{models} not all ready at {url} after {timeout_s:.0f} s")
            time.sleep(0.1)  # KServe has no readiness stream to await


def heddle_base(heddle_cmd: str | None = None) -> list[str]:
    """`heddle` as a command: --heddle-cmd's words, else the venv's script, else the module."""
    if heddle_cmd:
        return shlex.split(heddle_cmd)
    script = Path(sys.executable).with_name("heddle")
    return [str(script)] if script.exists() else list(HEDDLE)


def heddle_command(args: argparse.Namespace, grpc_port: int, metrics_port: int) -> list[str]:
    """`heddle serve` of args.config on these ports, HTTP on a free one (args.heddle_cmd: another heddle)."""
    return [*heddle_base(args.heddle_cmd), "serve", "--config", str(args.config), "--grpc-port", str(grpc_port),
            "--metrics-port", str(metrics_port), "--http-port", "0"]


# --- figures ------------------------------------------------------------------------------------

def summarize(latencies_ms: list[float]) -> dict[str, Any]:
    a = np.asarray(latencies_ms)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"count": int(a.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "max_ms": float(a.max())}


async def closed_loop(clients: Sequence[Any], model: str, inputs: list[Any], outputs: list[Any],
                      seconds: float) -> tuple[list[float], list[str]]:
    """KServe clients (tritonclient.grpc.aio) each sending `model` its next request as soon as its
    last is answered, for `seconds`: every latency in ms, and every error's text."""
    latencies_ms: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds

    async def worker(client: Any) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter_ns()
            try:
                await client.infer(model, inputs, outputs=outputs)
            except Exception as exc:  # counted and reported: a failing target must not look fast
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies_ms.append((time.perf_counter_ns() - t0) / 1e6)

    await asyncio.gather(*(worker(c) for c in clients))
    return latencies_ms, errors


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process from /proc (None where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def tree_cpu_s(root_pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Triton's python stubs), from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = text.rsplit(")", 1)[1].split()
        pid = int(stat.parent.name)
        children[int(fields[1])].append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu_model = next((line.split(":", 1)[1].strip() for line in _read_lines("/proc/cpuinfo")
                      if line.startswith("model name")), platform.processor())
    return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "cpu_model": cpu_model, "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": {d: version(d) for d in ("heddle", "grpcio", "protobuf", "numpy")}}


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []
