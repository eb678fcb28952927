"""The KServe servicer's extensions beyond inference: repository load/unload (through config
reload), system shared memory, and the RPCs heddle answers UNIMPLEMENTED with what to do instead."""

from __future__ import annotations

import grpc
from tritonclient.grpc import service_pb2 as kpb

from heddle.clients.tensors import clipped
from heddle.server.frontends.kserve_shm import region_status
from heddle.server.frontends.validation import RequestError
from heddle.server.runtime.reload import NotServed, Reloader, ReloadError

__all__ = ["KServeExtensions"]


class KServeExtensions:
    """Mixed into KServeServicer (kserve.py), whose `catalog`, `shm` and `reloader` it uses."""

    # ---- what heddle does not do --------------------------------------------------------
    async def _unsupported(self, context, what: str, instead: str) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"heddle does not support {what}: {instead}")

    def attach_reloader(self, reloader: Reloader) -> None:
        """RepositoryModelLoad/Unload go through the server's config reload (server/runtime/reload.py)."""
        self.reloader = reloader

    async def RepositoryModelLoad(self, request, context) -> kpb.RepositoryModelLoadResponse:
        """Reload the config file (models and pipelines; server/runtime/reload.py), with the model no
        longer left out if it was unloaded; NOT_FOUND when the file does not have it."""
        name = request.model_name
        await self._repository(context, lambda: self.reloader.load(name))
        if name not in self.catalog and not any(n.partition("@")[0] == name for n in self.catalog):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {clipped(name)!r} is not in the config file "
                                f"(heddle loads what its config names; add a [[models]] table)")
        return kpb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context) -> kpb.RepositoryModelUnloadResponse:
        """Stop serving a model (all its versions) or pipeline, and the pipelines that run it, until
        RepositoryModelLoad; requests already running finish."""
        name = request.model_name
        await self._repository(context, lambda: self.reloader.unload(name))
        return kpb.RepositoryModelUnloadResponse()

    async def _repository(self, context, change) -> None:
        if self.reloader is None:
            await self._unsupported(context, "repository changes", "this server was built without config reload")
        try:
            await change()
        except ReloadError as exc:
            code = grpc.StatusCode.FAILED_PRECONDITION if exc.fixed else grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(grpc.StatusCode.NOT_FOUND if isinstance(exc, NotServed) else code, str(exc))

    # ---- system shared memory (server/frontends/shm.py) ----------------------------------
    async def SystemSharedMemoryStatus(self, request, context) -> kpb.SystemSharedMemoryStatusResponse:
        if request.name and request.name not in self.shm.regions:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no shared memory region {clipped(request.name)!r}")
        names = [request.name] if request.name else sorted(self.shm.regions)
        return region_status(self.shm.regions[n] for n in names)

    async def SystemSharedMemoryRegister(self, request, context) -> kpb.SystemSharedMemoryRegisterResponse:
        try:
            self.shm.register(request.name, request.key, request.offset, request.byte_size)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        return kpb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context) -> kpb.SystemSharedMemoryUnregisterResponse:
        try:
            self.shm.unregister(request.name)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        return kpb.SystemSharedMemoryUnregisterResponse()

    async def CudaSharedMemoryStatus(self, request, context):
        await self._unsupported(context, "CUDA shared memory", _SEND_TENSORS)

    async def CudaSharedMemoryRegister(self, request, context):
        await self._unsupported(context, "CUDA shared memory", _SEND_TENSORS)

    async def CudaSharedMemoryUnregister(self, request, context):
        await self._unsupported(context, "CUDA shared memory", _SEND_TENSORS)

    async def TraceSetting(self, request, context):
        await self._unsupported(context, "TraceSetting", "per-stage timings are in heddle.v1 responses, "
                                "structured logs and Prometheus metrics")

    async def LogSettings(self, request, context):
        await self._unsupported(context, "LogSettings", "set [server] log_level in the config")



_SEND_TENSORS = "send tensors in the request (raw_input_contents or typed contents)"
