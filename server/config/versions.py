"""Model versions and canary splits in the config: several [[models]] tables may share a `name` with
different `version`s; a stage names one (`model = "cnn@2"`) or the name alone, which splits its
requests among the versions by their `weight`s (default: all to the highest version).

A versioned model is served under the key NAME@VERSION (its ModelSpec's name: stage timings,
metrics and traces say which version ran). A pipeline whose stages split is expanded into one
variant pipeline per combination of versions, each validated as any pipeline, with the share of
requests it gets; the runtime picks one per request (server/runtime/versions.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from heddle.scheduler.specs import PipelineSpec

__all__ = ["MAX_VARIANTS", "VersionSet", "expand_pipeline", "model_key", "version_sets"]

MAX_VARIANTS = 64  # combinations of split stages in one pipeline: past this, pin some versions


def model_key(name: str, version: str | None) -> str:
    return name if version is None else f"{name}@{version}"


def _order(version: str) -> tuple[int, int | str]:
    """Numeric versions by value and before others ("10" after "9"), the rest by text."""
    return (0, int(version)) if re.fullmatch(r"\d+", version) else (1, version)


@dataclass(frozen=True, slots=True)
class VersionSet:
    """The versions of one model name: their keys (NAME@VERSION) and shares of unpinned requests."""

    name: str
    keys: tuple[str, ...]
    weights: tuple[float, ...]  # normalised to sum 1; 0 = only requests that pin it


def version_sets(tables: Sequence[tuple[str, str | None, float | None]]) -> dict[str, VersionSet]:
    """(name, version, weight) per [[models]] table -> a VersionSet per versioned name; ValueError
    for a name both versioned and not, a version given twice, or weights that sum to 0."""
    by_name: dict[str, list[tuple[str, float | None]]] = {}
    plain = set()
    for name, version, weight in tables:
        if version is None:
            plain.add(name)
            if weight is not None:
                raise ValueError(f"model {name!r}: weight is for versioned models (give it a version)")
            continue
        if any(v == version for v, _ in by_name.get(name, [])):
            raise ValueError(f"model {name!r} version {version!r} is given twice")
        by_name.setdefault(name, []).append((version, weight))
    sets = {}
    for name, versions in by_name.items():
        if name in plain:
            raise ValueError(f"model {name!r} has tables with and without a version: give each a version")
        versions.sort(key=lambda vw: _order(vw[0]))
        if all(w is None for _, w in versions):  # the highest version takes every unpinned request
            weights = [0.0] * (len(versions) - 1) + [1.0]
        else:
            weights = [w or 0.0 for _, w in versions]
        total = sum(weights)
        if total <= 0:
            raise ValueError(f"model {name!r}: the weights of its versions sum to 0")
        sets[name] = VersionSet(name, tuple(model_key(name, v) for v, _ in versions),
                                tuple(w / total for w in weights))
    return sets


def expand_pipeline(spec: PipelineSpec, sets: Mapping[str, VersionSet]) -> list[tuple[PipelineSpec, float]]:
    """The pipeline's variants with their shares: one per combination of versions of the stages
    that name a versioned model without a version; the pipeline itself (share 1) when none does.
    Variants with share 0 are kept: a request may pin their versions."""
    split = [i for i, s in enumerate(spec.stages) if s.model in sets]
    if not split:
        return [(spec, 1.0)]
    choices = [list(zip(sets[spec.stages[i].model].keys, sets[spec.stages[i].model].weights, strict=True))
               for i in split]
    count = 1
    for c in choices:
        count *= len(c)
    if count > MAX_VARIANTS:
        raise ValueError(f"pipeline {spec.name!r}: its stages' versions make {count} combinations "
                         f"(at most {MAX_VARIANTS}); pin some stages to a version (model = \"NAME@VERSION\")")
    variants = []
    for combo in itertools.product(*choices):
        stages = list(spec.stages)
        share = 1.0
        for i, (key, weight) in zip(split, combo, strict=True):
            stages[i] = dataclasses.replace(stages[i], model=key)
            share *= weight
        variants.append((dataclasses.replace(spec, stages=tuple(stages)), share))
    return variants
