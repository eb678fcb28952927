"""The synchronous heddle.v1 client, and the result types both clients decode responses into.

Errors are not wrapped: a failed call raises `grpc.RpcError`, and its `code()` is the API
(NOT_FOUND for an unknown pipeline, INVALID_ARGUMENT for a malformed tensor or priority,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED when admission refuses, UNAVAILABLE, UNAUTHENTICATED for
admin calls without the right token). `details()` says what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import grpc
import numpy as np

from heddle.clients.tensors import from_tensor, to_tensor
from heddle.v1 import heddle_pb2, heddle_pb2_grpc

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TARGET",
    "HeddleClient",
    "InferResult",
    "StageEvent",
    "StageTiming",
    "auth_metadata",
    "build_request",
    "channel_options",
    "channel_credentials",
    "event_from_proto",
    "result_from_proto",
    "stage_from_proto",
]

DEFAULT_TARGET = "127.0.0.1:8001"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Unknown enum values (a newer server) come through as their number rather than failing the call.
_STATUS_NAMES = {v: k.removeprefix("STAGE_STATUS_") for k, v in heddle_pb2.StageStatus.items()}


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


def event_from_proto(msg: heddle_pb2.InferEvent) -> StageEvent | InferResult:
    """One InferStream event: a finished stage, or the final result."""
    kind = msg.WhichOneof("event")
    if kind == "stage_done":
        return StageEvent(**_stage_kwargs(msg.stage_done))
    if kind == "result":
        return result_from_proto(msg.result)
    raise ValueError(f"InferEvent carries no event (oneof is {kind!r})")


def build_request(
    pipeline: str,
    inputs: Mapping[str, Any],
    *,
    priority: int = 0,
    deadline_ms: float | None = None,
    request_id: str | None = None,
    outputs: Iterable[str] | None = None,
) -> heddle_pb2.InferRequest:
    """An InferRequest with each input encoded by to_tensor (one copy per array)."""
    return heddle_pb2.InferRequest(
        pipeline=pipeline,
        inputs=[to_tensor(name, array) for name, array in inputs.items()],
        priority=priority,
        deadline_ms=deadline_ms or 0.0,
        request_id=request_id or "",
        outputs=list(outputs or ()),
    )


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

    Every method raises grpc.RpcError on failure; `timeout_s` is the gRPC deadline of the call.
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
    ) -> InferResult:
        """Run a pipeline and wait for its result."""
        request = build_request(pipeline, inputs, priority=priority, deadline_ms=deadline_ms,
                                request_id=request_id, outputs=outputs)
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
    ) -> Iterator[StageEvent | InferResult]:
        """Run a pipeline, yielding a StageEvent per finished stage and then the InferResult.

        Closing the iterator early (break, or garbage collection) cancels the request on the server.
        """
        request = build_request(pipeline, inputs, priority=priority, deadline_ms=deadline_ms,
                                request_id=request_id, outputs=outputs)
        call = self._gateway.InferStream(request, **self._opts(timeout_s))
        try:
            for event in call:
                yield event_from_proto(event)
        finally:
            call.cancel()  # a no-op when the stream already ended

    def list_pipelines(self, *, timeout_s: float | None = None) -> list[heddle_pb2.PipelineInfo]:
        """The pipelines the server runs, with their declared inputs, outputs and stages."""
        request = heddle_pb2.ListPipelinesRequest()
        return list(self._gateway.ListPipelines(request, **self._opts(timeout_s)).pipelines)

    def list_models(self, *, timeout_s: float | None = None) -> list[heddle_pb2.ModelInfo]:
        """The models the server has loaded."""
        request = heddle_pb2.ListModelsRequest()
        return list(self._gateway.ListModels(request, **self._opts(timeout_s)).models)

    def list_devices(self, *, timeout_s: float | None = None) -> list[heddle_pb2.DeviceInfo]:
        """The server's devices, with their load and health."""
        request = heddle_pb2.ListDevicesRequest()
        return list(self._gateway.ListDevices(request, **self._opts(timeout_s)).devices)

    def get_policy(self, *, timeout_s: float | None = None) -> heddle_pb2.PolicyInfo:
        """The active scheduling policy and the available ones (admin)."""
        return self._admin.GetPolicy(heddle_pb2.GetPolicyRequest(), **self._opts(timeout_s))

    def set_policy(self, name: str, *, timeout_s: float | None = None) -> heddle_pb2.PolicyInfo:
        """Switch the scheduling policy (admin)."""
        request = heddle_pb2.SetPolicyRequest(policy=name)
        return self._admin.SetPolicy(request, **self._opts(timeout_s))

    def _opts(self, timeout_s: float | None) -> dict[str, Any]:
        return {"timeout": timeout_s, "metadata": self._metadata}
