"""Pipeline DAG validation: turns a PipelineSpec into a checked, topologically ordered graph."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from heddle.scheduler.dag_lists import check_lists
from heddle.scheduler.specs import ModelSpec, PipelineSpec, StageSpec, TensorSpec, shapes_compatible

__all__ = ["Pipeline", "PipelineError", "Wire", "parse_source", "validate_pipeline"]

INPUT_PREFIX = "input:"


class PipelineError(ValueError):
    """A pipeline definition is invalid; the message names the pipeline, stage and tensor."""


@dataclass(frozen=True, slots=True)
class Wire:
    """Where a stage input comes from: a request input (stage is None) or a stage output."""

    stage: str | None
    tensor: str


def parse_source(source: str) -> Wire:
    """Parse "input:NAME" or "STAGE.OUTPUT"."""
    if source.startswith(INPUT_PREFIX):
        return Wire(None, source[len(INPUT_PREFIX):])
    stage, dot, tensor = source.partition(".")
    if not dot or not stage or not tensor:
        raise PipelineError(f"source {source!r} is neither 'input:NAME' nor 'STAGE.OUTPUT'")
    return Wire(stage, tensor)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A validated pipeline: stages in topological order with their wiring resolved."""

    name: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    output_wires: Mapping[str, Wire]
    stages: tuple[StageSpec, ...]
    wires: Mapping[str, Mapping[str, Wire]]  # stage -> model input -> source
    depends_on: Mapping[str, tuple[str, ...]]  # stage -> upstream stages
    dependents: Mapping[str, tuple[str, ...]]  # stage -> downstream stages
    maps: Mapping[str, Wire] = field(default_factory=dict)  # map stage -> the list it fans out over
    whens: Mapping[str, Wire] = field(default_factory=dict)  # conditional stage -> the output it runs on
    map_sorts: Mapping[str, Wire] = field(default_factory=dict)  # map stage -> its elements' sort keys
    optional_outputs: frozenset[str] = frozenset()  # left out of a response when their stage was skipped
    gathered_outputs: Mapping[str, tuple[str, float]] = field(default_factory=dict)  # a list made one tensor

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


def validate_pipeline(spec: PipelineSpec, models: Mapping[str, ModelSpec]) -> Pipeline:
    """Check a pipeline against the known models; raise PipelineError naming what is wrong."""
    where = f"pipeline {spec.name!r}"
    if not spec.stages:
        raise PipelineError(f"{where}: has no stages")
    stages = {}
    for stage in spec.stages:
        if stage.name in stages:
            raise PipelineError(f"{where}: stage name {stage.name!r} is used twice")
        if stage.model not in models:
            raise PipelineError(f"{where}, stage {stage.name!r}: unknown model {stage.model!r}")
        stages[stage.name] = stage
    inputs = {t.name: t for t in spec.inputs}
    wires = {s.name: _wire_stage(where, s, models[s.model], stages, models, inputs) for s in spec.stages}
    whens = {s.name: _stage_wire(where, s, "when", stages) for s in spec.stages if s.when}
    sorts = {s.name: _stage_wire(where, s, "map_sort", stages) for s in spec.stages if s.map_sort}
    depends_on = {  # a stage waits for the outputs its `when` and `map_sort` read, wired or not
        name: tuple(sorted({w.stage for w in (*ws.values(), *whens.get(name, ()), *sorts.get(name, ()))
                            if w.stage is not None}))
        for name, ws in wires.items()
    }
    order = _topological_order(where, [s.name for s in spec.stages], depends_on)
    outputs, output_wires = _resolve_outputs(where, spec, stages, models)
    dependents = {name: tuple(d for d in order if name in depends_on[d]) for name in order}
    try:
        maps = check_lists(where, spec, stages, models,
                           {s: {n: (w.stage, w.tensor) for n, w in ws.items()} for s, ws in wires.items()})
    except ValueError as exc:
        raise PipelineError(str(exc)) from None
    return Pipeline(
        name=spec.name,
        description=spec.description,
        inputs=spec.inputs,
        outputs=outputs,
        output_wires=output_wires,
        stages=tuple(stages[n] for n in order),
        wires=wires,
        depends_on=depends_on,
        dependents=dependents,
        maps={stage: Wire(*source) for stage, source in maps.items()},
        whens={stage: wire for stage, (wire,) in whens.items()},
        map_sorts={stage: wire for stage, (wire,) in sorts.items()},
        optional_outputs=_optional_outputs(where, spec, order, depends_on, whens, output_wires),
        gathered_outputs=dict(spec.gathered_outputs),
    )


def _stage_wire(where: str, stage: StageSpec, key: str, stages: Mapping[str, StageSpec]) -> tuple[Wire]:
    """The other stage's output a `when` or `map_sort` names."""
    source = getattr(stage, key)
    wire = parse_source(source) if not source.startswith(INPUT_PREFIX) else Wire(None, "")
    if wire.stage is None or wire.stage not in stages or wire.stage == stage.name:
        raise PipelineError(f"{where}, stage {stage.name!r}: {key} = {source!r} must name another stage's "
                            "output, 'STAGE.OUTPUT'")
    return (wire,)


