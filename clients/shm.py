"""System shared memory for a heddle.v1 client on the server's machine: a POSIX shared memory object
this process creates (or opens) and maps (SharedMemoryRegion), tensors written into it and read out of
it, and what a request names: an input's bytes in a region (SharedTensor) or the room an output gets
(SharedOutput). The server reads inputs there in place and writes outputs there, so a large tensor never
crosses the socket. Register the region first (HeddleClient.register_shared_memory); the regions are
the same ones the KServe shared-memory extension registers (tritonclient.utils.shared_memory's too).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from heddle.clients.tensors import expected_nbytes, from_tensor, numpy_to_datatype, to_tensor
from heddle.v1 import heddle_pb2

__all__ = ["SHM_DIR", "SharedMemoryRegion", "SharedOutput", "SharedTensor"]

SHM_DIR = Path("/dev/shm")  # where shm_open keeps its objects on Linux: the server opens "/key" there


@dataclass(frozen=True, slots=True)
class SharedTensor:
    """A tensor whose bytes lie in a registered region: an input to send this way, or an output the
    server wrote (InferResult.shared_outputs). Offsets are from the registered region's start."""

    region: str
    datatype: str
    shape: tuple[int, ...]
    offset: int
    byte_size: int

    def to_proto(self, name: str) -> heddle_pb2.Tensor:
        return heddle_pb2.Tensor(name=name, datatype=self.datatype, shape=self.shape, shared_memory=self.ref())

    def ref(self) -> heddle_pb2.SharedMemoryRef:
        return heddle_pb2.SharedMemoryRef(region=self.region, offset=self.offset, byte_size=self.byte_size)

    @classmethod
    def from_proto(cls, t: heddle_pb2.Tensor) -> SharedTensor:
        ref = t.shared_memory
        return cls(ref.region, t.datatype, tuple(t.shape), ref.offset, ref.byte_size)


@dataclass(frozen=True, slots=True)
class SharedOutput:
    """Where the server is to write an output: byte_size bytes from offset in a registered region."""

    region: str
    byte_size: int
    offset: int = 0

    def ref(self) -> heddle_pb2.SharedMemoryRef:
        return heddle_pb2.SharedMemoryRef(region=self.region, offset=self.offset, byte_size=self.byte_size)


@dataclass(frozen=True, slots=True)
class _Raw:
    """A tensor as from_tensor reads one, its raw_data a view of the mapping."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    raw_data: memoryview


class SharedMemoryRegion:
    """A POSIX shared memory object `key` ("/name") of byte_size bytes, mapped read-write; `name` is
    what it is registered under on the server. With create (the default) it is made here (0600, so
    the server must run as the same user) and unlinked by close(); else an existing one is opened.
    Use as a context manager."""

    def __init__(self, name: str, key: str, byte_size: int, *, create: bool = True) -> None:
        if not key.startswith("/") or "/" in key[1:] or key in ("/", "/.", "/.."):
            raise ValueError(f"shared memory key {key!r} must be '/' followed by a name without '/'")
        if byte_size <= 0:
            raise ValueError(f"shared memory region {name!r}: byte_size {byte_size} must be > 0")
        self.name, self.key, self.byte_size, self._owner = name, key, byte_size, create
        path = SHM_DIR / key[1:]
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT | os.O_EXCL if create else 0), 0o600)
        try:
            if create:
                os.ftruncate(fd, byte_size)
            self._mapping = mmap.mmap(fd, byte_size)
        except BaseException:
            if create:
                path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)

    def __enter__(self) -> SharedMemoryRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, array: Any, offset: int = 0) -> SharedTensor:
        """Copy an array into the region at offset (little-endian; BYTES length-prefixed) and return
        the SharedTensor that names it as an input. ValueError when it does not fit."""
        arr = np.asarray(array)
        datatype = numpy_to_datatype(arr.dtype)
        data = to_tensor("", arr).raw_data if datatype == "BYTES" else None
        size = len(data) if data is not None else arr.nbytes
        self._check(offset, size)
        if data is not None:
            self._mapping[offset:offset + size] = data
        elif size:  # one copy, straight from the array into the region
            np.copyto(np.frombuffer(self._mapping, arr.dtype.newbyteorder("<"), arr.size, offset).reshape(arr.shape),
                      arr)
        return SharedTensor(self.name, datatype, tuple(arr.shape), offset, size)

    def tensor(self, datatype: str, shape: tuple[int, ...], offset: int = 0) -> SharedTensor:
        """Name bytes already in the region (a producer wrote them in place) as an input."""
        size = expected_nbytes(datatype, shape)
        if size is None:
            raise ValueError("a BYTES tensor's size depends on its elements: write() it")
        self._check(offset, size)
        return SharedTensor(self.name, datatype, tuple(shape), offset, size)

    def output(self, byte_size: int | None = None, offset: int = 0) -> SharedOutput:
        """Room for an output: byte_size bytes at offset (default: the rest of the region)."""
        size = self.byte_size - offset if byte_size is None else byte_size
        self._check(offset, size)
        return SharedOutput(self.name, size, offset)

    def read(self, tensor: SharedTensor) -> np.ndarray:
        """An output the server wrote here, as an array viewing the region (no copy): it changes when
        the region is written again, so copy it to keep it."""
        if tensor.region != self.name:
            raise ValueError(f"tensor lies in region {tensor.region!r}, not {self.name!r}")
        self._check(tensor.offset, tensor.byte_size)
        view = memoryview(self._mapping)[tensor.offset:tensor.offset + tensor.byte_size]
        return from_tensor(_Raw(tensor.region, tensor.datatype, tensor.shape, view))  # type: ignore[arg-type]

    def close(self) -> None:
        """Unmap (once no array views it) and, when made here, unlink the object."""
        with contextlib.suppress(BufferError):  # an array from read() still views it: unmapped with it
            self._mapping.close()
        if self._owner:
            (SHM_DIR / self.key[1:]).unlink(missing_ok=True)
            self._owner = False

    def _check(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.byte_size:
            raise ValueError(f"{size} bytes at offset {offset} do not fit shared memory region {self.name!r} "
                             f"of {self.byte_size} bytes")
