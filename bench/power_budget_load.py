"""The power-budget benchmark's load: its trace of top-class frames at a fixed rate and low-priority
requests arriving Poisson, and the child process that sends it (`python -m bench.power_budget
--drive TARGET TRACE OUT`) and records each request's ending.

Apart from power_budget.py, which owns the in-process server, the phases and the scoring: the
load runs in another process so the client does not share the server's GIL, and needs none of it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np

from heddle.clients.tensors import to_tensor
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

__all__ = ["LOW", "TOP", "drive_main", "make_trace"]

TOP, LOW = 4, 1


def make_trace(duration_s: float, high_hz: float, low_hz: float, seed: int) -> list[tuple[float, int]]:
    """(send time, priority): top-class frames at a fixed rate with a random phase, low-priority
    requests Poisson."""
    rng = np.random.default_rng(seed)
    high = np.arange(rng.uniform(0, 1 / high_hz), duration_s, 1 / high_hz)
    low = np.cumsum(rng.exponential(1 / low_hz, int(low_hz * duration_s * 2) + 10))
    sends = [(float(t), TOP) for t in high] + [(float(t), LOW) for t in low if t < duration_s]
    return sorted(sends)


async def _drive(target: str, trace: list, args: dict) -> list[dict]:
    rng = np.random.default_rng(0)
    images = {p: to_tensor("image", rng.integers(0, 256, (args[f"batch_{p}"], 64, 64, 3), dtype=np.uint8))
              for p in (TOP, LOW)}
    deadline_ms = {TOP: args["high_deadline_ms"], LOW: args["low_deadline_ms"]}
    records: list[dict] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GatewayStub(channel)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def send(i: int, priority: int) -> None:
            rec = {"i": i, "priority": priority, "sent_s": loop.time() - t0}
            request = pb.InferRequest(pipeline="classify", inputs=[images[priority]], priority=priority,
                                      deadline_ms=deadline_ms[priority], request_id=f"{args['tag']}-{i}")
            try:
                call = stub.Infer(request, timeout=deadline_ms[priority] / 1e3 + 30.0)
                reply = await call
                rec.update(status="OK", deadline_missed=reply.deadline_missed, energy_j=reply.energy_j,
                           energy_source=reply.energy_source, server_ms=reply.total_ms,
                           queue_ms=sum(s.queue_ms for s in reply.stages),
                           compute_ms=sum(s.compute_ms for s in reply.stages))
            except grpc.aio.AioRpcError as err:
                rec.update(status=err.code().name, error=(err.details() or "")[:200])
                hint = dict(err.trailing_metadata() or ()).get("retry-after-ms")
                if hint is not None:
                    rec["retry_after_ms"] = int(hint)
            rec["latency_ms"] = (loop.time() - t0 - rec["sent_s"]) * 1e3
            records.append(rec)

        tasks = []
        for i, (t, priority) in enumerate(trace):
            await asyncio.sleep(max(0.0, t - (loop.time() - t0)))
            tasks.append(asyncio.create_task(send(i, priority)))
        await asyncio.gather(*tasks)
    return records


def drive_main(target: str, trace_path: str, out_path: str) -> None:
    spec = json.loads(Path(trace_path).read_text())
    records = asyncio.run(_drive(target, spec["trace"], spec["args"]))
    Path(out_path).write_text(json.dumps(records))
