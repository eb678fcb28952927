"""One KServe request's use of system shared memory (server/frontends/shm.py): the input tensors it
reads from registered regions (views, no copy), the outputs it writes into them, the regions it holds
while it runs; and the register/status/unregister messages."""

from __future__ import annotations

import grpc
from tritonclient.grpc import service_pb2 as kpb

from heddle.clients.tensors import clipped
from heddle.server.frontends.shm import Region, SharedMemory
from heddle.server.runtime.status import RequestError

__all__ = ["SHM_REGION", "SharedMemoryIO", "region_status"]

SHM_REGION, SHM_SIZE, SHM_OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _param(params, key: str, kind: str, what: str, default=None):
    if key not in params:
        if default is None:
            raise RequestError(_INVALID, f"{what} names a shared memory region but no {key}")
        return default
    param = params[key]
    which = param.WhichOneof("parameter_choice")
    kinds = ("string_param",) if kind == "string" else ("int64_param", "uint64_param")
    if which not in kinds:
        raise RequestError(_INVALID, f"{what}: parameter {key!r} must be a {kind}, got {which or 'nothing'}")
    return getattr(param, which)


class SharedMemoryIO:
    """What one request reads from and writes to shared memory; `release()` when it ends."""

    def __init__(self, shm: SharedMemory | None) -> None:
        self.shm = shm
        self.held: list[Region] = []
        self.outputs: dict[str, tuple[memoryview, kpb.InferParameter, int, int]] = {}

    def _view(self, params, what: str) -> tuple[memoryview, str, int]:
        if self.shm is None:
            raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"{what} uses shared memory, which this server "
                                                              "does not serve")
        name = _param(params, SHM_REGION, "string", what)
        size = _param(params, SHM_SIZE, "integer", what)
        offset = _param(params, SHM_OFFSET, "integer", what, 0)
        region = self.shm.hold(name, what)
        self.held.append(region)
        return region.view(offset, size, what), name, offset

    def input_data(self, t) -> memoryview | None:
        """The bytes of an input that names a region (a view of the mapping), or None."""
        if SHM_REGION not in t.parameters:
            return None
        view, _, _ = self._view(t.parameters, f"input {clipped(t.name)!r}")
        return view

    def claim_output(self, o) -> bool:
        """Note where a requested output that names a region goes; whether it does."""
        if SHM_REGION not in o.parameters:
            return False
        view, name, offset = self._view(o.parameters, f"requested output {clipped(o.name)!r}")
        self.outputs[o.name] = (view, o.parameters[SHM_REGION], offset, len(view))
        return True

    def write(self, meta: kpb.ModelInferResponse.InferOutputTensor, data: bytes) -> bool:
        """Write an output into its region (then the response carries no data for it); whether it had one."""
        target = self.outputs.get(meta.name)
        if target is None:
            return False
        view, region, offset, size = target
        if len(data) > size:
            raise RequestError(_INVALID, f"output {clipped(meta.name)!r} is {len(data)} bytes; its shared memory "
                                         f"region {clipped(region.string_param)!r} gives it {size}")
        view[:len(data)] = data
        meta.parameters[SHM_REGION].string_param = region.string_param
        meta.parameters[SHM_SIZE].int64_param = len(data)
        if offset:
            meta.parameters[SHM_OFFSET].int64_param = offset
        return True

    def release(self) -> None:
        if self.shm is not None:
            self.shm.release(self.held)
        self.held = []


def region_status(regions) -> kpb.SystemSharedMemoryStatusResponse:
    response = kpb.SystemSharedMemoryStatusResponse()
    for r in regions:
        response.regions[r.name].CopyFrom(kpb.SystemSharedMemoryStatusResponse.RegionStatus(
            name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size))
    return response