def _optional_outputs(where: str, spec: PipelineSpec, order: list[str], depends_on: Mapping[str, tuple[str, ...]],
                      whens: Mapping[str, tuple[Wire]], output_wires: Mapping[str, Wire]) -> frozenset[str]:
    """The outputs declared optional; PipelineError for an output whose stage may be skipped (it,
    or a stage before it, has a `when`) that is not declared so."""
    may_skip: set[str] = set()
    for name in order:  # topological: every stage before `name` is decided
        if name in whens or any(d in may_skip for d in depends_on[name]):
            may_skip.add(name)
    optional = frozenset(spec.optional_outputs)
    for name, wire in output_wires.items():
        if wire.stage in may_skip and name not in optional:
            raise PipelineError(f"{where}, output {name!r}: stage {wire.stage!r} may be skipped (a `when` on it or "
                                "before it), so declare the output optional = true")
    unknown = sorted(optional - set(output_wires))
    if unknown:
        raise PipelineError(f"{where}: optional outputs {unknown} are not outputs of the pipeline")
    return optional


def _source_spec(where: str, wire: Wire, stages: Mapping[str, StageSpec], models: Mapping[str, ModelSpec],
                 inputs: Mapping[str, TensorSpec]) -> TensorSpec:
    if wire.stage is None:
        if wire.tensor not in inputs:
            raise PipelineError(f"{where}: no pipeline input named {wire.tensor!r}")
        return inputs[wire.tensor]
    if wire.stage not in stages:
        raise PipelineError(f"{where}: dangling wire to unknown stage {wire.stage!r}")
    model = models[stages[wire.stage].model]
    out = model.output(wire.tensor)
    if out is None:
        raise PipelineError(
            f"{where}: stage {wire.stage!r} (model {model.name!r}) has no output {wire.tensor!r}"
        )
    return out


def _wire_stage(where: str, stage: StageSpec, model: ModelSpec, stages: Mapping[str, StageSpec],
                models: Mapping[str, ModelSpec], inputs: Mapping[str, TensorSpec]) -> dict[str, Wire]:
    here = f"{where}, stage {stage.name!r}"
    for name in stage.inputs:
        if model.input(name) is None:
            raise PipelineError(f"{here}: model {model.name!r} has no input {name!r}")
    wires = {}
    for want in model.inputs:
        if want.name not in stage.inputs:
            raise PipelineError(f"{here}: input {want.name!r} of model {model.name!r} is not wired")
        try:
            wire = parse_source(stage.inputs[want.name])
        except PipelineError as exc:
            raise PipelineError(f"{here}, input {want.name!r}: {exc}") from None
        if wire.stage == stage.name:
            raise PipelineError(f"{here}: input {want.name!r} is wired to the stage itself")
        got = _source_spec(f"{here}, input {want.name!r}", wire, stages, models, inputs)
        if got.datatype != want.datatype:
            raise PipelineError(
                f"{here}, input {want.name!r}: datatype {got.datatype} from "
                f"{stage.inputs[want.name]!r} does not match the model's {want.datatype}"
            )
        if not shapes_compatible(got.shape, want.shape):
            raise PipelineError(
                f"{here}, input {want.name!r}: shape {list(got.shape)} from "
                f"{stage.inputs[want.name]!r} does not fit the model's {list(want.shape)}"
            )
        wires[want.name] = wire
    return wires


def _topological_order(where: str, names: list[str], depends_on: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Kahn's algorithm, keeping config order among peers so plans stay deterministic."""
    remaining = {n: set(depends_on[n]) for n in names}
    order: list[str] = []
    while remaining:
        ready = [n for n in names if n in remaining and not remaining[n]]
        if not ready:
            cycle = sorted(remaining)
            raise PipelineError(f"{where}: stages {cycle} form a cycle")
        for n in ready:
            order.append(n)
            del remaining[n]
        for deps in remaining.values():
            deps.difference_update(ready)
    return order


def _resolve_outputs(where: str, spec: PipelineSpec, stages: Mapping[str, StageSpec],
                     models: Mapping[str, ModelSpec]) -> tuple[tuple[TensorSpec, ...], dict[str, Wire]]:
    if not spec.outputs:
        raise PipelineError(f"{where}: declares no outputs")
    outputs: list[TensorSpec] = []
    wires: dict[str, Wire] = {}
    for name, source in spec.outputs.items():
        wire = parse_source(source)
        if wire.stage is None:
            raise PipelineError(f"{where}, output {name!r}: must come from a stage, not {source!r}")
        got = _source_spec(f"{where}, output {name!r}", wire, stages, models, {})
        shape = got.shape
        if name in spec.gathered_outputs:  # a list's elements joined on their first dim, or stacked on a new one
            shape = (-1, *got.shape[1:]) if spec.gathered_outputs[name][0] == "concat" else (-1, *got.shape)
        outputs.append(TensorSpec(name, got.datatype, shape))
        wires[name] = wire
    return tuple(outputs), wires
