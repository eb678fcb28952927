"""Triton-style per-model statistics (ModelStatistics) for requests served by the KServe frontend."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tritonclient.grpc import service_pb2 as kpb

__all__ = ["KServeStats", "RequestTimes"]

_NS = 1_000_000_000


@dataclass(slots=True)
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += max(0, ns)

    def proto(self) -> kpb.StatisticDuration:
        return kpb.StatisticDuration(count=self.count, ns=self.ns)


@dataclass(slots=True)
class _ModelStats:
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)


@dataclass(frozen=True, slots=True)
class RequestTimes:
    """Where one successful request's time went, in ns, as Triton splits it.

    total: receipt to response built; queue: time its stages waited for a device (summed over
    stages); compute_input: decoding and checking the request; compute_infer: the stages' backend
    time (summed, so parallel branches add up, like a Triton ensemble's composing models);
    compute_output: encoding the response.
    """

    total_ns: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int


class KServeStats:
    """Counts per model name; mutated only from the event loop, read as protos.

    Triton's semantics: success/fail count requests and their whole duration; queue and compute_*
    count successful requests only, so every duration's count equals success.count. heddle never
    batches across requests, so inference_count == execution_count == successful requests.
    """

    def __init__(self, names: Iterable[str], clock_ms=lambda: int(time.time() * 1000)) -> None:
        self._stats = {name: _ModelStats() for name in names}
        self._clock_ms = clock_ms

    def add(self, names: Iterable[str]) -> None:
        """Start counting for names not counted yet (models and pipelines a reload added); the
        others keep their counts, as Triton keeps a model's statistics across a reload."""
        for name in names:
            self._stats.setdefault(name, _ModelStats())

    def record_success(self, name: str, t: RequestTimes) -> None:
        s = self._stats[name]
        s.inference_count += 1
        s.execution_count += 1
        s.last_inference_ms = self._clock_ms()
        s.success.add(t.total_ns)
        s.queue.add(t.queue_ns)
        s.compute_input.add(t.compute_input_ns)
        s.compute_infer.add(t.compute_infer_ns)
        s.compute_output.add(t.compute_output_ns)

    def record_stage(self, name: str, queue_s: float, compute_s: float) -> None:
        """A stage of a pipeline request ran model `name`: it counts for that model too, as a
        composing model of a Triton ensemble does (no input/output work of its own)."""
        queue_ns, compute_ns = int(queue_s * _NS), int(compute_s * _NS)
        self.record_success(name, RequestTimes(queue_ns + compute_ns, queue_ns, 0, compute_ns, 0))

    def record_failure(self, name: str, total_ns: int) -> None:
        s = self._stats[name]
        s.last_inference_ms = self._clock_ms()
        s.fail.add(total_ns)

    def proto(self, name: str, version: str) -> kpb.ModelStatistics:
        s = self._stats[name]
        return kpb.ModelStatistics(
            name=name, version=version, last_inference=s.last_inference_ms,
            inference_count=s.inference_count, execution_count=s.execution_count,
            inference_stats=kpb.InferStatistics(
                success=s.success.proto(), fail=s.fail.proto(), queue=s.queue.proto(),
                compute_input=s.compute_input.proto(), compute_infer=s.compute_infer.proto(),
                compute_output=s.compute_output.proto(),
            ),
        )
