"""Profile documents on disk: JSON, or TOML when the name ends in .toml (same structure)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib

__all__ = ["load_profile_file", "write_profile_file"]


def write_profile_file(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Write the document as JSON, or TOML when the name ends in .toml."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_to_toml(doc) if path.suffix == ".toml" else json.dumps(doc, indent=1) + "\n")
    return path


def load_profile_file(path: str | Path) -> dict[str, Any]:
    """Read a profile written by write_profile_file (JSON or TOML by its suffix)."""
    path = Path(path)
    text = path.read_text()
    return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"TOML profile cannot hold {v}")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return "[" + ", ".join(_toml_value(x) for x in v) + "]"


def _to_toml(doc: Mapping[str, Any]) -> str:
    """The profile's shape only: scalars, then tables (machine, models.*), then arrays of tables."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, (Mapping, list))]
    for key in ("machine", "dispatch_gap_s"):
        if key in doc:
            lines += ["", f"[{key}]"] + [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in doc[key].items()]
    for name, info in doc["models"].items():
        lines += ["", f"[models.{json.dumps(name)}]"] + [f"{k} = {_toml_value(v)}" for k, v in info.items()]
    for key in ("devices", "entries"):
        for row in doc[key]:
            lines += ["", f"[[{key}]]"] + [f"{k} = {_toml_value(v)}" for k, v in row.items()]
    return "\n".join(lines) + "\n"
