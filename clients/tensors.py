"""Conversion between numpy arrays and heddle.v1 Tensor messages (KServe v2 datatypes, raw bytes)."""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from heddle.v1 import heddle_pb2

__all__ = [
    "DATATYPE_TO_NUMPY",
    "MAX_DIMS",
    "MAX_ELEMENTS",
    "TensorError",
    "check_shape",
    "clipped",
    "expected_nbytes",
    "from_tensor",
    "numpy_to_datatype",
    "to_tensor",
]

try:  # numpy has no bfloat16; ml_dtypes (a dependency of onnx and jax) adds one when present.
    import ml_dtypes as _ml_dtypes

    _BF16: np.dtype | None = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    _BF16 = None


class TensorError(ValueError):
    """A tensor that cannot be encoded or decoded; the message names the tensor and what is wrong."""


# Explicit little-endian dtypes: the wire format is little-endian whatever the host is.
# BF16 is present only when ml_dtypes is importable; BYTES maps to object arrays of `bytes`.
DATATYPE_TO_NUMPY: Mapping[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
    **({"BF16": _BF16} if _BF16 is not None else {}),
}

# Fixed element sizes on the wire, known even when the numpy dtype is not (BF16 without ml_dtypes).
_ITEMSIZE: Mapping[str, int] = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2,
    "INT32": 4, "INT64": 8, "FP16": 2, "BF16": 2, "FP32": 4, "FP64": 8,
}
_KIND_SIZE_TO_DATATYPE: Mapping[tuple[str, int], str] = {
    ("b", 1): "BOOL",
    ("u", 1): "UINT8", ("u", 2): "UINT16", ("u", 4): "UINT32", ("u", 8): "UINT64",
    ("i", 1): "INT8", ("i", 2): "INT16", ("i", 4): "INT32", ("i", 8): "INT64",
    ("f", 2): "FP16", ("f", 4): "FP32", ("f", 8): "FP64",
}
_NUMPY_TO_DATATYPE: Mapping[np.dtype, str] = {v: k for k, v in DATATYPE_TO_NUMPY.items()}
_LEN = struct.Struct("<I")
# Bounds on a shape, checked before numpy sees it: numpy refuses (ValueError "array is too big")
# a shape whose non-zero dimensions multiply past its index range, even with a zero among them
# ([0, 2**63-1]), and a client can send 64 dimensions. ONNX models take at most 5 or 6 (video
# N,C,T,H,W); 8 leaves room. 2**32 elements is more than any message gRPC carries (2 GB) holds.
MAX_DIMS = 8
MAX_ELEMENTS = 2**32
_BIG_ENDIAN_HOST = sys.byteorder == "big"


def clipped(text: str, limit: int = 64) -> str:
    """A client-chosen string (a name, an id, a datatype) as error messages and logs show it: at
    most `limit` characters, then "…". A status message travels in gRPC metadata, whose limit
    (8 KB by default) a 16 KB pipeline name echoed whole exceeds; so every message that echoes a
    client's string goes through here."""
    return text if len(text) <= limit else text[:limit] + "…"


def numpy_to_datatype(dtype: Any) -> str:
    """The KServe datatype name for a numpy dtype; object, bytes and str dtypes are BYTES."""
    try:
        known = _NUMPY_TO_DATATYPE.get(dtype)  # the hot path: a table dtype, no dtype.name
    except TypeError:  # unhashable dtype specs (lists for structured dtypes)
        known = None
    if known is not None:
        return known
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    if dtype.name == "bfloat16":
        return "BF16"
    datatype = _KIND_SIZE_TO_DATATYPE.get((dtype.kind, dtype.itemsize))
    if datatype is None:
        raise TensorError(f"numpy dtype {dtype} has no KServe datatype")
    return datatype


def expected_nbytes(datatype: str, shape: Sequence[int]) -> int | None:
    """Byte length raw_data must have for a fixed-size datatype; None for BYTES (variable length).

    Raises TensorError for an unknown datatype or a shape check_shape refuses.
    """
    return _expected_nbytes("", datatype, shape)


def check_shape(name: str, shape: Sequence[int]) -> None:
    """TensorError (naming the tensor, without echoing a huge shape) for more than MAX_DIMS
    dimensions, a negative one, or non-zero dimensions that multiply past MAX_ELEMENTS."""
    where = f"tensor {clipped(name)!r}: " if name else ""
    if len(shape) > MAX_DIMS:
        raise TensorError(f"{where}shape has {len(shape)} dimensions; at most {MAX_DIMS} are allowed")
    if any(d < 0 for d in shape):
        raise TensorError(f"{where}shape {_fmt_shape(shape)} has a negative dimension")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:
        raise TensorError(f"{where}shape {_fmt_shape(shape)} is too large: its non-zero dimensions "
                          f"multiply past {MAX_ELEMENTS} elements")


