"""What both clients decode responses into (StageTiming, StageEvent, TokenEvent, InferResult) and
how they build a request (tensors, priority, deadline, generation options)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heddle.clients.shm import SharedOutput, SharedTensor
from heddle.clients.tensors import from_tensor, to_tensor
from heddle.v1 import heddle_pb2

__all__ = [
    "GENERATION_OPTIONS", "Generation", "InferResult", "StageEvent", "StageTiming", "TokenEvent", "build_request",
    "event_from_proto", "generation_options", "result_from_proto", "stage_from_proto",
]

# Unknown enum values (a newer server) come through as their number rather than failing the call.
_STATUS_NAMES = {v: k.removeprefix("STAGE_STATUS_") for k, v in heddle_pb2.StageStatus.items()}
GENERATION_OPTIONS = tuple(f.name for f in heddle_pb2.GenerationOptions.DESCRIPTOR.fields)


@dataclass(frozen=True, slots=True)
class StageTiming:
    """Where and how long one pipeline stage ran; offsets are from the request's arrival."""

    stage: str
    model: str
    device: str
    status: str  # OK | FAILED | CANCELLED | SKIPPED | UNSPECIFIED
    queue_ms: float
    compute_ms: float
    start_offset_ms: float
    end_offset_ms: float
    error: str = ""
    energy_j: float = 0.0
    energy_source: str = ""  # "measured" | "estimated" | "" (unmetered)
    tokens: int = 0  # LLM stages: tokens generated, time to first token, time per output token
    ttft_ms: float = 0.0
    tpot_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class StageEvent(StageTiming):
    """A stage that finished while its request was still running (yielded by infer_stream)."""


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Tokens an LLM stage generated, yielded by infer_stream as they come (before the stage ends).

    `index` is the position of the first of them in the generated sequence; `offset_ms` is from
    the request's arrival at the server; `text` is their decoded text when the model has a
    tokenizer (a character whose bytes span tokens comes once complete).
    """

    stage: str
    token_ids: tuple[int, ...]
    index: int
    offset_ms: float
    text: str = ""


@dataclass(slots=True)
class InferResult:
    """A pipeline's decoded response: outputs as read-only numpy arrays, plus per-stage timings;
    outputs the server wrote into shared memory are in `shared_outputs` (SharedMemoryRegion.read)."""

    request_id: str
    pipeline: str
    outputs: dict[str, np.ndarray]
    stages: list[StageTiming] = field(default_factory=list)
    total_ms: float = 0.0
    priority: int = 0
    deadline_missed: bool = False
    energy_j: float = 0.0
    energy_source: str = ""  # "measured" | "estimated" | "mixed" | ""
    shared_outputs: dict[str, SharedTensor] = field(default_factory=dict)


def _stage_kwargs(msg: heddle_pb2.StageResult) -> dict[str, Any]:
    return dict(
        stage=msg.stage, model=msg.model, device=msg.device,
        status=_STATUS_NAMES.get(msg.status, str(msg.status)), queue_ms=msg.queue_ms,
        compute_ms=msg.compute_ms, start_offset_ms=msg.start_offset_ms,
        end_offset_ms=msg.end_offset_ms, error=msg.error, energy_j=msg.energy_j,
        energy_source=msg.energy_source, tokens=msg.tokens, ttft_ms=msg.ttft_ms, tpot_ms=msg.tpot_ms,
    )


def stage_from_proto(msg: heddle_pb2.StageResult) -> StageTiming:
    """A StageResult message as a StageTiming."""
    return StageTiming(**_stage_kwargs(msg))


def result_from_proto(msg: heddle_pb2.InferResponse) -> InferResult:
    """Decode an InferResponse; raises TensorError when an output tensor is malformed."""
    return InferResult(
        request_id=msg.request_id,
        pipeline=msg.pipeline,
        outputs={t.name: from_tensor(t) for t in msg.outputs if not t.HasField("shared_memory")},
        stages=[stage_from_proto(s) for s in msg.stages],
        total_ms=msg.total_ms,
        priority=msg.priority,
        deadline_missed=msg.deadline_missed,
        energy_j=msg.energy_j,
        energy_source=msg.energy_source,
        shared_outputs={t.name: SharedTensor.from_proto(t) for t in msg.outputs if t.HasField("shared_memory")},
    )


def event_from_proto(msg: heddle_pb2.InferEvent) -> TokenEvent | StageEvent | InferResult:
    """One InferStream event: generated tokens, a finished stage, or the final result."""
    kind = msg.WhichOneof("event")
    if kind == "tokens":
        t = msg.tokens
        return TokenEvent(stage=t.stage, token_ids=tuple(t.token_ids), index=t.index,
                          offset_ms=t.offset_ms, text=t.text)
    if kind == "stage_done":
        return StageEvent(**_stage_kwargs(msg.stage_done))
    if kind == "result":
        return result_from_proto(msg.result)
    raise ValueError(f"InferEvent carries no event (oneof is {kind!r})")


Generation = Mapping[str, Any] | heddle_pb2.GenerationOptions


def generation_options(generation: Generation | None) -> heddle_pb2.GenerationOptions | None:
    """GenerationOptions from a mapping of its fields (GENERATION_OPTIONS), or the message itself.

    Zeros mean the model's defaults (temperature 0 is greedy). Raises ValueError naming an
    unknown option or a value of the wrong type; the server checks the values' ranges.
    """
    if generation is None or isinstance(generation, heddle_pb2.GenerationOptions):
        return generation
    unknown = sorted(set(generation) - set(GENERATION_OPTIONS))
    if unknown:
        raise ValueError(f"unknown generation option(s) {unknown}; known: {', '.join(GENERATION_OPTIONS)}")
    try:
        return heddle_pb2.GenerationOptions(**generation)
    except (TypeError, ValueError) as err:
        raise ValueError(f"generation options {dict(generation)!r}: {err}") from None


def build_request(
    pipeline: str,
    inputs: Mapping[str, Any],
    *,
    priority: int = 0,
    deadline_ms: float | None = None,
    request_id: str | None = None,
    outputs: Iterable[str] | None = None,
    generation: Generation | None = None,
    model_versions: Mapping[str, str] | None = None,
    parameters: Mapping[str, object] | None = None,
    output_shared_memory: Mapping[str, SharedOutput] | None = None,
) -> heddle_pb2.InferRequest:
    """An InferRequest with each input encoded by to_tensor (one copy per array), or named in shared
    memory when it is a SharedTensor; `generation` sets the LLM stages' options (see
    generation_options); `model_versions` pins versioned models (name -> version) instead of the
    server's canary split; `parameters` go to the python stages that declare them;
    `output_shared_memory` names the outputs to write into registered regions."""
    request = heddle_pb2.InferRequest(
        pipeline=pipeline,
        inputs=[value.to_proto(name) if isinstance(value, SharedTensor) else to_tensor(name, value)
                for name, value in inputs.items()],
        priority=priority,
        deadline_ms=deadline_ms or 0.0,
        request_id=request_id or "",
        outputs=list(outputs or ()),
        model_versions=dict(model_versions or {}),
        # Sent as text, typed by the server from the stages' declarations ("true"/"false" for bools).
        parameters={k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in (parameters or {}).items()},
        output_shared_memory={k: v.ref() for k, v in (output_shared_memory or {}).items()},
    )
    options = generation_options(generation)
    if options is not None:
        request.generation.CopyFrom(options)
    return request
