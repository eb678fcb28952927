"""One heddle.v1 request's use of system shared memory (server/frontends/shm.py, the registry the KServe
extension fills too): input tensors that name a region (read in place, no copy), outputs written into
the regions the request names, the regions held while it runs; and the Register/Status messages."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
import numpy as np

from heddle.clients.tensors import TensorError, clipped, expected_nbytes, numpy_to_datatype, to_tensor
from heddle.server.frontends.shm import Region, SharedMemory
from heddle.server.runtime.status import RequestError
from heddle.v1 import heddle_pb2 as pb

__all__ = ["RequestRegions", "SharedMemoryRpcs", "SharedTensor", "region_status"]

_INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True, slots=True)
class SharedTensor:
    """An input in shared memory as validation.decode_inputs reads a Tensor: raw_data is a view of the region."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw_data: memoryview


class RequestRegions:
    """The regions one request reads and writes; `release()` when it has answered."""

    def __init__(self, shm: SharedMemory) -> None:
        self.shm = shm
        self.held: list[Region] = []
        self.outputs: dict[str, tuple[pb.SharedMemoryRef, memoryview]] = {}

    def _view(self, ref: pb.SharedMemoryRef, what: str) -> memoryview:
        region = self.shm.hold(ref.region, what)
        self.held.append(region)
        return region.view(ref.offset, ref.byte_size, what)

    def inputs(self, tensors: Iterable[pb.Tensor]) -> list:
        """The request's tensors, those naming a region as SharedTensors viewing its bytes."""
        return [self._input(t) if t.HasField("shared_memory") else t for t in tensors]

    def _input(self, t: pb.Tensor) -> SharedTensor:
        what = f"input {clipped(t.name)!r}"
        if t.raw_data:
            raise RequestError(_INVALID, f"{what} has both raw_data and shared_memory; give one")
        ref = t.shared_memory
        try:
            needed = expected_nbytes(t.datatype, tuple(t.shape))
        except TensorError as exc:
            raise RequestError(_INVALID, f"{what}: {exc}") from None
        if needed is not None and ref.byte_size != needed:
            raise RequestError(_INVALID, f"{what}: shared_memory.byte_size is {ref.byte_size}; shape "
                                         f"{list(t.shape)} {t.datatype} needs {needed} bytes")
        return SharedTensor(t.name, t.datatype, tuple(t.shape), self._view(ref, what))

    def claim_outputs(self, refs: dict[str, pb.SharedMemoryRef]) -> None:
        """Hold the regions the request's outputs go to; a ref past its region's end is refused now."""
        for name, ref in refs.items():
            self.outputs[name] = (ref, self._view(ref, f"output {clipped(name)!r}"))

    def tensor(self, name: str, array: np.ndarray) -> pb.Tensor:
        """An output as the response carries it: its bytes, or written into its region and described."""
        target = self.outputs.get(name)
        if target is None:
            return to_tensor(name, array)
        ref, view = target
        arr = np.asarray(array)
        try:
            datatype = numpy_to_datatype(arr.dtype)
            data = to_tensor(name, arr).raw_data if datatype == "BYTES" else None
        except TensorError as exc:
            raise RequestError(grpc.StatusCode.INTERNAL, f"output {name!r}: {exc}") from None
        size = len(data) if data is not None else arr.nbytes
        if size > len(view):
            raise RequestError(_INVALID, f"output {clipped(name)!r} is {size} bytes; shared memory region "
                                         f"{clipped(ref.region)!r} gives it {len(view)} (shared_memory.byte_size)")
        if data is not None:
            view[:size] = data
        else:  # straight from the array into the region (little-endian): one copy, no bytes object between
            np.copyto(np.frombuffer(view, arr.dtype.newbyteorder("<"), arr.size).reshape(arr.shape), arr)
        return pb.Tensor(name=name, datatype=datatype, shape=arr.shape, shared_memory=pb.SharedMemoryRef(
            region=ref.region, offset=ref.offset, byte_size=size))

    def release(self) -> None:
        self.shm.release(self.held)
        self.held = []


def region_status(regions: Iterable[Region]) -> pb.SharedMemoryStatus:
    return pb.SharedMemoryStatus(regions=[
        pb.SharedMemoryRegion(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size) for r in regions])


class SharedMemoryRpcs:
    """heddle.v1's RegisterSharedMemory / UnregisterSharedMemory / GetSharedMemoryStatus over `self.shm`
    (mixed into the GatewayServicer)."""

    shm: SharedMemory

    async def RegisterSharedMemory(self, request: pb.SharedMemoryRegion, context) -> pb.SharedMemoryStatus:
        try:
            region = self.shm.register(request.name, request.key, request.offset, request.byte_size)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        return region_status([region])

    async def UnregisterSharedMemory(self, request: pb.SharedMemoryRequest, context) -> pb.SharedMemoryStatus:
        try:
            self.shm.unregister(request.name)
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
        return region_status(self.shm.regions[n] for n in sorted(self.shm.regions))

    async def GetSharedMemoryStatus(self, request: pb.SharedMemoryRequest, context) -> pb.SharedMemoryStatus:
        if request.name and request.name not in self.shm.regions:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no shared memory region {clipped(request.name)!r} "
                                                           "is registered")
        names = [request.name] if request.name else sorted(self.shm.regions)
        return region_status(self.shm.regions[n] for n in names)