def to_tensor(name: str, array: Any) -> heddle_pb2.Tensor:
    """Encode an array (or anything np.asarray takes) as a Tensor; the data is copied once, by tobytes."""
    arr = np.asarray(array)
    datatype = numpy_to_datatype(arr.dtype)
    if datatype == "BYTES":
        raw = _encode_bytes(name, arr)
    else:
        order = arr.dtype.byteorder
        if order == ">" or (order == "=" and _BIG_ENDIAN_HOST):  # the wire is little-endian
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        raw = arr.tobytes()
    return heddle_pb2.Tensor(name=name, datatype=datatype, shape=arr.shape, raw_data=raw)


def from_tensor(tensor: heddle_pb2.Tensor) -> np.ndarray:
    """Decode a Tensor into a read-only array viewing its raw bytes (no copy); BYTES gives an object array.

    Raises TensorError for an unknown datatype, a negative dimension, a raw byte length that does not
    match the shape, malformed BYTES, BOOL bytes other than 0/1, or BF16 without ml_dtypes installed.
    """
    name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
    nbytes = _expected_nbytes(name, datatype, shape)
    name = clipped(name)  # only error messages use it from here on
    raw = tensor.raw_data  # each attribute read copies out of the message, so read it once
    if nbytes is None:
        return _decode_bytes(name, raw, shape)
    if len(raw) != nbytes:
        raise TensorError(
            f"tensor {name!r}: raw_data has {len(raw)} bytes, "
            f"shape {_fmt_shape(shape)} {datatype} needs {nbytes}"
        )
    dtype = DATATYPE_TO_NUMPY.get(datatype)
    if dtype is None:  # BF16 without ml_dtypes: the size is known but numpy cannot hold it
        raise TensorError(f"tensor {name!r}: datatype BF16 needs the ml_dtypes package")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if datatype == "BOOL" and nbytes and arr.view(np.uint8).max() > 1:
        raise TensorError(f"tensor {name!r}: BOOL raw_data holds bytes other than 0 and 1")
    return arr


def _expected_nbytes(name: str, datatype: str, shape: Sequence[int]) -> int | None:
    itemsize = _ITEMSIZE.get(datatype)
    if itemsize is None and datatype != "BYTES":
        where = f"tensor {clipped(name)!r}: " if name else ""
        known = ", ".join([*_ITEMSIZE, "BYTES"])
        raise TensorError(f"{where}unknown datatype {clipped(datatype)!r} (expected one of {known})")
    check_shape(name, shape)
    return None if itemsize is None else math.prod(shape) * itemsize


def _fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _encode_bytes(name: str, arr: np.ndarray) -> bytes:
    """KServe raw BYTES: each element as a 4-byte little-endian length, then its bytes."""
    parts: list[bytes] = []
    for element in arr.flat:
        if isinstance(element, str):
            element = element.encode("utf-8")
        elif not isinstance(element, (bytes, bytearray, memoryview)):
            raise TensorError(
                f"tensor {name!r}: BYTES elements must be bytes or str, got {type(element).__name__}"
            )
        parts.append(_LEN.pack(len(element)))
        parts.append(bytes(element))
    return b"".join(parts)


def _decode_bytes(name: str, raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """KServe raw BYTES into an object array; `name` (clipped) is for messages."""
    count, size = math.prod(shape), len(raw)
    if count * _LEN.size > size:  # checked before allocating: a huge shape must not cost memory
        raise TensorError(
            f"tensor {name!r}: BYTES raw_data has {size} bytes, too few for the "
            f"{count} elements of shape {_fmt_shape(shape)} (4-byte length each)"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > size:
            raise TensorError(
                f"tensor {name!r}: BYTES raw_data ends inside the length of element {i} "
                f"(shape {_fmt_shape(shape)} needs {count} elements)"
            )
        (length,) = _LEN.unpack_from(raw, offset)
        offset += 4
        if offset + length > size:
            raise TensorError(
                f"tensor {name!r}: BYTES element {i} declares {length} bytes "
                f"but only {size - offset} remain"
            )
        out[i] = raw[offset:offset + length]
        offset += length
    if offset != size:
        raise TensorError(
            f"tensor {name!r}: BYTES raw_data has {size - offset} bytes left over "
            f"after {count} elements (shape {_fmt_shape(shape)})"
        )
    return out.reshape(shape)
