"""The whole config document's schema, its JSON Schema for editors, and its validation errors
said as an operator reads the file: the file, the table, the key, and what was meant.

`config.toml: devices[0] ('cpu0'): unknown key 'cpu_afinity' (did you mean 'cpu_affinity'?)`
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any, get_args

from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import GenerateJsonSchema

from heddle.server.config.models import (
    LLM_KEYS_WHY,
    MODEL_TABLES,
    PYTHON_KEYS_WHY,
    ModelTable,
    PipelineTable,
    StageTable,
    model_tag,
)
from heddle.server.config.tables import (
    AdmissionTable,
    DeviceTable,
    OnnxDeviceTable,
    PowerTable,
    PythonDeviceTable,
    ServerTable,
    Table,
    TlsTable,
    TracingTable,
    TritonDeviceTable,
)

__all__ = ["ConfigError", "Document", "json_schema", "validate_document"]

DEVICE_TABLES: dict[str, type[Table]] = {
    "onnxruntime": OnnxDeviceTable, "python": PythonDeviceTable, "triton": TritonDeviceTable,
}
MAX_ERRORS = 30  # a file with many mistakes: the first few are enough to start fixing


class ConfigError(ValueError):
    """The configuration cannot be served; the message names the file and the item."""


class Document(Table):
    """A heddle config file (docs/CONFIG.md)."""

    server: ServerTable = ServerTable()
    admission: AdmissionTable = AdmissionTable()
    tracing: TracingTable = TracingTable()
    python_path: list[str] = Field(default_factory=list, description=(
        "folders (relative to the config file) where python stages' modules are found, before sys.path"))
    power: PowerTable | None = Field(None, description="a power budget (docs/POWER.md); absent: none")
    devices: list[DeviceTable] = Field(default_factory=list)
    models: list[ModelTable] = Field(default_factory=list)
    pipelines: list[PipelineTable] = Field(default_factory=list)


def validate_document(doc: Mapping[str, Any], source: str) -> Document:
    """The typed document; ConfigError with one line per mistake (the first MAX_ERRORS)."""
    try:
        return Document.model_validate(doc)
    except ValidationError as exc:
        lines = [f"{source}: {_say(doc, err)}" for err in exc.errors(include_url=False)[:MAX_ERRORS]]
        raise ConfigError("\n".join(lines)) from None


class _EditorSchema(GenerateJsonSchema):
    def literal_schema(self, schema):
        out = super().literal_schema(schema)
        if "const" in out:  # taplo reads draft 4, which has enum but not const (backend = "python")
            out["enum"] = [out["const"]]
        return out


def json_schema() -> str:
    """The JSON Schema of a config file, for editors (TOML language servers read JSON Schema)."""
    schema = Document.model_json_schema(schema_generator=_EditorSchema)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "heddle config"}
    return json.dumps(schema, indent=2, sort_keys=False)


def _say(doc: Mapping[str, Any], err: Mapping[str, Any]) -> str:
    where, table, path = _locate(doc, tuple(err["loc"]))
    # The key said in the message is the last named one with the array indices after it
    # (shape[0]); a named table's value says its table too ("unknown dvfs kind").
    cut = max((i for i, p in enumerate(path) if isinstance(p, str)), default=0)
    if err["type"] == "literal_error" and cut >= 1 and isinstance(path[cut - 1], str):
        cut -= 1
    prefix = ": ".join(p for p in (where, _path_text(path[:cut])) if p)
    text = _what(err, table, _path_text(path[cut:]))
    return f"{prefix}: {text}" if prefix else text


def _what(err: Mapping[str, Any], table: type[BaseModel] | None, key: str) -> str:
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        return f"unknown {'table' if table is Document else 'key'} {key!r}{_unknown_hint(table, key)}"
    if kind in ("missing", "union_tag_not_found"):
        missing = err.get("ctx", {}).get("discriminator", repr(key)).strip("'")
        return f"missing key {missing!r}"
    if kind == "union_tag_invalid":
        tags = [t.strip("'").removesuffix(" llm") for t in err["ctx"]["expected_tags"].split(", ")]
        return _unknown_value("backend", err["ctx"]["tag"], list(dict.fromkeys(tags)))
    if kind == "literal_error":
        known = [v.strip("'") for v in err["ctx"]["expected"].replace(" or ", ", ").split(", ")]
        return _unknown_value(key.replace(".", " "), value, known)
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    expected = _EXPECTED.get(kind)
    if expected:
        return f"{key} must be {expected}, got {value!r}"
    return f"{key} {str(err['msg']).removeprefix('Input ').replace('should', 'must', 1)}, got {value!r}"


_EXPECTED = {
    "bool_type": "true or false", "int_type": "an integer", "float_type": "a number", "string_type": "a string",
    "list_type": "an array", "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
    "finite_number": "a finite number", "int_parsing": "an integer", "float_parsing": "a number",
}


def _unknown_value(noun: str, value: Any, known: list[str]) -> str:
    close = difflib.get_close_matches(value, known, n=1) if isinstance(value, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {noun} {value!r}{hint}; known: {known}"


def _unknown_hint(table: type[BaseModel] | None, key: str) -> str:
    """Did you mean: the closest key of the table, else where the key belongs (another backend's
    table, an LLM's), else the keys the table has."""
    if table is None:
        return ""
    if table in (MODEL_TABLES["onnxruntime llm"], MODEL_TABLES["triton llm"]) and key in LLM_KEYS_WHY:
        return f": {LLM_KEYS_WHY[key]}"
    if table is MODEL_TABLES["python"] and key in PYTHON_KEYS_WHY:
        return f": {PYTHON_KEYS_WHY[key]}"
    close = difflib.get_close_matches(key, list(table.model_fields), n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    for family, noun in ((DEVICE_TABLES, "device"), (MODEL_TABLES, "model")):
        if table in family.values():
            this = next(tag for tag, cls in family.items() if cls is table)
            keys = {k for cls in family.values() for k in cls.model_fields}
            close = [] if key in keys else difflib.get_close_matches(key, sorted(keys), n=1)
            meant = close[0] if close else key
            owners = [_tag_text(tag) for tag, cls in family.items() if meant in cls.model_fields]
            if owners:
                meaning = f"did you mean {meant!r}? that is " if close else ""
                return f" ({meaning}a key of {' and '.join(owners)} {noun}s; this {noun} is {_tag_text(this)})"
    return f"; known: {sorted(table.model_fields)}"


def _tag_text(tag: str) -> str:
    return tag.replace(" llm", " LLM")


def _locate(doc: Mapping[str, Any], loc: tuple) -> tuple[str, type[BaseModel] | None, tuple]:
    """(how to name the table, its schema class, the key path inside it) for an error's location."""
    if len(loc) >= 2 and loc[0] in ("devices", "models", "pipelines") and isinstance(loc[1], int):
        return _locate_item(doc, loc[0], loc[1], loc[2:])
    if loc[:2] == ("server", "tls"):
        return "[server.tls]", *_walk(TlsTable, loc[2:])
    if loc and loc[0] in ("server", "admission", "power", "tracing"):
        return f"[{loc[0]}]", *_walk(Document.model_fields[loc[0]].annotation, loc[1:])
    return "", Document, loc


def _locate_item(doc: Mapping[str, Any], array: str, index: int, rest: tuple) -> tuple:
    items = doc.get(array)
    raw = items[index] if isinstance(items, list) and index < len(items) else {}
    raw = raw if isinstance(raw, dict) else {}
    if array == "pipelines":
        where = _named("pipeline", raw.get("name"), f"pipelines[{index}]")
        if len(rest) >= 2 and rest[0] == "stages" and isinstance(rest[1], int):
            stages = raw.get("stages")
            stage = stages[rest[1]] if isinstance(stages, list) and rest[1] < len(stages) else {}
            name = stage.get("name") if isinstance(stage, dict) else None
            return f"{where} {_named('stage', name, f'stages[{rest[1]}]')}", *_walk(StageTable, rest[2:])
        return where, *_walk(PipelineTable, rest)
    if array == "devices":
        dev_id = raw.get("id")
        where = f"devices[{index}]" + (f" ({dev_id!r})" if isinstance(dev_id, str) else "")
        tag, family = raw.get("backend"), DEVICE_TABLES
    else:
        where = _named("model", raw.get("name"), f"models[{index}]")
        tag, family = model_tag(raw), MODEL_TABLES
    if rest and rest[0] == tag and tag in family:
        return where, *_walk(family[tag], rest[1:])
    return where, None, rest


def _named(noun: str, name: Any, fallback: str) -> str:
    return f"{noun} {name!r}" if isinstance(name, str) and name else fallback


def _walk(table: Any, path: tuple) -> tuple[type[BaseModel] | None, tuple]:
    """The table class that holds the last key of path (through nested tables and arrays)."""
    current = _table_in(table)
    for key in path[:-1]:
        if isinstance(key, int) or current is None:
            continue
        field = current.model_fields.get(key)
        current = _table_in(field.annotation) if field is not None else None
    return current, path


def _table_in(tp: Any) -> type[BaseModel] | None:
    """The table class a field's type holds, through Optional, list and Annotated."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in get_args(tp):
        found = _table_in(arg)
        if found is not None:
            return found
    return None


def _path_text(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
