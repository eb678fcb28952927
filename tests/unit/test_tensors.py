"""Tests for heddle.clients.tensors: numpy <-> heddle.v1 Tensor in the KServe raw encoding."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from heddle.clients import tensors
from heddle.clients.tensors import (
    DATATYPE_TO_NUMPY,
    MAX_DIMS,
    MAX_ELEMENTS,
    TensorError,
    check_shape,
    clipped,
    expected_nbytes,
    from_tensor,
    numpy_to_datatype,
    to_tensor,
)
from heddle.v1 import heddle_pb2

FIXED_DATATYPES = sorted(d for d in DATATYPE_TO_NUMPY if d != "BYTES")
SHAPES = [(), (0,), (5,), (2, 3), (3, 0, 2)]


def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(7)
    dtype = DATATYPE_TO_NUMPY[datatype]
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def _tensor(datatype: str, shape: list[int], raw: bytes, name: str = "x") -> heddle_pb2.Tensor:
    return heddle_pb2.Tensor(name=name, datatype=datatype, shape=shape, raw_data=raw)


class TestRoundTrip:
    @pytest.mark.parametrize("shape", SHAPES, ids=str)
    @pytest.mark.parametrize("datatype", FIXED_DATATYPES)
    def test_fixed_size_datatypes(self, datatype: str, shape: tuple[int, ...]) -> None:
        """Every fixed-size datatype survives encode/decode with its dtype, shape and values."""
        array = _sample(datatype, shape)
        tensor = to_tensor("t", array)
        assert (tensor.name, tensor.datatype, tuple(tensor.shape)) == ("t", datatype, shape)
        assert len(tensor.raw_data) == expected_nbytes(datatype, shape)
        back = from_tensor(tensor)
        assert back.dtype == array.dtype and back.shape == shape
        assert back.tobytes() == array.tobytes()

    @pytest.mark.parametrize("shape", SHAPES, ids=str)
    def test_bytes(self, shape: tuple[int, ...]) -> None:
        """BYTES arrays (including empty elements and non-ASCII) come back as object arrays of bytes."""
        values = [b"", b"a", "h\u00e9ddle".encode(), b"\x00\xff" * 10, b"z"]
        array = np.array([values[i % len(values)] for i in range(int(np.prod(shape)))],
                         dtype=object).reshape(shape)
        back = from_tensor(to_tensor("s", array))
        assert back.dtype == object and back.shape == shape
        assert back.tolist() == array.tolist()

    def test_str_arrays_encode_as_utf8_bytes(self) -> None:
        """A numpy str array is sent as BYTES holding UTF-8."""
        back = from_tensor(to_tensor("s", np.array(["h\u00e9", "x"])))
        assert back.tolist() == ["h\u00e9".encode(), b"x"]

    def test_bf16_uses_ml_dtypes(self) -> None:
        """BF16 round-trips through ml_dtypes.bfloat16 when it is installed."""
        ml_dtypes = pytest.importorskip("ml_dtypes")
        array = np.array([1.0, -2.5, 0.125], dtype=ml_dtypes.bfloat16)
        tensor = to_tensor("b", array)
        assert tensor.datatype == "BF16" and len(tensor.raw_data) == 6
        back = from_tensor(tensor)
        assert back.dtype == array.dtype and back.tolist() == array.tolist()

    @given(hnp.arrays(
        dtype=st.sampled_from([DATATYPE_TO_NUMPY[d] for d in FIXED_DATATYPES if d != "BF16"]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    ))
    def test_any_array_round_trips_bit_exact(self, array: np.ndarray) -> None:
        """Any array of a numpy-native datatype decodes to the same bytes, dtype and shape."""
        back = from_tensor(to_tensor("h", array))
        assert back.dtype == array.dtype and back.shape == array.shape
        assert back.tobytes() == array.tobytes()


class TestWireFormat:
    def test_little_endian_whatever_the_input_order(self) -> None:
        """Big-endian input is sent as little-endian bytes and decodes to the same values."""
        array = np.array([1, 256], dtype=">i4")
        tensor = to_tensor("x", array)
        assert tensor.raw_data == struct.pack("<2i", 1, 256)
        assert from_tensor(tensor).tolist() == [1, 256]

    def test_bool_is_one_byte_per_element(self) -> None:
        """BOOL elements are single 0/1 bytes."""
        assert to_tensor("b", np.array([True, False, True])).raw_data == b"\x01\x00\x01"

    def test_bytes_elements_carry_a_4_byte_length(self) -> None:
        """BYTES raw data is a little-endian uint32 length before each element."""
        raw = to_tensor("s", np.array([b"ab", b""], dtype=object)).raw_data
        assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"

    def test_decode_views_the_message_bytes(self) -> None:
        """Decoding a numeric tensor does not copy: the array is a read-only view of raw_data."""
        back = from_tensor(to_tensor("x", np.arange(1000, dtype=np.float32)))
        assert not back.flags.owndata and not back.flags.writeable


class TestDatatypeMapping:
    @pytest.mark.parametrize("datatype", FIXED_DATATYPES)
    def test_numpy_to_datatype_inverts_the_table(self, datatype: str) -> None:
        """numpy_to_datatype maps each table dtype back to its KServe name."""
        assert numpy_to_datatype(DATATYPE_TO_NUMPY[datatype]) == datatype

    @pytest.mark.parametrize("dtype", [object, "S3", "U2"])
    def test_string_like_dtypes_are_bytes(self, dtype: object) -> None:
        """Object, bytes and str dtypes are BYTES."""
        assert numpy_to_datatype(dtype) == "BYTES"

    @pytest.mark.parametrize("dtype", [np.complex64, "datetime64[s]", "V4", [("a", "<f4")]])
    def test_unsupported_dtypes_raise(self, dtype: object) -> None:
        """Dtypes with no KServe datatype raise TensorError naming the dtype."""
        with pytest.raises(TensorError, match="has no KServe datatype"):
            numpy_to_datatype(dtype)

    def test_expected_nbytes(self) -> None:
        """Fixed-size datatypes need prod(shape) x itemsize bytes; BYTES has no fixed size."""
        assert expected_nbytes("FP32", [2, 3]) == 24
        assert expected_nbytes("BOOL", []) == 1
        assert expected_nbytes("INT64", [4, 0]) == 0
        assert expected_nbytes("BF16", [3]) == 6
        assert expected_nbytes("BYTES", [3]) is None

    def test_expected_nbytes_rejects_bad_input(self) -> None:
        """An unknown datatype or a negative dimension raises TensorError."""
        with pytest.raises(TensorError, match="unknown datatype 'FP8'"):
            expected_nbytes("FP8", [1])
        with pytest.raises(TensorError, match=r"shape \[2,-1\] has a negative dimension"):
            expected_nbytes("FP32", [2, -1])


class TestErrors:
    def test_wrong_byte_length_says_what_was_needed(self) -> None:
        """A raw_data length that does not match the shape names the tensor and both sizes."""
        with pytest.raises(TensorError) as err:
            from_tensor(_tensor("FP32", [2, 3], b"\x00" * 12))
        assert str(err.value) == "tensor 'x': raw_data has 12 bytes, shape [2,3] FP32 needs 24"

    def test_unknown_datatype(self) -> None:
        """An unknown datatype names the tensor and the datatype."""
        with pytest.raises(TensorError, match=r"tensor 'x': unknown datatype 'FLOAT'"):
            from_tensor(_tensor("FLOAT", [1], b"\x00" * 4))

    def test_negative_dimension(self) -> None:
        """A negative dimension names the tensor and its shape."""
        with pytest.raises(TensorError, match=r"tensor 'x': shape \[-1,4\] has a negative"):
            from_tensor(_tensor("FP32", [-1, 4], b""))

    @pytest.mark.parametrize(("shape", "message"), [
        ([0, 2**63 - 1], "is too large: its non-zero dimensions multiply past 4294967296"),
        ([2**16, 2**16, 2], "is too large"),
        ([1] * 64, "shape has 64 dimensions; at most 8"),
        ([1] * 100_000, "shape has 100000 dimensions; at most 8"),
    ])
    def test_absurd_shape(self, shape: list[int], message: str) -> None:
        """A shape numpy could not hold, or with too many dimensions, raises TensorError before numpy
        sees it, naming the tensor and never echoing a huge shape."""
        for datatype in ("FP32", "BYTES"):
            with pytest.raises(TensorError, match=f"tensor 'x': .*{message}") as err:
                from_tensor(_tensor(datatype, shape, b""))
            assert len(str(err.value)) < 300

    def test_shape_limits_are_inclusive(self) -> None:
        """MAX_DIMS dimensions and MAX_ELEMENTS elements are still accepted by check_shape."""
        check_shape("x", [1] * MAX_DIMS)
        check_shape("x", [MAX_ELEMENTS, 0, 1])

    def test_long_names_are_clipped_in_messages(self) -> None:
        """A 16 KB tensor name or datatype shows as its first 64 characters and an ellipsis."""
        assert clipped("abc") == "abc" and clipped("a" * 65) == "a" * 64 + "…"
        with pytest.raises(TensorError) as err:
            from_tensor(_tensor("F" * 16384, [1], b"", name="n" * 16384))
        assert "n" * 64 + "…" in str(err.value) and "F" * 64 + "…" in str(err.value)
        assert len(str(err.value)) < 400

    def test_bool_bytes_other_than_0_and_1(self) -> None:
        """BOOL raw data may hold only 0 and 1."""
        with pytest.raises(TensorError, match="tensor 'x': BOOL raw_data holds bytes other than"):
            from_tensor(_tensor("BOOL", [2], b"\x01\x02"))

    @pytest.mark.parametrize(("raw", "shape", "message"), [
        (b"\x02\x00", [1], "has 2 bytes, too few for the 1 elements"),
        (b"\x05\x00\x00\x00abc", [1], "element 0 declares 5 bytes but only 3 remain"),
        (b"\x01\x00\x00\x00abcd", [2], "ends inside the length of element 1"),
        (b"\x00" * 8, [2**16, 2**15], "too few for the 2147483648 elements"),
        (b"\x01\x00\x00\x00ab", [1], "1 bytes left over after 1 elements"),
        (b"\x00\x00\x00\x00", [0], "4 bytes left over after 0 elements"),
    ])
    def test_malformed_bytes(self, raw: bytes, shape: list[int], message: str) -> None:
        """Truncated, overrunning or over-long BYTES raw data raises TensorError naming the tensor."""
        with pytest.raises(TensorError, match=f"tensor 'x': BYTES .*{message}"):
            from_tensor(_tensor("BYTES", shape, raw))

    def test_bytes_elements_must_be_bytes_or_str(self) -> None:
        """Encoding an object array holding a non-string raises TensorError naming the tensor."""
        with pytest.raises(TensorError, match="tensor 'o': BYTES elements must be bytes or str, got int"):
            to_tensor("o", np.array([b"a", 3], dtype=object))

    def test_bf16_without_ml_dtypes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without ml_dtypes, a well-formed BF16 tensor raises TensorError saying what is missing."""
        monkeypatch.delitem(tensors.DATATYPE_TO_NUMPY, "BF16", raising=False)
        with pytest.raises(TensorError, match="tensor 'x': datatype BF16 needs the ml_dtypes"):
            from_tensor(_tensor("BF16", [2], b"\x00" * 4))
