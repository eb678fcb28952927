"""Benchmark: shutdown time with a stuck stage, and how fast stage timeouts end their requests.

Against real `heddle serve` processes started here (one at a time):
  shutdown        SIGTERM while a python stage is stuck for 60 s: seconds to exit, against the
                  configured grace (the bound is grace + FLUSH_S); also with --clients clients
                  calling in a loop through the exit: their status codes (CANCELLED must be 0).
  timeouts        for an ONNX Runtime stage (terminated), a process-isolated python stage (killed
                  and replaced) and a thread python stage (given up on): the latency of a request
                  that hits timeout_ms, minus timeout_ms (the overshoot), and of the next request,
                  against the latency of the same small request measured first in the same run.
  isolation       p50 latency of a trivial python stage in a thread vs in a worker process.
Writes JSON (--out, default bench/results/<date>/stage_timeouts.json). A benchmark, not a test.

    .venv/bin/python -m bench.stage_timeouts --reps 5 --grace-s 2
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.harness import ROOT, results_path, write_config
from heddle.server.config.builder import (
    Table,
    document,
    onnx_device,
    onnx_model,
    pipeline,
    python_device,
    python_model,
    stage,
    tensor,
)

WIDTH, DEPTH, BIG_ROWS = 256, 600, 2048


def nap(x: np.ndarray) -> dict[str, np.ndarray]:
    """The servers' python stage (loaded as "bench.stage_timeouts:nap"): sleeps x[0] seconds."""
    time.sleep(float(x[0]))
    return {"y": x}


