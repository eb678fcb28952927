"""The synchronous heddle.v1 client (result types and request building: clients/messages.py).

A failed call raises `HeddleError`, a `grpc.RpcError` (so `except grpc.RpcError` still catches
it), and its `code()` is the API (NOT_FOUND for an unknown pipeline, INVALID_ARGUMENT for a
malformed tensor, priority or generation option, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED when
admission refuses, UNAVAILABLE, UNAUTHENTICATED for admin calls without the right token).
`details()` says what was wrong; `retry_after_s` is the server's hint (its `retry-after-ms`
trailing metadata) of when a refused request may succeed, None when it gave none.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import grpc

from heddle.clients.errors import RETRY_AFTER_KEY, HeddleError, heddle_errors
from heddle.clients.messages import (
    GENERATION_OPTIONS,
    Generation,
    InferResult,
    StageEvent,
    StageTiming,
    TokenEvent,
    build_request,
    event_from_proto,
    generation_options,
    result_from_proto,
    stage_from_proto,
)
from heddle.clients.shm import SharedMemoryRegion, SharedOutput, SharedTensor
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
    "SharedMemoryRegion",
    "SharedOutput",
    "SharedTensor",
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
        output_shared_memory: Mapping[str, SharedOutput] | None = None,
        model_versions: Mapping[str, str] | None = None,
        parameters: Mapping[str, object] | None = None,
    ) -> InferResult:
        """Run a pipeline and wait for its result (`model_versions`: pin versioned models;
        `parameters`: per-request parameters of its python stages). An input given as a SharedTensor
        (SharedMemoryRegion.write) is read by the server in place; `output_shared_memory` names the
        outputs to write into registered regions instead (InferResult.shared_outputs)."""
        request = build_request(pipeline, inputs, priority=priority, deadline_ms=deadline_ms,
                                request_id=request_id, outputs=outputs, generation=generation,
                                model_versions=model_versions, parameters=parameters,
                                output_shared_memory=output_shared_memory)
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
        output_shared_memory: Mapping[str, SharedOutput] | None = None,
    ) -> Iterator[TokenEvent | StageEvent | InferResult]:
        """Run a pipeline, yielding TokenEvents as LLM stages generate, a StageEvent per
        finished stage, and then the InferResult.

        Closing the iterator early (break, or garbage collection) cancels the request on the server.
        """
        request = build_request(pipeline, inputs, priority=priority, deadline_ms=deadline_ms,
                                request_id=request_id, outputs=outputs, generation=generation,
                                output_shared_memory=output_shared_memory)
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

    def register_shared_memory(self, name: str, key: str, byte_size: int, *, offset: int = 0,
                               timeout_s: float | None = None) -> list[heddle_pb2.SharedMemoryRegion]:
        """Register the bytes [offset, offset + byte_size) of the POSIX shared memory object `key`
        ("/name", on the server's machine) as region `name` (clients/shm.py makes one); the new region."""
        request = heddle_pb2.SharedMemoryRegion(name=name, key=key, offset=offset, byte_size=byte_size)
        with heddle_errors():
            return list((self._gateway.RegisterSharedMemory(request, **self._opts(timeout_s))).regions)

    def unregister_shared_memory(self, name: str = "", *,
                                 timeout_s: float | None = None) -> list[heddle_pb2.SharedMemoryRegion]:
        """Unregister a region ("" = all; FAILED_PRECONDITION while a request uses it); those left."""
        request = heddle_pb2.SharedMemoryRequest(name=name)
        with heddle_errors():
            return list((self._gateway.UnregisterSharedMemory(request, **self._opts(timeout_s))).regions)

    def shared_memory_status(self, name: str = "", *,
                             timeout_s: float | None = None) -> list[heddle_pb2.SharedMemoryRegion]:
        """The registered regions ("" = all; NOT_FOUND for an unknown name)."""
        request = heddle_pb2.SharedMemoryRequest(name=name)
        with heddle_errors():
            return list((self._gateway.GetSharedMemoryStatus(request, **self._opts(timeout_s))).regions)

    def get_policy(self, *, timeout_s: float | None = None) -> heddle_pb2.PolicyInfo:
        """The active scheduling policy and the available ones (admin)."""
        with heddle_errors():
            return self._admin.GetPolicy(heddle_pb2.GetPolicyRequest(), **self._opts(timeout_s))

    def set_policy(self, name: str, *, timeout_s: float | None = None) -> heddle_pb2.PolicyInfo:
        """Switch the scheduling policy (admin)."""
        request = heddle_pb2.SetPolicyRequest(policy=name)
        with heddle_errors():
            return self._admin.SetPolicy(request, **self._opts(timeout_s))

    def reload_config(self, config_path: str = "", *, timeout_s: float | None = None) -> heddle_pb2.ReloadStatus:
        """Reload the server's config without a restart (admin): `config_path` on the server's
        machine, "" = the file it started with. What was added, changed and removed."""
        request = heddle_pb2.ReloadRequest(config_path=config_path)
        with heddle_errors():
            return self._admin.ReloadConfig(request, **self._opts(timeout_s))

    def _opts(self, timeout_s: float | None) -> dict[str, Any]:
        return {"timeout": timeout_s, "metadata": self._metadata}
