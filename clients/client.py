"""The synchronous heddle.v1 client, and the result types both clients decode responses into.

A failed call raises `HeddleError`, a `grpc.RpcError` (so `except grpc.RpcError` still catches
it), and its `code()` is the API (NOT_FOUND for an unknown pipeline, INVALID_ARGUMENT for a
malformed tensor, priority or generation option, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED when
admission refuses, UNAVAILABLE, UNAUTHENTICATED for admin calls without the right token).
`details()` says what was wrong; `retry_after_s` is the server's hint (its `retry-after-ms`
trailing metadata) of when a refused request may succeed, None when it gave none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import grpc
import numpy as np

from heddle.clients.errors import RETRY_AFTER_KEY, HeddleError, heddle_errors
from heddle.clients.tensors import from_tensor, to_tensor
from heddle.v1 import heddle_pb2, heddle_pb2_grpc

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TARGET",
    "GENERATION_OPTIONS",
    "Generation",
    "RETRY_AFTER_KEY",
    "HeddleClient",
    "HeddleError",
    "InferResult",
    "StageEvent",
    "StageTiming",
    "TokenEvent",
    "auth_metadata",
    "build_request",
    "channel_options",
    "channel_credentials",
    "event_from_proto",
    "generation_options",
    "heddle_errors",
    "result_from_proto",
    "stage_from_proto",
]

DEFAULT_TARGET = "127.0.0.1:8001"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
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
    """A pipeline's decoded response: outputs as read-only numpy arrays, plus per-stage timings."""

    request_id: str
    pipeline: str
    outputs: dict[str, np.ndarray]
    stages: list[StageTiming] = field(default_factory=list)
    total_ms: float = 0.0
    priority: int = 0
    deadline_missed: bool = False
    energy_j: float = 0.0
    energy_source: str = ""  # "measured" | "estimated" | "mixed" | ""


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
        outputs={t.name: from_tensor(t) for t in msg.outputs},
        stages=[stage_from_proto(s) for s in msg.stages],
        total_ms=msg.total_ms,
        priority=msg.priority,
        deadline_missed=msg.deadline_missed,
        energy_j=msg.energy_j,
        energy_source=msg.energy_source,
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
) -> heddle_pb2.InferRequest:
    """An InferRequest with each input encoded by to_tensor (one copy per array); `generation`
    sets the LLM stages' options (see generation_options)."""
    request = heddle_pb2.InferRequest(
        pipeline=pipeline,
        inputs=[to_tensor(name, array) for name, array in inputs.items()],
        priority=priority,
        deadline_ms=deadline_ms or 0.0,
        request_id=request_id or "",
        outputs=list(outputs or ()),
    )
    options = generation_options(generation)
    if options is not None:
        request.generation.CopyFrom(options)
    return request


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel arguments both clients use: message size limits in both directions."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def channel_credentials(
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials when any PEM is given (key + chain = mutual TLS), else None for plaintext."""
    if root_certificates is None and private_key is None and certificate_chain is None:
        return None
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("mutual TLS needs both private_key and certificate_chain")
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The `authorization: Bearer <token>` metadata every call carries when a token is set.

    Admin calls need it when the server sets an admin token; Gateway calls carry it too, so a
    server or proxy that authenticates them works unchanged.
    """
    return (("authorization", f"Bearer {token}"),) if token else None


class HeddleClient:
    """Blocking client for the heddle.v1 Gateway and Admin services; use as a context manager.

    Every method raises HeddleError (a grpc.RpcError) on failure; `timeout_s` is the gRPC
    deadline of the call.
    With `token`, every call carries `authorization: Bearer <token>` metadata.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        token: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        creds = channel_credentials(root_certificates, private_key, certificate_chain)
        options = channel_options(max_message_bytes)
        self.target = target
        self._channel = (
            grpc.insecure_channel(target, options=options) if creds is None
            else grpc.secure_channel(target, creds, options=options)
        )
        self._gateway = heddle_pb2_grpc.GatewayStub(self._channel)
        self._admin = heddle_pb2_grpc.AdminStub(self._channel)
        self._metadata = auth_metadata(token)

    def __enter__(self) -> HeddleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def infer(
        self,
        pipeline: str,
        inputs: Mapping[str, Any],
        *,
        priority: int = 0,
        deadline_ms: float | None = None,
        request_id: str | None = None,
        outputs: Iterable[str] | None = None,
        timeout_s: float | None = None,
        generation: Generation | None = None,
    ) -> InferResult:
        """Run a pipeline and wait for its result."""
        request = build_request(pipeline, inputs, priority=priority, deadline_ms=deadline_ms,
                                request_id=request_id, outputs=outputs, generation=generation)
        with heddle_errors():
            return result_from_proto(self._gateway.Infer(request, **self._opts(timeout_s)))

    def infer_stream(
        self,
        pipeline: str,
        inputs: Mapping[str, Any],
        *,
        priority: int = 0,
        deadline_ms: float | None = None,
        request_id: str | None = None,
        outputs: Iterable[str] | None = None,
        timeout_s: float | None = None,
        generation: Generation | None = None,
    ) -> Iterator[TokenEvent | StageEvent | InferResult]:
        """Run a pipeline, yielding TokenEvents as LLM stages generate, a StageEvent per
        finished stage, and then the InferResult.

        Closing the iterator early (break, or garbage collection) cancels the request on the server.
        """
        request = build_request(pipeline, inputs, priority=priority, deadline_ms=deadline_ms,
                                request_id=request_id, outputs=outputs, generation=generation)
        call = self._gateway.InferStream(request, **self._opts(timeout_s))
        try:
            with heddle_errors():
                for event in call:
                    yield event_from_proto(event)
        finally:
            call.cancel()  # a no-op when the stream already ended

    def list_pipelines(self, *, timeout_s: float | None = None) -> list[heddle_pb2.PipelineInfo]:
        """The pipelines the server runs, with their declared inputs, outputs and stages."""
        request = heddle_pb2.ListPipelinesRequest()
        with heddle_errors():
            return list(self._gateway.ListPipelines(request, **self._opts(timeout_s)).pipelines)

    def list_models(self, *, timeout_s: float | None = None) -> list[heddle_pb2.ModelInfo]:
        """The models the server has loaded."""
        request = heddle_pb2.ListModelsRequest()
        with heddle_errors():
            return list(self._gateway.ListModels(request, **self._opts(timeout_s)).models)

    def list_devices(self, *, timeout_s: float | None = None) -> list[heddle_pb2.DeviceInfo]:
        """The server's devices, with their load and health."""
        request = heddle_pb2.ListDevicesRequest()
        with heddle_errors():
            return list(self._gateway.ListDevices(request, **self._opts(timeout_s)).devices)

    def get_policy(self, *, timeout_s: float | None = None) -> heddle_pb2.PolicyInfo:
        """The active scheduling policy and the available ones (admin)."""
        with heddle_errors():
            return self._admin.GetPolicy(heddle_pb2.GetPolicyRequest(), **self._opts(timeout_s))

    def set_policy(self, name: str, *, timeout_s: float | None = None) -> heddle_pb2.PolicyInfo:
        """Switch the scheduling policy (admin)."""
        request = heddle_pb2.SetPolicyRequest(policy=name)
        with heddle_errors():
            return self._admin.SetPolicy(request, **self._opts(timeout_s))

    def _opts(self, timeout_s: float | None) -> dict[str, Any]:
        return {"timeout": timeout_s, "metadata": self._metadata}
