"""The front door's memory limits: per-model input limits, a per-request estimate cap, the in-flight budget.

Both front doors (heddle.v1 in service.py, KServe in kserve.py) call RequestLimits.admit after
decoding a request and release what it returns when the request ends. Over a limit the request
gets RESOURCE_EXHAUSTED naming the limit, the model or pipeline, the value sent and the maximum;
only the in-flight budget, which frees up, adds a retry hint. How defaults are derived:
docs/CONFIG.md, "Request limits".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from numpy.typing import NDArray

from heddle.scheduler import ModelSpec, Pipeline
from heddle.server.config.memory_estimate import (
    ModelCost,
    PipelineCost,
    array_bytes,
    memory_budgets,
    model_cost,
    pipeline_cost,
    reference_elements,
)
from heddle.server.observe.logs import get_logger
from heddle.server.runtime.inflight import InflightBudget, Reservation, release_free_memory
from heddle.server.runtime.status import RequestError, retry_metadata

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from heddle.server.config.load import Config
    from heddle.server.runtime.metrics import Metrics

__all__ = ["ModelLimits", "RequestLimits"]

log = get_logger("heddle.limits")
# A request estimated at this much, or sent with this many input bytes, trims malloc's heaps
# when it ends or is refused (server/runtime/inflight.py).
TRIM_MIN_BYTES = 64 * 1024 * 1024
TRIM_MIN_INPUT_BYTES = 16 * 1024 * 1024
_DERIVED = "derived from the model's memory estimate and max_request_bytes; set {key} on model {model!r} to change it"


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What one model accepts per request; None is no limit. Sources say "config" or "derived"."""

    model: str
    max_batch_size: int | None
    max_input_elements: Mapping[str, int]  # per input name
    batch_source: str = "config"
    elements_source: str = "config"

    @classmethod
    def of(cls, model: ModelSpec, cost: ModelCost, max_request_bytes: int) -> ModelLimits:
        """Configured values, else derived: the reference run (one item) scaled up to
        max_request_bytes, so a request at the limit is estimated at max_request_bytes."""
        items = int(max_request_bytes // cost.run_bytes) if cost.scales and cost.run_bytes > 0 else None
        batch = model.options.get("max_batch_size")
        derived_batch = max(items, 1) if items is not None and cost.batched else None
        elements = model.options.get("max_input_elements")
        per_input = ({t.name: elements for t in model.inputs} if elements is not None else
                     {} if items is None else
                     {t.name: max(items, 1) * reference_elements(t) for t in model.inputs})
        return cls(model.name, batch if batch is not None else derived_batch, per_input,
                   "config" if batch is not None else "derived", "config" if elements is not None else "derived")


@dataclass(frozen=True, slots=True)
class _Gate:
    """One pipeline's checks: the stages that read each request input, and its cost estimate."""

    readers: Mapping[str, tuple[tuple[str, str, ModelLimits], ...]]  # input -> (stage, model input, limits)
    cost: PipelineCost


class RequestLimits:
    """The front door's limits for one server, shared by heddle.v1 and KServe."""

    def __init__(self, config: Config, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        s = config.server
        self.max_inflight_bytes, self.max_request_bytes = memory_budgets(
            s.max_inflight_bytes, s.max_request_bytes, s.inflight_top_reserve_fraction)
        self.costs: dict[str, ModelCost] = {}
        self.models: dict[str, ModelLimits] = {}
        self.update_models(config)
        self._series = _Series(metrics.registry, self.max_inflight_bytes) if metrics is not None else None
        self.budget = InflightBudget(self.max_inflight_bytes, s.inflight_top_reserve_fraction, s.priority_levels,
                                     clock, on_release=self._released)
        if self._series is not None:  # read when a scrape asks, not set on every take and give-back
            self._series.inflight.set_function(lambda: self.budget.used_bytes)
        self._trim_owed = False
        self._gates: dict[int, tuple[Pipeline, _Gate]] = {}
        log.debug("request limits", max_inflight_bytes=self.max_inflight_bytes,
                  max_request_bytes=self.max_request_bytes,
                  models={n: (m.max_batch_size, dict(m.max_input_elements)) for n, m in self.models.items()})

    def update_models(self, config: Config) -> None:
        """Each model's limits and cost (at start, and after a config reload: new and changed
        models get theirs; a removed one keeps its own for the requests still running it)."""
        for name, model in config.models.items():
            self.costs[name] = _cost(model)
            self.models[name] = ModelLimits.of(model, self.costs[name], self.max_request_bytes)
        self._gates = {}  # rebuilt per pipeline on first use

    def admit(self, pipeline: Pipeline, inputs: Mapping[str, NDArray[Any]], priority: int) -> Reservation:
        """Check a decoded request and take its estimated bytes from the budget; RequestError
        (RESOURCE_EXHAUSTED) when over a limit. Release the result when the request ends."""
        if self._trim_owed:  # gRPC has let the last big request's message go by now
            self._trim_owed = False
            release_free_memory()
        input_bytes = sum(array_bytes(a) for a in inputs.values())
        try:
            return self._admit(pipeline, inputs, input_bytes, priority)
        except RequestError:
            if input_bytes >= TRIM_MIN_INPUT_BYTES:
                self._big_request_ended()
            raise

    def _released(self, held: Reservation) -> None:
        if held.trim:
            self._big_request_ended()

    def _big_request_ended(self) -> None:
        """Trim soon, for what the request's run freed; and again at the next request, for its
        message, which gRPC holds until then (the last aborted call's state keeps it)."""
        release_free_memory()
        self._trim_owed = True

    def _admit(self, pipeline: Pipeline, inputs: Mapping[str, NDArray[Any]], input_bytes: int,
               priority: int) -> Reservation:
        gate = self._gate(pipeline)
        for name, arr in inputs.items():
            for stage, model_input, limits in gate.readers.get(name, ()):
                self._check_input(pipeline, name, arr, stage, model_input, limits)
        nbytes = gate.cost.estimate(input_bytes)
        if nbytes > self.max_request_bytes:
            self._refuse(pipeline, "max_request_bytes", f"pipeline {pipeline.name!r}: the request needs an "
                         f"estimated {_size(nbytes)} of memory, over max_request_bytes = "
                         f"{_size(self.max_request_bytes)}; send fewer or smaller inputs")
        held = self.budget.try_take(nbytes, priority)
        if held is None:
            self._refuse_busy(pipeline, nbytes, priority)
        held.trim = nbytes >= TRIM_MIN_BYTES or input_bytes >= TRIM_MIN_INPUT_BYTES
        return held

    def _check_input(self, pipeline: Pipeline, name: str, arr: NDArray[Any], stage: str, model_input: str,
                     limits: ModelLimits) -> None:
        where = f"model {limits.model!r} (stage {stage!r} of pipeline {pipeline.name!r})"
        batch = limits.max_batch_size
        if batch is not None and arr.ndim and arr.shape[0] > batch:
            self._refuse(pipeline, "max_batch_size", f"input {name!r} has batch size {arr.shape[0]} (its first "
                         f"dim); {where} takes at most max_batch_size = {batch}{_source(limits, 'max_batch_size')}")
        most = limits.max_input_elements.get(model_input)
        if most is not None and arr.size > most:
            self._refuse(pipeline, "max_input_elements", f"input {name!r} has {arr.size} elements; {where} "
                         f"takes at most max_input_elements = {most} per input"
                         f"{_source(limits, 'max_input_elements')}")

    def _refuse_busy(self, pipeline: Pipeline, nbytes: int, priority: int) -> NoReturn:
        hint_s = self.budget.retry_after_s()
        self._count(pipeline, "max_inflight_bytes")
        raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"pipeline {pipeline.name!r}: the in-flight memory budget is full: this request needs an estimated "
            f"{_size(nbytes)}, {_size(self.budget.used_bytes)} of max_inflight_bytes = "
            f"{_size(self.max_inflight_bytes)} is held and priority {priority} may use "
            f"{_size(self.budget.capacity_for(priority))}; retry after about {hint_s * 1e3:.0f} ms"),
            trailing_metadata=retry_metadata(hint_s))

    def _refuse(self, pipeline: Pipeline, limit: str, message: str) -> NoReturn:
        self._count(pipeline, limit)
        raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    def _count(self, pipeline: Pipeline, limit: str) -> None:
        if self._series is not None:
            self._series.refused.labels(pipeline.name, limit).inc()

    def _gate(self, pipeline: Pipeline) -> _Gate:
        """Built once per pipeline object (config pipelines and KServe's one-model pipelines)."""
        found = self._gates.get(id(pipeline))
        if found is None or found[0] is not pipeline:
            readers: dict[str, list[tuple[str, str, ModelLimits]]] = {}
            for stage in pipeline.stages:
                for model_input, wire in pipeline.wires[stage.name].items():
                    if wire.stage is None:
                        readers.setdefault(wire.tensor, []).append((stage.name, model_input, self.models[stage.model]))
            gate = _Gate({k: tuple(v) for k, v in readers.items()}, pipeline_cost(pipeline, self.costs))
            found = self._gates[id(pipeline)] = (pipeline, gate)
        return found[1]


