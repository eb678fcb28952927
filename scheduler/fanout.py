"""Map stages: a stage with `map = "STAGE.OUTPUT"` fans out over a list, one element run per
`map_batch` elements, each its own schedulable run; the stage is done when the last one is.

The core keeps one StageRun per pipeline stage under the stage's name, as for every stage; a map
stage's own run stands for the whole stage (dependants wait on it, timings report it) and, once
its inputs exist, is MAPPED while element runs named "STAGE[i]" do the work. Element run i takes
elements [i * map_batch, (i + 1) * map_batch) of the list; an empty list makes no element runs and
the stage is done at once. Pure functions of the runs the core hands in.
"""

from __future__ import annotations

from heddle.scheduler.dag import Wire
from heddle.scheduler.state import Request, RunState, StageRun

__all__ = ["element_count", "element_done", "element_input_shape", "element_span", "expand", "is_map_group",
           "run_count"]

Shape = tuple[int, ...]


def is_map_group(run: StageRun) -> bool:
    """Is this a map stage's own run (whose element runs do its work)?"""
    return run.element < 0 and run.stage in run.request.pipeline.maps


def run_count(elements: int, map_batch: int) -> int:
    """Element runs over a list of `elements`: one per map_batch of them (the last may be short)."""
    return -(-elements // map_batch)


def element_span(length: int, map_batch: int, element: int) -> tuple[int, int]:
    """The list positions [lo, hi) element run `element` takes."""
    lo = element * map_batch
    return lo, min(length, lo + map_batch)


def _list_shapes(request: Request, wire: Wire) -> tuple[Shape | None, ...]:
    assert wire.stage is not None  # a map source is a stage's output (scheduler/dag_lists.py)
    shapes = request.lists.get((wire.stage, wire.tensor))
    if shapes is None:
        raise ValueError(f"request {request.id!r}: stage {wire.stage!r} ended without the length of its "
                         f"list output {wire.tensor!r}, which a map stage fans out over")
    return shapes


def element_count(group: StageRun) -> int:
    """How many elements the list a map stage maps over has (known once its producer ended)."""
    return len(_list_shapes(group.request, group.request.pipeline.maps[group.stage]))


def expand(group: StageRun, now: float) -> list[StageRun]:
    """The element runs of a map stage whose inputs all exist, added to its request (ready to be
    queued by the core); the stage's own run is MAPPED until they are done (DONE at once when
    the list is empty)."""
    request = group.request
    stage = request.pipeline.stage(group.stage)
    count = run_count(len(_list_shapes(request, request.pipeline.maps[group.stage])), stage.map_batch)
    runs = [StageRun(request, group.stage, group.model, group.index, 0, element=i) for i in range(count)]
    for run in runs:
        request.runs[run.name] = run
    group.ready_s = now
    group.deps_left = count  # now: element runs still to finish
    group.state = RunState.MAPPED
    if not runs:
        group.started_s = group.finished_s = now
        group.state = RunState.DONE
        _gather(group)
    return runs


def element_done(run: StageRun, now: float) -> StageRun | None:
    """An element run is DONE: its map stage's own run, when that was the last (then DONE too,
    its outputs' list lengths known to the stages after it), else None."""
    group = run.request.runs[run.stage]
    group.deps_left -= 1
    if group.started_s is None or (run.started_s is not None and run.started_s < group.started_s):
        group.started_s = run.started_s
    if group.deps_left:
        return None
    group.state, group.finished_s = RunState.DONE, now
    _gather(group)
    return group


def _gather(group: StageRun) -> None:
    """The map stage's outputs are lists as long as the list it mapped over: record those a later
    map stage fans out over, so it knows its element count. Element shapes are known for
    map_batch 1 (each run's output is one element, its shape reported with its end)."""
    request = group.request
    pipeline = request.pipeline
    length = len(_list_shapes(request, pipeline.maps[group.stage]))
    single = pipeline.stage(group.stage).map_batch == 1
    for wire in (*pipeline.maps.values(), *pipeline.whens.values()):
        if wire.stage == group.stage:
            request.lists[(group.stage, wire.tensor)] = tuple(
                request.shapes.get((f"{group.stage}[{i}]", wire.tensor)) if single else None for i in range(length))


def element_input_shape(run: StageRun, wire: Wire) -> Shape | None:
    """The shape an element run's mapped input has (its elements joined on the first dim), for
    batch signatures; None where an element's shape was not told or they differ past the first dim."""
    if run.stage in run.request.pipeline.map_sorts:
        return None  # its elements go by keys the core does not see: no signature to batch on
    listed = _list_shapes(run.request, wire)
    lo, hi = element_span(len(listed), run.request.pipeline.stage(run.stage).map_batch, run.element)
    shapes = [s for s in listed[lo:hi] if s]
    if len(shapes) != hi - lo or not shapes or any(s[1:] != shapes[0][1:] for s in shapes):
        return None
    return (sum(s[0] for s in shapes), *shapes[0][1:])
