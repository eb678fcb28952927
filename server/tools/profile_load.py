"""`heddle profile --under-load S`: run times measured while this machine serves a load.

Why not only the isolated table: on a small box the gateway's event loop, its gRPC threads, the
python stages, the load generator and every device share the same cores. A stage's time from
dispatch to completion while serving is its compute time slowed by that sharing plus the thread
hand-offs around it (on the 2-core CI box: 1.5-2x the isolated compute, plus 1-4 ms per stage).
A simulator fed isolated times sees headroom the machine does not have.

So this starts `heddle serve` on the config in a child process (its own process and event loop,
as in production) with a trace, drives it through the real gRPC API with a load scenario (one of
`heddle bench`'s, a scenario file, or by default every non-LLM pipeline in a closed loop), and
makes the table from the stage runs the server recorded after a warm-up: the same numbers
`--from-trace` takes from a production trace, measured on purpose before the run they predict.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heddle.backends.triton.server import free_port
from heddle.server.config.load import Config, load_config
from heddle.server.tools.profile_cmd import sample_inputs
from heddle.server.tools.profile_doc import profile_from_trace

__all__ = ["default_load", "load_inputs", "measure_under_load"]

_READY_TIMEOUT_S = 60.0
_VARIANTS = 4  # distinct requests per app, cycled (as the load generator does)


def default_load(config_path: str | None, clients: int):
    """Every pipeline without an LLM stage, `clients` closed-loop clients each, no deadline:
    every device kept busy, as a saturated server is."""
    from heddle.clients.scenarios import App, Scenario

    config = load_config(config_path)
    apps = tuple(App(name, name, "closed", concurrency=clients)
                 for name, pipeline in sorted(config.pipelines.items())
                 if all(config.models[s.model].kind != "llm" for s in pipeline.stages))
    if not apps:
        raise ValueError("the config has no pipeline without an LLM stage to load; give --scenario")
    return Scenario("profile_default", apps, f"every pipeline, {clients} closed-loop clients each")


def load_inputs(config: Config, scenario, shapes: Mapping[tuple[str, str], tuple[int, ...]],
                seed: int) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per app, a few generated requests for its pipeline's inputs: the isolated profile's rule
    (dynamic dims 1 for the first, 16 after), `shapes` keyed (pipeline, input) overriding it."""
    rng = np.random.default_rng(seed)
    missing = sorted({a.pipeline for a in scenario.apps} - set(config.pipelines))
    if missing:
        raise ValueError(f"scenario {scenario.name!r} names pipelines the config lacks: {missing}")
    return {a.name: [sample_inputs(config.pipelines[a.pipeline], shapes, rng) for _ in range(_VARIANTS)]
            for a in scenario.apps}


def measure_under_load(config_path: str | None, scenario, *, duration_s: float, warmup_s: float = 2.0,
                       seed: int = 0, policy: str | None = None, min_runs: int = 3,
                       shapes: Mapping[tuple[str, str], tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Serve the config in a child process, run `scenario` against it for warmup_s (dropped)
    then duration_s, and return the profile document of the recorded stage runs."""
    if duration_s <= 0 or warmup_s < 0:
        raise ValueError("--under-load must be > 0 seconds (and the warm-up >= 0)")
    config = load_config(config_path)
    inputs = load_inputs(config, scenario, shapes or {}, seed)
    with tempfile.TemporaryDirectory(prefix="heddle-profile-") as tmp:
        trace = Path(tmp) / "trace.jsonl"
        grpc_port, metrics_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "heddle.server.cli", "serve", "--grpc-host", "127.0.0.1",
               "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--trace", str(trace),
               "--http-port", "0", "--log-level", "warning"]
        cmd += ["--config", config_path] if config_path else []
        cmd += ["--policy", policy] if policy else []
        target = f"127.0.0.1:{grpc_port}"
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        try:
            _wait_serving(target, proc, log_path)
            warmup_ids = asyncio.run(_drive(target, scenario, inputs, duration_s, warmup_s, seed))
        finally:
            proc.terminate()  # SIGTERM drains: the trace holds every run that ended
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        text, warmup_stage_runs = _without(trace.read_text(), warmup_ids)
    doc = profile_from_trace(text, f"{config_path or '<embedded default>'} under load", min_runs=min_runs)
    # The trace records an LLM stage once, at its last step: not a run time (see profile_cmd).
    llm = {name for name, m in config.models.items() if m.kind == "llm"}
    doc["entries"] = [e for e in doc["entries"] if e["model"] not in llm]
    doc["models"] = {k: v for k, v in doc["models"].items() if k not in llm}
    doc.update(method="under_load", scenario=scenario.name, duration_s=duration_s, warmup_s=warmup_s,
               policy=policy or "(config)", warmup_stage_runs=warmup_stage_runs)
    return doc


async def _drive(target: str, scenario, inputs, duration_s: float, warmup_s: float, seed: int) -> set[str]:
    from heddle.clients.aio import AsyncHeddleClient
    from heddle.clients.loadgen import run_load

    async with AsyncHeddleClient(target) as client:
        warmup = set()
        if warmup_s > 0:  # first runs pay for lazy initialisation and unsettled estimates
            result = await run_load(client, scenario, inputs, duration_s=warmup_s, seed=seed,
                                    request_timeout_s=None)
            warmup = {r.request_id for r in result.records}
        # No gRPC timeout: heddle would take it as a deadline and shed runs the table should keep.
        await run_load(client, scenario, inputs, duration_s=duration_s, seed=seed + 1, request_timeout_s=None)
    return warmup


def _without(trace_text: str, request_ids: set[str]) -> tuple[str, int]:
    """The trace without the lines of the warm-up's requests, and how many stage runs that left out."""
    header, *lines = trace_text.splitlines()
    kept, dropped_runs = [header], 0
    for line in lines:
        event = json.loads(line)
        if event.get("request_id") in request_ids:
            dropped_runs += event.get("event") == "stage"
        else:
            kept.append(line)
    return "\n".join(kept) + "\n", dropped_runs


def _wait_serving(target: str, proc: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"heddle serve exited ({proc.returncode}) before serving: "
                                   f"{log_path.read_text(errors='replace')[-2000:]}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"heddle serve did not become ready within {_READY_TIMEOUT_S:.0f} s")
