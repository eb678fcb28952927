"""Which version of its models a request runs: a canary split's weighted pick among a pipeline's
variants (server/config/versions.py), or the versions the request pins."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

from heddle.scheduler import Pipeline
from heddle.server.config.load import Config

if TYPE_CHECKING:
    from heddle.server.runtime.metrics import Metrics

__all__ = ["VersionRouter"]


def _versions_run(pipeline: Pipeline) -> dict[str, str]:
    """name -> version of each versioned model (key NAME@VERSION) the pipeline's stages run."""
    out = {}
    for stage in pipeline.stages:
        name, sep, version = stage.model.partition("@")
        if sep:
            out[name] = version
    return out


class VersionRouter:
    """Picks a pipeline's variant per request. The generator is the router's own (seedable), so a
    split's shares hold over many requests without coordinating with anything else."""

    def __init__(self, config: Config, metrics: Metrics | None = None, rng: random.Random | None = None) -> None:
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.set_config(config)

    def set_config(self, config: Config) -> None:
        """At start and after a reload: the variants to pick from."""
        self.variants = dict(config.variants)

    def pick(self, pipeline: Pipeline, pins: Mapping[str, str] | None = None) -> Pipeline:
        """The variant this request runs; ValueError naming a pin that no variant satisfies."""
        candidates = self.variants.get(pipeline.name)
        if candidates is None and not pins:
            return pipeline  # nothing versioned splits here: the common case, no work
        candidates = candidates or ((pipeline, 1.0),)
        if pins:
            candidates = tuple((p, w) for p, w in candidates
                               if all(_versions_run(p).get(name) == version for name, version in pins.items()))
            if not candidates:
                raise ValueError(_no_such_pin(pipeline, pins, self.variants.get(pipeline.name)))
        chosen = self._draw(candidates)
        if self.metrics is not None:
            for name, version in _versions_run(chosen).items():
                self.metrics.observe_version(pipeline.name, f"{name}@{version}")
        return chosen

    def _draw(self, candidates: tuple[tuple[Pipeline, float], ...]) -> Pipeline:
        total = sum(w for _, w in candidates)
        if len(candidates) == 1 or total <= 0:  # pinned to versions given no share: the first fits
            return candidates[0][0]
        point = self.rng.random() * total
        for pipeline, weight in candidates:
            point -= weight
            if point < 0:
                return pipeline
        return candidates[-1][0]


def _no_such_pin(pipeline: Pipeline, pins: Mapping[str, str],
                 variants: tuple[tuple[Pipeline, float], ...] | None) -> str:
    offered: dict[str, set[str]] = {}
    for p, _ in variants or ((pipeline, 1.0),):
        for name, version in _versions_run(p).items():
            offered.setdefault(name, set()).add(version)
    wanted = ", ".join(f"{n}@{v}" for n, v in sorted(pins.items()))
    have = "; ".join(f"{n}: {sorted(v)}" for n, v in sorted(offered.items())) or "no versioned models"
    return f"pipeline {pipeline.name!r} cannot run {wanted}: its stages offer {have}"
