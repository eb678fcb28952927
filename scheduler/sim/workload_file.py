"""A simulated workload from a parsed TOML document: `heddle bench`'s scenario vocabulary ([[apps]]
with pipeline, priority, deadline_ms, arrival, rate_hz, jitter_ms, streams, max_new_tokens) over
pipelines written as in a serve config ([[pipelines]] of stages wired by `inputs`).

Pure: the caller reads and parses the file (server/tools/sim_files.py); every mistake is a
ValueError naming the file, the table and the field.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any

from heddle.scheduler.sim.workload import Periodic, PipelineDef, Poisson, Scenario, Source, StageDef, llm_pipeline

__all__ = ["DEFAULT_DURATION_S", "DEFAULT_LLM_TOKENS", "parse_workload"]

DEFAULT_DURATION_S = 20.0
DEFAULT_LLM_TOKENS = 16  # decode steps of an LLM app that does not say (max_new_tokens = 0)
_TOP = {"name", "description", "duration_s", "default_priority", "pipelines", "apps"}
_APP = {"name", "pipeline", "arrival", "priority", "deadline_ms", "deadline_factor", "rate_hz", "jitter_ms",
        "streams", "max_new_tokens"}
_SIMULATED = ("periodic", "poisson")
_NOT_SIMULATED = ("burst", "closed")


def _number(raw: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float | None:
    value = raw.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
        raise ValueError(f"{where}: {key} must be a number >= 0, got {value!r}")
    return None if value is None else float(value)


def _integer(raw: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where}: {key} must be an integer >= 0, got {value!r}")
    return value


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _unknown(raw: Mapping[str, Any], known: Collection[str], where: str) -> None:
    extra = sorted(set(raw) - set(known))
    if extra:
        raise ValueError(f"{where}: unknown key(s) {extra}; known: {sorted(known)}")


def _stage_after(stage: Mapping[str, Any], previous: str | None, names: set[str], where: str) -> tuple[str, ...]:
    """The stages this one waits for: from `inputs` ("stage.tensor"; "input:x" is the request), or
    `after`, else the stage before it (a chain)."""
    if "inputs" in stage:
        inputs = stage["inputs"]
        if not isinstance(inputs, Mapping):
            raise ValueError(f"{where}: inputs must be a table of tensor = \"stage.tensor\" or \"input:name\"")
        after = [str(v).split(".", 1)[0] for v in inputs.values() if not str(v).startswith("input:")]
    elif "after" in stage:
        after = list(stage["after"])
    else:
        after = [] if previous is None else [previous]
    missing = [a for a in after if a not in names]
    if missing:
        raise ValueError(f"{where}: waits for stage(s) {missing} that come later or do not exist "
                         f"(earlier stages: {sorted(names)})")
    return tuple(dict.fromkeys(after))


def _pipeline(raw: Any, models: Collection[str], where: str) -> PipelineDef | tuple[str, str]:
    """A DAG of stages, or (prefill, decode) for an LLM pipeline (its steps come from each app)."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a table")
    _unknown(raw, {"name", "stages", "prefill", "decode"}, where)
    name = _text(raw, "name", where)
    if "prefill" in raw or "decode" in raw:
        pair = (_text(raw, "prefill", where), _text(raw, "decode", where))
        _known_models(pair, models, where)
        return pair
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ValueError(f"{where}: needs stages = [{{ name, model }}, ...] (or prefill and decode for an LLM)")
    stages: list[StageDef] = []
    for i, stage in enumerate(stages_raw):
        at = f"{where} stages[{i}]"
        if not isinstance(stage, Mapping):
            raise ValueError(f"{at}: must be a table {{ name, model, inputs }}")
        _unknown(stage, {"name", "model", "inputs", "after", *_FAN_OUT}, at)
        model = _text(stage, "model", at)
        stage_name = str(stage.get("name", model))
        after = _stage_after(stage, stages[-1].name if stages else None, {s.name for s in stages}, at)
        stages.append(_fan_out(StageDef(stage_name, model, after), stage, {s.name for s in stages}, at))
    _known_models([s.model for s in stages], models, where)
    return PipelineDef(name, tuple(stages))


_FAN_OUT = ("map", "map_batch", "elements", "when", "run_rate")


def _fan_out(made: StageDef, stage: Mapping[str, Any], names: set[str], where: str) -> StageDef:
    """A stage's fan-out keys: map = "STAGE" (or "STAGE.OUTPUT") with map_batch and elements (the
    mean element count per request), when = "STAGE" with run_rate (the share of requests it runs
    for). The stages named must come before; a map stage's source joins its inputs."""
    fields: dict[str, Any] = {}
    for key, rate_key, field_name in (("map", "elements", "map_over"), ("when", "run_rate", "when")):
        if key not in stage:
            if rate_key in stage:
                raise ValueError(f"{where}: {rate_key} is for a stage with {key} = \"STAGE\"")
            continue
        source = _text(stage, key, where).split(".", 1)[0]
        if source not in names:
            raise ValueError(f"{where}: {key} = {source!r} names no earlier stage (earlier: {sorted(names)})")
        fields[field_name] = source
        if key == "map":  # the list it maps over is one of its inputs; a `when` only orders it
            fields["after"] = tuple(dict.fromkeys((*made.after, source)))
    fields["map_batch"] = _integer(stage, "map_batch", where, 1) or 1
    fields["elements"] = _number(stage, "elements", where, 1.0)
    run_rate = _number(stage, "run_rate", where, 1.0)
    if run_rate is not None and run_rate > 1:
        raise ValueError(f"{where}: run_rate is a share of requests, in [0, 1], got {run_rate}")
    fields["run_rate"] = run_rate
    return replace(made, **fields)