class _Series:
    def __init__(self, registry: CollectorRegistry, capacity_bytes: int) -> None:
        from prometheus_client import Counter, Gauge

        self.inflight = Gauge("heddle_inflight_bytes", "Estimated memory of the requests in flight now.",
                              registry=registry)
        limit = Gauge("heddle_inflight_bytes_limit", "max_inflight_bytes, the in-flight memory budget.",
                      registry=registry)
        limit.set(capacity_bytes)
        self.refused = Counter("heddle_limit_refusals", "Requests refused at the front door over a memory limit.",
                               ["pipeline", "limit"], registry=registry)


def _cost(model: ModelSpec) -> ModelCost:
    try:
        return model_cost(model)
    except Exception as exc:  # an estimate is an aid; fall back to the declared tensors
        log.warning("no memory estimate from the graph", model=model.name, error=str(exc))
        return model_cost(ModelSpec(model.name, "python", "", model.inputs, model.outputs, model.kind))


def _source(limits: ModelLimits, key: str) -> str:
    source = limits.batch_source if key == "max_batch_size" else limits.elements_source
    return "" if source == "config" else " (" + _DERIVED.format(key=key, model=limits.model) + ")"


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit} ({int(nbytes)} bytes)"
    return f"{int(nbytes)} bytes"
