"""The asyncio heddle.v1 client (grpc.aio): the same API as HeddleClient, with awaitable methods.

Create it inside the event loop that will use it. With `token`, every call carries
`authorization: Bearer <token>` metadata. A failed call raises `HeddleError` (a `grpc.RpcError`,
raised from grpc's `AioRpcError`) with `code()`, `details()` and `retry_after_s`, as the
blocking client does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import grpc

from heddle.clients.client import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TARGET,
    Generation,
    InferResult,
    StageEvent,
    TokenEvent,
    auth_metadata,
    build_request,
    channel_credentials,
    channel_options,
    event_from_proto,
    heddle_errors,
    result_from_proto,
)
from heddle.clients.shm import SharedOutput
from heddle.v1 import heddle_pb2, heddle_pb2_grpc

__all__ = ["AsyncHeddleClient"]


class AsyncHeddleClient:
    """Asyncio client for the heddle.v1 Gateway and Admin services; use with `async with`."""

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
            grpc.aio.insecure_channel(target, options=options) if creds is None
            else grpc.aio.secure_channel(target, creds, options=options)
        )
        self._gateway = heddle_pb2_grpc.GatewayStub(self._channel)
        self._admin = heddle_pb2_grpc.AdminStub(self._channel)
        self._metadata = auth_metadata(token)

    async def __aenter__(self) -> AsyncHeddleClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def infer(
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
    ) -> InferResult:
        """Run a pipeline and await its result."""
        request = build_request(pipeline, inputs, priority=priority, deadline_ms=deadline_ms,
                                request_id=request_id, outputs=outputs, generation=generation,
                                output_shared_memory=output_shared_memory)
        with heddle_errors():
            return result_from_proto(await self._gateway.Infer(request, **self._opts(timeout_s)))

    async def infer_stream(
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
    ) -> AsyncIterator[TokenEvent | StageEvent | InferResult]:
        """Run a pipeline, yielding TokenEvents as LLM stages generate, a StageEvent per
        finished stage, and then the InferResult.

        Leaving the `async for` early and closing the generator (`aclose()`, or
        `contextlib.aclosing`) cancels the request on the server.
        """
        request = build_request(pipeline, inputs, priority=priority, deadline_ms=deadline_ms,
                                request_id=request_id, outputs=outputs, generation=generation,
                                output_shared_memory=output_shared_memory)
        call = self._gateway.InferStream(request, **self._opts(timeout_s))
        try:
            with heddle_errors():
                async for event in call:
                    yield event_from_proto(event)
        finally:
            call.cancel()  # a no-op when the stream already ended

    async def list_pipelines(self, *, timeout_s: float | None = None
                             ) -> list[heddle_pb2.PipelineInfo]:
        """The pipelines the server runs, with their declared inputs, outputs and stages."""
        request = heddle_pb2.ListPipelinesRequest()
        with heddle_errors():
            return list((await self._gateway.ListPipelines(request, **self._opts(timeout_s))).pipelines)

    async def list_models(self, *, timeout_s: float | None = None) -> list[heddle_pb2.ModelInfo]:
        """The models the server has loaded."""
        request = heddle_pb2.ListModelsRequest()
        with heddle_errors():
            return list((await self._gateway.ListModels(request, **self._opts(timeout_s))).models)

    async def list_devices(self, *, timeout_s: float | None = None) -> list[heddle_pb2.DeviceInfo]:
        """The server's devices, with their load and health."""
        request = heddle_pb2.ListDevicesRequest()
        with heddle_errors():
            return list((await self._gateway.ListDevices(request, **self._opts(timeout_s))).devices)

    async def register_shared_memory(self, name: str, key: str, byte_size: int, *, offset: int = 0,
                               timeout_s: float | None = None) -> list[heddle_pb2.SharedMemoryRegion]:
        """Register the bytes [offset, offset + byte_size) of the POSIX shared memory object `key`
        ("/name", on the server's machine) as region `name` (clients/shm.py makes one); the new region."""
        request = heddle_pb2.SharedMemoryRegion(name=name, key=key, offset=offset, byte_size=byte_size)
        with heddle_errors():
            return list((await self._gateway.RegisterSharedMemory(request, **self._opts(timeout_s))).regions)

    async def unregister_shared_memory(self, name: str = "", *,
                                 timeout_s: float | None = None) -> list[heddle_pb2.SharedMemoryRegion]:
        """Unregister a region ("" = all; FAILED_PRECONDITION while a request uses it); those left."""
        request = heddle_pb2.SharedMemoryRequest(name=name)
        with heddle_errors():
            return list((await self._gateway.UnregisterSharedMemory(request, **self._opts(timeout_s))).regions)

    async def shared_memory_status(self, name: str = "", *,
                             timeout_s: float | None = None) -> list[heddle_pb2.SharedMemoryRegion]:
        """The registered regions ("" = all; NOT_FOUND for an unknown name)."""
        request = heddle_pb2.SharedMemoryRequest(name=name)
        with heddle_errors():
            return list((await self._gateway.GetSharedMemoryStatus(request, **self._opts(timeout_s))).regions)

    async def get_policy(self, *, timeout_s: float | None = None) -> heddle_pb2.PolicyInfo:
        """The active scheduling policy and the available ones (admin)."""
        with heddle_errors():
            return await self._admin.GetPolicy(heddle_pb2.GetPolicyRequest(), **self._opts(timeout_s))

    async def set_policy(self, name: str, *, timeout_s: float | None = None) -> heddle_pb2.PolicyInfo:
        """Switch the scheduling policy (admin)."""
        request = heddle_pb2.SetPolicyRequest(policy=name)
        with heddle_errors():
            return await self._admin.SetPolicy(request, **self._opts(timeout_s))

    def _opts(self, timeout_s: float | None) -> dict[str, Any]:
        return {"timeout": timeout_s, "metadata": self._metadata}
