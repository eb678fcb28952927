"""Builds zoo models into a cache dir: content-addressed file names, atomic writes, reuse on rebuild."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import onnx

from heddle.backends.zoo.cnn import backbone, cnn, head_cls, head_emb
from heddle.backends.zoo.detector import detector
from heddle.backends.zoo.llm import llm
from heddle.backends.zoo.transformer import encoder, text_cls

__all__ = ["BUILDER_VERSION", "MODEL_NAMES", "build_default_models", "build_model", "model_sizes"]

# Bump when any builder's output changes for the same sizes, so caches rebuild.
BUILDER_VERSION = 1

_BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "cnn": cnn,
    "backbone": backbone,
    "head_cls": head_cls,
    "head_emb": head_emb,
    "detector": detector,
    "encoder": encoder,
    "text_cls": text_cls,
    "llm": llm,
}
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
# stdlib logging: backends do not import the server's structlog setup, which renders these records too.
log = logging.getLogger("heddle.zoo")


def model_sizes(name: str, **sizes: Any) -> dict[str, Any]:
    """Every size argument of a model, defaults filled in (TypeError for one it does not take)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown zoo model {name!r}; expected one of {list(MODEL_NAMES)}")
    bound = inspect.signature(_BUILDERS[name]).bind(**sizes)
    bound.apply_defaults()
    # Tuples and lists must hash alike: JSON round-trip makes both lists.
    return json.loads(json.dumps(bound.arguments))


def _file_name(name: str, sizes: Mapping[str, Any]) -> str:
    key = json.dumps({"name": name, "sizes": sizes, "version": BUILDER_VERSION}, sort_keys=True)
    return f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.onnx"


def _write_atomically(path: Path, data: bytes) -> None:
    # A reader (or a second builder) sees either no file or the whole file, never half of one.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_model(name: str, out_dir: str | Path, **sizes: Any) -> Path:
    """The path of zoo model `name` at these sizes in out_dir, building it only if it is not there."""
    full_sizes = model_sizes(name, **sizes)
    out_dir = Path(out_dir)
    path = out_dir / _file_name(name, full_sizes)
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    # Seconds per model on a small box: without this line a first start looks hung.
    log.info("building demo model %s into %s (first run only)", name, out_dir)
    _write_atomically(path, _BUILDERS[name](**full_sizes).SerializeToString())
    return path


def _linked(name: str, sizes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A model's sizes, with the dims it shares with its upstream model following that model."""
    own = dict(sizes.get(name, {}))
    if name in ("head_cls", "head_emb"):
        own.setdefault("features", model_sizes("backbone", **sizes.get("backbone", {}))["widths"][-1])
    if name == "text_cls":
        own.setdefault("hidden", model_sizes("encoder", **sizes.get("encoder", {}))["hidden"])
    return own


def build_default_models(cache_dir: str | Path,
                         sizes: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """Build (or reuse) every zoo model in cache_dir; `sizes` overrides per model name.

    Heads follow the trunk they sit on: head_cls/head_emb take the backbone's feature width and
    text_cls the encoder's hidden size, unless given explicitly.
    """
    sizes = dict(sizes or {})
    unknown = sorted(set(sizes) - set(MODEL_NAMES))
    if unknown:
        raise KeyError(f"sizes given for unknown zoo models {unknown}; expected names from {list(MODEL_NAMES)}")
    return {name: build_model(name, cache_dir, **_linked(name, sizes)) for name in MODEL_NAMES}
