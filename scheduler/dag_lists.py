"""Which wires of a pipeline carry lists, checked at load: a python stage's list outputs and every
output of a map stage are lists; a list reaches a stage only as the input it maps over (one
element per run) or as an input declared a list (a gather stage); pipeline outputs are tensors."""

from __future__ import annotations

from collections.abc import Mapping

from heddle.scheduler.specs import ModelSpec, PipelineSpec, StageSpec

__all__ = ["check_lists"]


class _Lists:
    def __init__(self, where: str, stages: Mapping[str, StageSpec], models: Mapping[str, ModelSpec]) -> None:
        self.where, self.stages, self.models = where, stages, models

    def carries_list(self, stage: str | None, tensor: str) -> bool:
        if stage is None:
            return False
        spec = self.stages[stage]
        out = self.models[spec.model].output(tensor)
        return bool(spec.map) or (out is not None and out.is_list)


def check_lists(where: str, spec: PipelineSpec, stages: Mapping[str, StageSpec], models: Mapping[str, ModelSpec],
                wires: Mapping[str, Mapping[str, tuple[str | None, str]]]) -> dict[str, tuple[str, str]]:
    """Each map stage's source (stage -> (STAGE, OUTPUT)); PipelineError (from the caller's
    type, raised as ValueError here and re-said there) naming the stage and input that is wrong."""
    lists = _Lists(where, stages, models)
    maps: dict[str, tuple[str, str]] = {}
    for t in spec.inputs:
        if t.is_list:
            raise ValueError(f"{where}: input {t.name!r} cannot be a list (a request's inputs are tensors)")
    for stage in spec.stages:
        here = f"{where}, stage {stage.name!r}"
        model = models[stage.model]
        if stage.map_batch < 1:
            raise ValueError(f"{here}: map_batch must be >= 1, not {stage.map_batch}")
        for key in ("map_batch", "map_sort"):
            if getattr(stage, key) not in (1, "") and not stage.map:
                raise ValueError(f"{here}: {key} is for a map stage; give map = \"STAGE.OUTPUT\" too")
        for key in ("when", "map_sort"):  # the stage exists (dag.py); its output must too
            source, _, tensor = getattr(stage, key).partition(".")
            if source and models[stages[source].model].output(tensor) is None:
                raise ValueError(f"{here}: {key} = {getattr(stage, key)!r}: stage {source!r} has no output {tensor!r}")
        if stage.map_sort and lists.carries_list(*stage.map_sort.partition(".")[::2]):
            raise ValueError(f"{here}: map_sort = {stage.map_sort!r} is a list; give a tensor of one key per element")
        if stage.map and model.kind == "llm":  # its generation state is one per stage of a request
            raise ValueError(f"{here}: a map stage cannot run an LLM (model {model.name!r}); map a python or "
                             "ONNX stage over the list, or gather it for the LLM")
        mapped = _mapped_source(here, stage, wires[stage.name], lists) if stage.map else None
        if mapped is not None:
            maps[stage.name] = mapped
            listed = [o.name for o in model.outputs if o.is_list]
            if listed:
                raise ValueError(f"{here}: a map stage's outputs are lists already; model {model.name!r} "
                                 f"cannot also declare list outputs {listed}")
        for name, source in wires[stage.name].items():
            if source == mapped:
                if model.input(name).is_list:  # type: ignore[union-attr]  # wired inputs exist
                    raise ValueError(f"{here}, input {name!r}: it gets one element of {stage.map!r} per run, "
                                     "so it cannot be declared a list")
                continue
            _check_wire(here, name, source, model, lists)
    _check_outputs(where, spec, lists)
    return maps


def _check_outputs(where: str, spec: PipelineSpec, lists: _Lists) -> None:
    """A pipeline output from a list must say how it becomes one tensor; one from a tensor must not."""
    for name, output in spec.outputs.items():
        stage_name, _, tensor = output.partition(".")
        is_list = stage_name in lists.stages and lists.carries_list(stage_name, tensor)
        if is_list and name not in spec.gathered_outputs:
            raise ValueError(f"{where}, output {name!r}: {output!r} is a list; pipeline outputs are tensors, so "
                             "declare how to make it one ({ from, gather = \"concat\" or \"stack\", pad }) or "
                             "gather it in a python stage (an input declared list = true)")
        if not is_list and name in spec.gathered_outputs:
            raise ValueError(f"{where}, output {name!r}: {output!r} is a tensor already; gather is for a list")


def _mapped_source(here: str, stage: StageSpec, wires: Mapping[str, tuple[str | None, str]],
                   lists: _Lists) -> tuple[str, str]:
    source_stage, dot, tensor = stage.map.partition(".")
    if stage.map.startswith("input:") or not dot or source_stage not in lists.stages:
        raise ValueError(f"{here}: map = {stage.map!r} must name a stage's list output, 'STAGE.OUTPUT'")
    if not lists.carries_list(source_stage, tensor):
        raise ValueError(f"{here}: map = {stage.map!r} is not a list (a python stage's output declared "
                         "list = true, or a map stage's output)")
    if (source_stage, tensor) not in wires.values():
        raise ValueError(f"{here}: map = {stage.map!r} is wired to none of its inputs; wire the input that "
                         "takes one element per run to it")
    return source_stage, tensor


def _check_wire(here: str, name: str, source: tuple[str | None, str], model: ModelSpec, lists: _Lists) -> None:
    want = model.input(name)
    assert want is not None  # wired inputs are the model's
    got_list = lists.carries_list(*source)
    where = f"{source[0]}.{source[1]}" if source[0] is not None else f"input:{source[1]}"
    if got_list and not want.is_list:
        raise ValueError(f"{here}, input {name!r}: {where!r} is a list; map over it (map = {where!r}) or declare "
                         "the input list = true (a python stage that gathers it)")
    if want.is_list and not got_list:
        raise ValueError(f"{here}, input {name!r}: declared a list, but {where!r} is a tensor")
