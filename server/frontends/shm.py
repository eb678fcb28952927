"""System shared memory (the KServe v2 / Triton shared-memory extension): regions a same-box client
registers by their POSIX name, inputs read from them with no copy (the arrays the backends get view
the mapping) and outputs written into them.

A region is a file under /dev/shm named by its key ("/name", as shm_open takes it), opened without
following links and mapped read-write from 0 to offset + byte_size. A request holds each region it
reads or writes until it ends; unregistering a region held by a request fails cleanly
(FAILED_PRECONDITION), and the mapping itself goes when the last array viewing it does.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from heddle.clients.tensors import clipped
from heddle.server.runtime.status import RequestError

__all__ = ["MAX_REGIONS", "SHM_DIR", "Region", "SharedMemory"]

SHM_DIR = Path("/dev/shm")
# Regions registered at once on one server: heddle's KServe frontends have no client identity to
# count per client, so the bound is the server's; each region costs a mapping and a file descriptor.
MAX_REGIONS = 64
_KEY = re.compile(r"/[A-Za-z0-9_.\-]{1,250}")
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(eq=False)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap = field(repr=False)
    users: int = 0  # requests reading or writing it now

    def view(self, offset: int, byte_size: int, what: str) -> memoryview:
        """The bytes [offset, offset + byte_size) of the region (offsets from the region's start)."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise RequestError(_INVALID, f"{what}: {byte_size} bytes at offset {offset} do not fit shared memory "
                                         f"region {clipped(self.name)!r} of {self.byte_size} bytes")
        start = self.offset + offset
        return memoryview(self.mapping)[start:start + byte_size]


class SharedMemory:
    """The server's registered regions, by name."""

    def __init__(self, max_regions: int = MAX_REGIONS, directory: Path = SHM_DIR) -> None:
        self.max_regions = max_regions
        self.directory = directory
        self.regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> Region:
        if not name or len(name) > 256:
            raise RequestError(_INVALID, "a shared memory region needs a name of 1 to 256 characters")
        if name in self.regions:
            raise RequestError(grpc.StatusCode.ALREADY_EXISTS, f"shared memory region {clipped(name)!r} is "
                                                               "already registered; unregister it first")
        if len(self.regions) >= self.max_regions:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.max_regions} shared memory regions "
                                                                   "are registered already; unregister one first")
        if not _KEY.fullmatch(key) or key in ("/.", "/.."):
            raise RequestError(_INVALID, f"shared memory key {clipped(key)!r} is not a POSIX shared memory name "
                                         "('/' then letters, digits, '_', '.' or '-')")
        if offset < 0 or byte_size <= 0:
            raise RequestError(_INVALID, f"shared memory region {clipped(name)!r}: offset {offset} and byte_size "
                                         f"{byte_size} must be >= 0 and > 0")
        self.regions[name] = Region(name, key, offset, byte_size, self._map(key, offset + byte_size))
        return self.regions[name]

    def _map(self, key: str, length: int) -> mmap.mmap:
        path = self.directory / key[1:]
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as exc:
            raise RequestError(_INVALID, f"shared memory key {clipped(key)!r}: cannot open {path}: "
                                         f"{exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size < length:
                raise RequestError(_INVALID, f"shared memory key {clipped(key)!r} holds {info.st_size} bytes; the "
                                             f"region needs {length} (offset + byte_size)")
            return mmap.mmap(fd, length)
        finally:
            os.close(fd)

    def unregister(self, name: str = "") -> None:
        """One region, or every region when name is empty; one in use by a request is refused."""
        names = [name] if name else list(self.regions)
        if name and name not in self.regions:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no shared memory region {clipped(name)!r} is registered")
        busy = [n for n in names if self.regions[n].users]
        if busy:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"shared memory region(s) {busy} are in use by "
                                                                    "requests still running; retry once they end")
        for n in names:
            region = self.regions.pop(n)
            # An array of an ended request may still view it: then it is unmapped when that array goes.
            with contextlib.suppress(BufferError):
                region.mapping.close()

    def hold(self, name: str, what: str) -> Region:
        """The region a request reads or writes, counted as in use until `release`."""
        region = self.regions.get(name)
        if region is None:
            raise RequestError(_INVALID, f"{what}: no shared memory region {clipped(name)!r} is registered")
        region.users += 1
        return region

    @staticmethod
    def release(regions: list[Region]) -> None:
        for region in regions:
            region.users -= 1
