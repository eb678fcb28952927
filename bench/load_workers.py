"""Load generation in processes of their own: one `clients/loadgen.run_load` per priority class,
each with its own client (one connection), as separate applications on an edge box would be.
A class's latency is then not the flood's client-side queueing: with every class in one asyncio
loop, a top-class reply waits behind thousands of lower-class ones in the *client* too.
Used by overload.py and soak.py; `python -m bench.load_workers TARGET SCENARIO.toml OUT.jsonl
DURATION DRAIN SEED START_AT` is one worker (START_AT: the wall-clock time its load begins).
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.harness import ROOT, bench_module
from bench.policies_live import scenario_toml
from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.loadgen import LoadResult, build_app_inputs, run_load
from heddle.clients.report import read_records, write_records
from heddle.clients.scenarios import Scenario, load_scenario

__all__ = ["run_by_class"]

_STARTUP_S = 5.0  # for every worker to import, connect and build its inputs before the load starts


async def _worker(target: str, scenario: Scenario, duration_s: float, drain_s: float, seed: int,
                  start_at: float) -> LoadResult:
    async with AsyncHeddleClient(target) as client:
        pipelines = await client.list_pipelines(timeout_s=30)
        inputs = build_app_inputs(scenario.apps, pipelines, np.random.default_rng(seed))
        await asyncio.sleep(max(0.0, start_at - time.time()))  # every class starts together
        # No gRPC timeout: heddle would take it as the deadline of requests that have none.
        return await run_load(client, scenario, inputs, duration_s=duration_s, seed=seed, drain_s=drain_s,
                              request_timeout_s=None)


def run_by_class(target: str, scenario: Scenario, duration_s: float, drain_s: float, seed: int,
                 work: Path) -> tuple[LoadResult, float]:
    """Run the scenario with one worker process per priority class; all records, the shortest
    window, and the CPU seconds the workers used."""
    work = work.resolve()  # the workers run from the repository root
    work.mkdir(parents=True, exist_ok=True)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start_at = time.time() + _STARTUP_S
    procs = []
    for cls in sorted({a.priority for a in scenario.apps}, reverse=True):
        part = replace(scenario, apps=tuple(a for a in scenario.apps if a.priority == cls))
        spec, out = work / f"load_p{cls}.toml", work / f"load_p{cls}.jsonl"
        spec.write_text(scenario_toml(part))
        cmd = bench_module("load_workers", target, str(spec), str(out), str(duration_s), str(drain_s),
                           str(seed + cls), repr(start_at))
        procs.append((subprocess.Popen(cmd, cwd=ROOT), out))
    records, windows = [], []
    failed = [proc.args for proc, _ in procs if proc.wait() != 0]  # every worker ends before a raise
    if failed:
        raise RuntimeError(f"load workers failed: {failed}")
    for _, out in procs:
        records += read_records(out)
        windows.append(json.loads(out.with_suffix(".json").read_text())["window_s"])
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    records.sort(key=lambda r: (r.sent_s, r.request_id))
    return LoadResult(records, min(windows), False), cpu_s


def main(argv: list[str]) -> int:
    target, spec, out, duration_s, drain_s, seed, start_at = argv
    result = asyncio.run(_worker(target, load_scenario(spec), float(duration_s), float(drain_s), int(seed),
                                 float(start_at)))
    write_records(Path(out), result.records)
    Path(out).with_suffix(".json").write_text(json.dumps({"window_s": result.window_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
