"""Config documents as data: small functions that build the tables of a config (what TOML parses
to), for tests, benchmarks and the embedded default instead of TOML f-strings, and to_toml for the
configs that must be files (a `heddle serve --config` process); every string escaped on the way.

    doc = document(devices=[python_device()],
                   models=[python_model("tail", "stage_fns:tail", [tensor("x")], [tensor("y")])],
                   pipelines=[pipeline("p", [tensor("x")], {"y": "s0.y"}, [stage("s0", "tail", x="input:x")])])
    config = parse_document(doc, "<test>", base_dir)

Keyword arguments past the named ones are the table's other keys as they are (timeout_ms = 200,
power = {...}): the schema checks them when the document is parsed, so a misspelled one is said
there, as in a file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "document", "map_stage", "onnx_device", "onnx_model", "pipeline", "python_device", "python_model", "stage",
    "tensor", "to_toml", "toml_value", "triton_device", "triton_model",
]

Table = dict[str, Any]


def tensor(name: str, datatype: str = "FP32", shape: Sequence[int] = (-1,)) -> Table:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def python_device(id: str = "py0", *, slots: int = 1, **keys: Any) -> Table:
    return {"id": id, "backend": "python", "slots": slots, **keys}


def onnx_device(id: str = "cpu0", *, cores: Sequence[int] | None = None, slots: int = 1, **keys: Any) -> Table:
    """An ONNX Runtime device; `cores` pins it (cpu_affinity) with one intra-op thread per core."""
    pinned = {} if cores is None else {"intra_op_threads": len(cores), "cpu_affinity": list(cores)}
    return {"id": id, "backend": "onnxruntime", "slots": slots, **pinned, **keys}


def triton_device(id: str, url: str, *, slots: int = 1, **keys: Any) -> Table:
    return {"id": id, "kind": "remote", "backend": "triton", "url": url, "slots": slots, **keys}


def python_model(name: str, function: str, inputs: Iterable[Table], outputs: Iterable[Table], *,
                 devices: Sequence[str] = (), **keys: Any) -> Table:
    return {"name": name, "backend": "python", "function": function, **_devices(devices), **keys,
            "inputs": list(inputs), "outputs": list(outputs)}


def onnx_model(name: str, path: str, *, devices: Sequence[str] = (), **keys: Any) -> Table:
    """An ONNX model: a file (relative to the config's folder) or "builtin:NAME"."""
    return {"name": name, "path": path, **_devices(devices), **keys}


def triton_model(name: str, *, devices: Sequence[str] = (), **keys: Any) -> Table:
    return {"name": name, "backend": "triton", **_devices(devices), **keys}


def _devices(devices: Sequence[str]) -> Table:
    return {"devices": list(devices)} if devices else {}


def stage(name: str, model: str, **inputs: str) -> Table:
    """A pipeline stage; each keyword wires a model input from "input:NAME" or "STAGE.OUTPUT"."""
    return {"name": name, "model": model, "inputs": inputs}


def map_stage(name: str, model: str, over: str, *, map_batch: int = 1, **inputs: str) -> Table:
    """A map stage: runs once per map_batch elements of the list `over` ("STAGE.OUTPUT"), which one
    of its inputs must be wired to (docs/CONFIG.md, "Fan-out")."""
    table = {**stage(name, model, **inputs), "map": over}
    return table if map_batch == 1 else {**table, "map_batch": map_batch}


def pipeline(name: str, inputs: Iterable[Table], outputs: Mapping[str, str], stages: Iterable[Table],
             description: str = "") -> Table:
    table = {"name": name, "description": description, "inputs": list(inputs), "outputs": dict(outputs),
             "stages": list(stages)}
    return table if description else {k: v for k, v in table.items() if k != "description"}


def document(*, server: Mapping[str, Any] | None = None, admission: Mapping[str, Any] | None = None,
             power: Mapping[str, Any] | None = None, tracing: Mapping[str, Any] | None = None,
             devices: Iterable[Table] = (), models: Iterable[Table] = (), pipelines: Iterable[Table] = ()) -> Table:
    """A whole config; tables left None are left out (their defaults apply, and no [power] means none)."""
    tables = (("server", server), ("admission", admission), ("power", power), ("tracing", tracing))
    doc: Table = {k: dict(v) for k, v in tables if v is not None}
    return {**doc, "devices": list(devices), "models": list(models), "pipelines": list(pipelines)}

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def to_toml(doc: Mapping[str, Any]) -> str:
    """A document (tables, arrays of tables, values) as TOML that tomllib reads back equal;
    None values are left out (TOML has no null)."""
    lines = [f"{_key(k)} = {toml_value(v)}" for k, v in doc.items() if _is_value(v)]
    for key, value in doc.items():
        if isinstance(value, Mapping):
            lines += _table(_key(key), value)
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{_key(key)}]]"] + [f"{_key(k)} = {toml_value(v)}" for k, v in item.items()
                                                      if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(name: str, table: Mapping[str, Any]) -> list[str]:
    lines = ["", f"[{name}]"] + [f"{_key(k)} = {toml_value(v)}" for k, v in table.items()
                                 if v is not None and not isinstance(v, Mapping)]
    for key, value in table.items():
        if isinstance(value, Mapping):
            lines += _table(f"{name}.{_key(key)}", value)
    return lines


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _is_value(value: Any) -> bool:
    return value is not None and not isinstance(value, Mapping) and not _is_table_array(value)


def toml_value(value: Any) -> str:
    """One TOML value, inline: strings escaped, tables as { k = v }."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML value for {type(value).__name__} {value!r}")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    # TOML basic strings: quote, backslash and control characters (but tab) must be escaped.
    return '"' + "".join(
        _ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in text) + '"'
