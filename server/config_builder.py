"""Config documents as data: TOML text from a document, for configs that must be files (a
`heddle serve --config` process) or shown; every string escaped, so no value can break the file."""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

__all__ = ["to_toml", "toml_value"]

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