def _known_models(names: Collection[str], models: Collection[str], where: str) -> None:
    unknown = sorted(set(names) - set(models))
    if unknown:
        raise ValueError(f"{where}: model(s) {unknown} have no figures on the platform (it has {sorted(models)})")


def _deadlines(app: Mapping[str, Any], arrival: str, where: str) -> tuple[float | None, float | None]:
    deadline_ms = _number(app, "deadline_ms", where)
    factor = _number(app, "deadline_factor", where)
    if deadline_ms is not None and factor is not None:
        raise ValueError(f"{where}: give deadline_ms or deadline_factor, not both")
    if factor is not None and arrival != "poisson":
        raise ValueError(f"{where}: deadline_factor (x the isolated latency) is for poisson arrivals")
    if deadline_ms == 0 or factor == 0:
        raise ValueError(f"{where}: a deadline must be positive (omit it for none)")
    return (None if deadline_ms is None else deadline_ms / 1000), factor


def _sources(app: Mapping[str, Any], pipeline: PipelineDef, priority: int, where: str) -> list[Source]:
    """The app's arrival process: poisson, or periodic with `streams` cameras spread over a period."""
    name = _text(app, "name", where)
    arrival = str(app.get("arrival", "poisson"))
    if arrival in _NOT_SIMULATED:
        raise ValueError(f"{where}: arrival {arrival!r} is not simulated from a workload file (use one of "
                         f"{list(_SIMULATED)}; closed loops replay from a trace: --trace --closed)")
    if arrival not in _SIMULATED:
        raise ValueError(f"{where}: arrival {arrival!r} is not one of {list(_SIMULATED)}")
    rate_hz = _number(app, "rate_hz", where)
    if not rate_hz:
        raise ValueError(f"{where}: {arrival} arrivals need rate_hz > 0")
    deadline_s, factor = _deadlines(app, arrival, where)
    if arrival == "poisson":
        return [Poisson(name, pipeline, rate_hz, priority, deadline_s, factor)]
    if deadline_s is None:
        raise ValueError(f"{where}: periodic arrivals need deadline_ms (a frame is due before the next)")
    streams = max(1, _integer(app, "streams", where, 1))
    jitter_s = (_number(app, "jitter_ms", where, 0.0) or 0.0) / 1000
    return [Periodic(name if streams == 1 else f"{name}/{k}", pipeline, rate_hz, deadline_s, priority,
                     jitter_s, k / (streams * rate_hz)) for k in range(streams)]


def parse_workload(doc: Mapping[str, Any], models: Collection[str], where: str = "<workload>") -> Scenario:
    """A Scenario from a workload document; `models`: the models the platform has figures for
    (an app may name one directly as a one-stage pipeline)."""
    _unknown(doc, _TOP, where)
    pipelines: dict[str, PipelineDef | tuple[str, str]] = {}
    for i, raw in enumerate(doc.get("pipelines", []) or []):
        made = _pipeline(raw, models, f"{where}: pipelines[{i}]")
        pipelines[str(raw["name"])] = made
    default_priority = _integer(doc, "default_priority", where, 1) or 1
    apps = doc.get("apps")
    if not isinstance(apps, list) or not apps:
        raise ValueError(f"{where}: a workload needs at least one [[apps]] table")
    sources: list[Source] = []
    for i, app in enumerate(apps):
        at = f"{where}: apps[{i}]"
        if not isinstance(app, Mapping):
            raise ValueError(f"{at}: must be a table")
        _unknown(app, _APP, at)
        at = f"{at} ({app.get('name')!r})"
        name = _text(app, "pipeline", at)
        chosen = pipelines.get(name)
        if chosen is None:  # a model of the platform on its own
            if name not in models:
                raise ValueError(f"{at}: pipeline {name!r} is neither a [[pipelines]] table {sorted(pipelines)} "
                                 f"nor a model of the platform {sorted(models)}")
            chosen = PipelineDef(name, (StageDef(name, name),))
        if isinstance(chosen, tuple):
            steps = _integer(app, "max_new_tokens", at, 0) or DEFAULT_LLM_TOKENS
            chosen = llm_pipeline(f"{name}:{steps}", steps, *chosen)
        priority = _integer(app, "priority", at, 0) or default_priority
        sources.extend(_sources(app, chosen, priority, at))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: app names must be unique, got {names}")
    duration_s = _number(doc, "duration_s", where, DEFAULT_DURATION_S)
    if not duration_s:
        raise ValueError(f"{where}: duration_s must be > 0")
    return Scenario(str(doc.get("name", "workload")), str(doc.get("description", "")), tuple(sources), duration_s)