def _chain(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((WIDTH, WIDTH), 1.0 / WIDTH, np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", "w"], ["y" if i == DEPTH - 1 else f"h{i}"])
             for i in range(DEPTH)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def _py_pipeline(name: str, function: str = "bench.stage_timeouts:nap", **keys: Any) -> tuple[Table, Table]:
    """A python model on a vector and the one-stage pipeline of the same name over it."""
    vec = [tensor("x", "FP32", (-1,))]
    return (python_model(name, function, vec, [tensor("y", "FP32", (-1,))], **keys),
            pipeline(name, vec, {"y": "s.y"}, [stage("s", name, x="input:x")]))


def _config(devices: list[Table], *pairs: tuple[Table, Table], server: dict[str, Any] | None = None) -> Table:
    return document(server=server, devices=devices, models=[m for m, _ in pairs], pipelines=[p for _, p in pairs])


class Server:
    """`heddle serve --config TEXT` as a child process; its JSON log lines kept."""

    def __init__(self, doc: Table, workdir: Path) -> None:
        config = write_config(workdir / "heddle.toml", doc)
        # The server imports bench.stage_timeouts:nap: the repository root on its path.
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "heddle.server.cli", "serve", "--log-json", "--config", str(config),
             "--grpc-port", "0", "--metrics-port", "0", "--http-port", "0"], stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.target = ""
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                if '"heddle serving"' in line:
                    self.target = json.loads(line)["grpc"]
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(120) or not self.target:
            self.proc.kill()
            raise RuntimeError("heddle serve did not start:\n" + "".join(self.lines[-20:]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


def _client(target: str):
    from heddle.clients.client import HeddleClient

    return HeddleClient(target)


def _timed(fn) -> tuple[float, str]:
    t0 = time.perf_counter()
    try:
        fn()
        code = "OK"
    except grpc.RpcError as exc:
        code = exc.code().name
    return time.perf_counter() - t0, code


def _shutdown_once(workdir: Path, grace_s: float, clients: int) -> dict[str, Any]:
    doc = _config([python_device("py0", slots=2)], _py_pipeline("stuck"),
                  _py_pipeline("quick", "heddle.backends.zoo.ops:echo"), server={"grace_period_s": grace_s})
    server = Server(doc, workdir)
    codes: collections.Counter[str] = collections.Counter()
    try:
        with _client(server.target) as client:
            threading.Thread(target=_timed, daemon=True,
                             args=(lambda: client.infer("stuck", {"x": np.array([60.0], np.float32)}),)).start()
            while next(d.running for d in client.list_devices()) < 1:
                time.sleep(0.01)

            def hammer() -> None:
                with _client(server.target) as c:
                    while server.proc.poll() is None:
                        codes[_timed(lambda: c.infer("quick", {"x": np.zeros(4, np.float32)}))[1]] += 1

            threads = [threading.Thread(target=hammer, daemon=True) for _ in range(clients)]
            for t in threads:
                t.start()
            time.sleep(0.5 if clients else 0.0)
            t0 = time.perf_counter()
            server.proc.send_signal(signal.SIGTERM)
            rc = server.proc.wait(120)
            exit_s = time.perf_counter() - t0
            for t in threads:
                t.join(10)
        return {"exit_s": round(exit_s, 3), "returncode": rc, "codes": dict(codes)}
    finally:
        server.close()


def bench_shutdown(workdir: Path, reps: int, grace_s: float, clients: int) -> dict[str, Any]:
    from heddle.server.app import FLUSH_S

    alone = [_shutdown_once(workdir, grace_s, 0) for _ in range(reps)]
    loaded = [_shutdown_once(workdir, grace_s, clients) for _ in range(reps)]
    return {"grace_s": grace_s, "bound_s": grace_s + FLUSH_S, "stuck_alone": alone,
            f"stuck_with_{clients}_clients": loaded,
            "max_exit_s": max(r["exit_s"] for r in alone + loaded),
            "cancelled": sum(r["codes"].get("CANCELLED", 0) for r in loaded)}


def bench_timeouts(workdir: Path, reps: int, timeout_ms: int) -> dict[str, Any]:
    onnx_path = _chain(workdir / "chain.onnx")
    chain = (onnx_model("chain", str(onnx_path), timeout_ms=timeout_ms),
             pipeline("chain", [tensor("x", "FP32", (-1, WIDTH))], {"y": "s.y"}, [stage("s", "chain", x="input:x")]))
    doc = _config([onnx_device("cpu0"), python_device("py0")], chain,
                  _py_pipeline("process", isolation="process", timeout_ms=timeout_ms),
                  _py_pipeline("thread", timeout_ms=timeout_ms))
    # (pipeline, input that overruns, input that does not); the thread's nap is short because its
    # slot stays held until it returns, and the next request waits for that.
    kinds = {"onnxruntime": ("chain", np.ones((BIG_ROWS, WIDTH), np.float32), np.ones((1, WIDTH), np.float32)),
             "process": ("process", np.array([10.0], np.float32), np.array([0.0], np.float32)),
             "thread": ("thread", np.array([1.0], np.float32), np.array([0.0], np.float32))}
    server = Server(doc, workdir)
    out: dict[str, Any] = {"timeout_ms": timeout_ms}
    try:
        with _client(server.target) as client:
            for kind, (name, slow, fast) in kinds.items():
                send_fast = functools.partial(client.infer, name, {"x": fast}, timeout_s=60)
                send_slow = functools.partial(client.infer, name, {"x": slow}, timeout_s=60)
                reference = [_timed(send_fast)[0] for _ in range(reps)]
                runs = []
                for _ in range(reps):
                    hit_s, hit_code = _timed(send_slow)
                    next_s, next_code = _timed(send_fast)
                    runs.append({"timed_out_ms": round(hit_s * 1e3, 1), "code": hit_code,
                                 "overshoot_ms": round(hit_s * 1e3 - timeout_ms, 1),
                                 "next_ms": round(next_s * 1e3, 1), "next_code": next_code})
                out[kind] = {"reference_ms": round(float(np.median(reference)) * 1e3, 2), "runs": runs}
    finally:
        server.close()
    return out


def bench_isolation(workdir: Path, requests: int) -> dict[str, Any]:
    echo = "heddle.backends.zoo.ops:echo"
    doc = _config([python_device("py0")], _py_pipeline("in_thread", echo),
                  _py_pipeline("in_process", echo, isolation="process"))
    server = Server(doc, workdir)
    out = {}
    try:
        with _client(server.target) as client:
            for name in ("in_thread", "in_process"):
                x = np.zeros(256, np.float32)
                for _ in range(20):
                    client.infer(name, {"x": x})
                lat = [_timed(functools.partial(client.infer, name, {"x": x}))[0] for _ in range(requests)]
                out[name] = {"p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
                                 "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3)}
        out["process/thread_p50"] = round(out["in_process"]["p50_ms"] / out["in_thread"]["p50_ms"], 2)
    finally:
        server.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--grace-s", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--timeout-ms", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=results_path("stage_timeouts.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # The box's load beside the figures: on a shared 2-core box it moves them more than anything.
        report = {"params": vars(args) | {"out": str(args.out)}, "cpu_count": os.cpu_count(),
                  "loadavg_at_start": os.getloadavg(),
                  "shutdown": bench_shutdown(workdir, args.reps, args.grace_s, args.clients),
                  "timeouts": bench_timeouts(workdir, args.reps, args.timeout_ms),
                  "isolation": bench_isolation(workdir, args.requests),
                  "loadavg_at_end": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
