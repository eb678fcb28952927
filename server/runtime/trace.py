"""Arrival traces: the live server's requests as JSON lines, replayable by `heddle simulate --trace`.

One file per server run (truncated at start): a header line with the pipelines (stage, model,
upstream stages), the devices and the policy; then, as they happen, one line per arrival
(offset on the server's clock, request id, pipeline, priority, relative deadline, input shapes),
per finished stage (device, run time as the scheduler saw it: dispatch to completion), per
request end (outcome, latency) and per policy switch. Arrivals are what the scheduler saw,
after validation; stage and end lines let `heddle profile --from-trace` measure run times under
serving load and `heddle simulate --trace` set its prediction beside what really happened.
Line-buffered, so a running server's trace can be read or split at any time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from numpy.typing import NDArray

from heddle.scheduler import Dispatch, Pipeline, Request
from heddle.scheduler.sim.tracefile import TRACE_FORMAT
from heddle.server.config.load import Config
from heddle.server.runtime.status import status_code

if TYPE_CHECKING:
    from heddle.server.runtime.jobs import JobResult

__all__ = ["TraceWriter", "open_trace", "pipeline_record"]


def pipeline_record(pipeline: Pipeline) -> dict[str, Any]:
    """A pipeline as the replay needs it: stages in order, each with its model and upstream stages;
    a map stage's list source (its stage) and map_batch, a conditional stage's `when` stage."""
    stages: list[dict[str, Any]] = []
    for s in pipeline.stages:
        # Upstream by wire: a `when` source that feeds no input only orders the stage (the replay adds it).
        after = [d for d in pipeline.depends_on[s.name] if any(w.stage == d for w in pipeline.wires[s.name].values())]
        record: dict[str, Any] = {"name": s.name, "model": s.model, "after": after}
        if s.name in pipeline.maps:
            record.update(map=pipeline.maps[s.name].stage, map_batch=s.map_batch)
        if s.name in pipeline.whens:
            record["when"] = pipeline.whens[s.name].stage
        stages.append(record)
    return {"stages": stages}


class TraceWriter:
    """Appends events to one trace file; writes after close() are dropped (a draining server)."""

    def __init__(self, path: str | os.PathLike[str], config: Config, clock: Callable[[], float]) -> None:
        self.path = Path(os.path.expanduser(path))
        self.clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO | None = self.path.open("w", buffering=1)  # line-buffered: one write per event
        self._t0 = clock()
        # (request, stage) -> (dispatch time, rows of its pass, whether it is the pass's first member)
        self._started: dict[tuple[str, str], tuple[float, int, bool]] = {}
        self._write({
            "event": "header", "format": TRACE_FORMAT, "started_unix_s": time.time(),
            "config": config.source, "policy": config.server.policy,
            "devices": [{"id": d.id, "kind": d.kind, "backend": d.backend, "slots": d.slots,
                         "options": dict(d.options)} for d in config.devices],
            "pipelines": {name: pipeline_record(p) for name, p in config.pipelines.items()},
            # How models batch requests (dynamic batching), so a replay batches them alike.
            "models": {name: {"max_batch": m.batching.max_batch,
                              "preferred_batch_sizes": list(m.batching.preferred_batch_sizes),
                              "max_queue_delay_us": m.batching.max_queue_delay_s * 1e6}
                       for name, m in config.models.items() if m.kind != "llm" and m.batching.enabled},
        })

    @property
    def closed(self) -> bool:
        return self._file is None

    def arrival(self, request: Request, inputs: Mapping[str, NDArray[Any]],
                parameters: Mapping[str, object] | None = None) -> None:
        deadline_s = None if request.deadline_s is None else request.deadline_s - request.arrival_s
        record: dict[str, object] = {
            "event": "arrival", "t_s": round(request.arrival_s - self._t0, 6), "request_id": request.id,
            "pipeline": request.pipeline.name, "priority": request.priority,
            "deadline_s": None if deadline_s is None else round(deadline_s, 6),
            "shapes": {name: list(arr.shape) for name, arr in inputs.items()},
        }
        if parameters:  # what the stages were asked to do differently, for a replay to know
            record["parameters"] = dict(parameters)
        self._write(record)

    def dispatched(self, dispatch: Dispatch, rows: int = 1, pass_owner: bool = True) -> None:
        """A run started: of a batch (rows > 1, the pass's rows) as its first member or another."""
        if self._file is not None:
            self._started[(dispatch.request_id, dispatch.stage)] = (self.clock(), rows, pass_owner)

    def stage_done(self, dispatch: Dispatch, compute_s: float, error: str = "") -> None:
        """A run ended: run_s is dispatch to completion as the scheduler sees it (the device's
        compute and the thread hand-offs). Runs of requests that ended meanwhile (shed at their
        deadline) are recorded too: leaving out the longest runs would flatter any replay."""
        found = self._started.pop((dispatch.request_id, dispatch.stage), None)
        if found is None:
            return
        now = self.clock()
        started, rows, pass_owner = found
        event: dict[str, Any] = {
            "event": "stage", "t_s": round(now - self._t0, 6), "request_id": dispatch.request_id,
            "stage": dispatch.stage, "model": dispatch.model, "device": dispatch.device,
            "status": "FAILED" if error else "OK", "run_s": round(now - started, 6),
            "compute_s": round(compute_s, 6),
        }
        if rows > 1:  # a batch member: run_s is the whole pass's, once per member
            event.update(rows=rows, pass_owner=pass_owner)
        self._write(event)

    def end(self, result: JobResult) -> None:
        self._write({
            "event": "end", "t_s": self._now(), "request_id": result.request_id,
            "outcome": result.outcome.value, "status": status_code(result.outcome, result.error_kind).name,
            "latency_s": round(result.total_s, 6), "deadline_missed": result.deadline_missed,
        })

    def policy(self, name: str) -> None:
        self._write({"event": "policy", "t_s": self._now(), "policy": name})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _now(self) -> float:
        return round(self.clock() - self._t0, 6)

    def _write(self, event: dict[str, Any]) -> None:
        if self._file is not None:
            # default=str: device options may hold values JSON cannot (paths); a trace needs no round trip for them
            self._file.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")


def open_trace(config: Config, clock: Callable[[], float]) -> TraceWriter | None:
    """The trace writer [server] trace_file asks for, or None when tracing is off."""
    if not config.server.trace_file:
        return None
    return TraceWriter(config.server.trace_file, config, clock)
