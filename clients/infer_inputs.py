"""The inputs of `heddle infer` and of the load generator: arrays from `NAME=VALUE` arguments (a .npy
file or a JSON literal), random arrays for declared inputs not given, and `--gen` options.

Apart from infer_cli.py, which owns the command and its printing: `heddle bench`'s load
generator (clients/loadgen.py) builds its requests with generate_input too, and needs none of
the command's output code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from heddle.clients.client import GENERATION_OPTIONS
from heddle.clients.tensors import DATATYPE_TO_NUMPY, TensorError
from heddle.v1 import heddle_pb2

__all__ = ["build_inputs", "generate_input", "parse_generation", "parse_input"]

_BATCH_DIM, _OTHER_DIM = 1, 16  # what a dynamic (-1) dim becomes in generated inputs
_ID_HIGH = 100  # integer inputs are drawn from [0, 100): valid token ids / class ids for demo models


def build_inputs(specs: Sequence[str], declared: Mapping[str, heddle_pb2.TensorInfo],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Arrays from `NAME=VALUE` arguments, plus a generated array for each declared input not given."""
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        if not name or not _:
            raise ValueError(f"--input {spec!r}: expected NAME=FILE.npy or NAME=JSON_LITERAL")
        info = declared.get(name)
        inputs[name] = parse_input(name, value, info.datatype if info else None)
    for name, info in declared.items():
        if name not in inputs:
            inputs[name] = generate_input(info, rng)
    return inputs


def parse_input(name: str, value: str, datatype: str | None = None) -> np.ndarray:
    """A .npy file as saved, or a JSON literal converted to the declared datatype when known."""
    if value.endswith(".npy"):
        return np.load(Path(value), allow_pickle=False)
    try:
        literal = json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"--input {name}: {value!r} is neither a .npy path nor JSON ({err})") from None
    if datatype == "BYTES" or (datatype is None and _all_strings(literal)):
        return np.vectorize(lambda s: str(s).encode("utf-8"), otypes=[object])(literal)
    dtype = DATATYPE_TO_NUMPY.get(datatype) if datatype else None
    if datatype and dtype is None:
        raise TensorError(f"--input {name}: cannot build a {datatype} array here")
    return np.asarray(literal, dtype=dtype)


def parse_generation(specs: Sequence[str]) -> dict[str, Any] | None:
    """GenerationOptions fields from `KEY=VALUE` arguments (None when there are none)."""
    options: dict[str, Any] = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq or key not in GENERATION_OPTIONS:
            raise ValueError(f"--gen {spec!r}: expected KEY=VALUE with KEY one of {', '.join(GENERATION_OPTIONS)}")
        try:
            if key == "stop_token_ids":
                options[key] = [int(v) for v in value.split(",") if v.strip()]
            else:
                options[key] = float(value) if key in ("temperature", "top_p") else int(value)
        except ValueError:
            raise ValueError(f"--gen {spec!r}: {value!r} is not a number") from None
    return options or None


def _all_strings(literal: Any) -> bool:
    return isinstance(literal, str) or (isinstance(literal, list) and bool(literal)
                                        and all(_all_strings(x) for x in literal))


def generate_input(info: heddle_pb2.TensorInfo, rng: np.random.Generator) -> np.ndarray:
    """Random values for a declared input: dynamic dims become 1 (first) or 16; integers in [0, 100)."""
    shape = tuple((_BATCH_DIM if i == 0 else _OTHER_DIM) if d < 0 else d
                  for i, d in enumerate(info.shape))
    datatype = info.datatype
    if datatype == "BYTES":
        words = rng.integers(0, _ID_HIGH, size=shape)
        return np.vectorize(lambda i: f"w{i}".encode(), otypes=[object])(words).reshape(shape)
    dtype = DATATYPE_TO_NUMPY.get(datatype)
    if dtype is None:
        raise TensorError(f"input {info.name!r}: cannot generate datatype {datatype!r}")
    if datatype == "BOOL":
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        return rng.integers(0, _ID_HIGH, size=shape, dtype=dtype.newbyteorder("="))
    return rng.standard_normal(shape).astype(dtype)
