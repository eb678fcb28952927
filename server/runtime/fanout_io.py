"""The tensors of map stages (scheduler/fanout.py) in a running request: what an element run
takes (its elements of the list it maps over, joined on the first dim when map_batch > 1) and
where its outputs go (their places in the stage's gathered lists, in list order); and the flags a
conditional stage's `when` reads (scheduler/conditions.py).

A stage's tensors live in Job.tensors under (stage, output); a list is a Python list of arrays.
A map stage's gathered output is a list as long as the list it mapped over, filled as its element
runs end, whatever their order; an empty list makes no element runs and gathers to [].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from heddle.backends.base import BackendError
from heddle.scheduler.fanout import element_span
from heddle.scheduler.state import StageRun
from heddle.server.runtime.batch_run import split_outputs

if TYPE_CHECKING:
    from heddle.server.runtime.jobs import Job

__all__ = ["inputs_or_error", "list_shapes", "output_flags", "run_inputs", "store_outputs", "truthy"]

Array = NDArray[Any]


def _tensor(job: Job, stage: str | None, tensor: str) -> Any:
    found = job.tensors.get((stage, tensor))
    if found is None and stage in job.request.pipeline.maps:
        return []  # a map stage over an empty list ran no element run: its outputs gather to []
    return job.tensors[(stage, tensor)]


def _elements(job: Job, run: StageRun) -> tuple[Sequence[Array], Sequence[int]]:
    """The list the element run's stage maps over, and the positions in it this run takes: the
    run's span of the list, or of the list in its map_sort keys' order."""
    pipeline = job.request.pipeline
    mapped = pipeline.maps[run.stage]
    items: Sequence[Array] = _tensor(job, mapped.stage, mapped.tensor)
    lo, hi = element_span(len(items), pipeline.stage(run.stage).map_batch, run.element)
    sort = pipeline.map_sorts.get(run.stage)
    if sort is None:
        return items, range(lo, hi)
    keys = np.asarray(job.tensors[(sort.stage, sort.tensor)]).reshape(-1)
    if len(keys) != len(items):
        raise BackendError(f"stage {run.stage!r}: map_sort {sort.stage}.{sort.tensor} has {len(keys)} keys for "
                           f"{len(items)} elements of {mapped.stage}.{mapped.tensor}")
    return items, [int(i) for i in np.argsort(keys, kind="stable")[lo:hi]]


def run_inputs(job: Job, run: StageRun) -> dict[str, Any]:
    """The run's model inputs, by name. BackendError when the elements of a map_batch run cannot
    be joined (they differ past the first dim)."""
    wires = job.request.pipeline.wires[run.stage]
    inputs = {name: _tensor(job, w.stage, w.tensor) for name, w in wires.items()} if run.element < 0 else {}
    if run.element < 0:
        return inputs
    mapped = job.request.pipeline.maps[run.stage]
    items, positions = _elements(job, run)
    for name, w in wires.items():
        if w != mapped:
            inputs[name] = _tensor(job, w.stage, w.tensor)
        elif len(positions) == 1:
            inputs[name] = items[positions[0]]
        else:
            try:
                inputs[name] = np.concatenate([items[p] for p in positions], axis=0)
            except ValueError as exc:
                raise BackendError(f"stage {run.stage!r}: elements {list(positions)} of {w.stage}.{w.tensor} cannot "
                                   f"share a run (map_batch joins them on the first dim): {exc}") from None
    return inputs


def store_outputs(job: Job, run: StageRun, outputs: Mapping[str, Any]) -> None:
    """Keep a run's outputs for the stages after it: an element run's in its places of the
    stage's gathered lists. BackendError when a map_batch run's outputs do not keep its
    elements' rows on their first dim (they cannot be split back per element)."""
    if run.element < 0:
        for name, value in outputs.items():
            job.tensors[(run.stage, name)] = value
        return
    items, positions = _elements(job, run)
    if len(positions) == 1:
        parts: Sequence[Mapping[str, Array]] = [outputs]
    else:
        parts = split_outputs(outputs, [_rows(items[p]) for p in positions])
    for name in outputs:
        gathered = job.tensors.get((run.stage, name))
        if gathered is None:
            gathered = job.tensors[(run.stage, name)] = [None] * len(items)
        for i, part in zip(positions, parts, strict=True):
            gathered[i] = part[name]


def list_shapes(outputs: Mapping[str, Any]) -> dict[str, list[tuple[int, ...]]] | None:
    """The element shapes of a run's list outputs, which the core needs to fan out over them."""
    found = {name: [tuple(a.shape) for a in value] for name, value in outputs.items() if isinstance(value, list)}
    return found or None


def truthy(value: Any) -> bool:
    """What `when` takes for true: a non-empty list; a tensor with more than one element, or one
    element that is not zero / false / empty bytes. Empty is false."""
    if isinstance(value, list):
        return bool(value)
    array = np.asarray(value)
    return array.size > 1 or (array.size == 1 and bool(array.reshape(-1)[0]))


def output_flags(job: Job, run: StageRun, outputs: Mapping[str, Any]) -> dict[str, bool] | None:
    """The truth of the run's outputs that a `when` of its pipeline reads (a map stage's are its
    gathered lists', which the core knows)."""
    whens = job.request.pipeline.whens
    if not whens or run.element >= 0:
        return None
    read = {w.tensor for w in whens.values() if w.stage == run.stage}
    return {name: truthy(value) for name, value in outputs.items() if name in read} or None


def _rows(item: Array) -> int:
    return int(item.shape[0]) if item.ndim else 1



def inputs_or_error(job: Job, run: StageRun) -> tuple[dict[str, Any], BackendError | None]:
    """A dispatched run's inputs, or why they cannot be made (a map_batch run's elements that
    cannot be joined): the runtime ends such a run as failed, like any run's end."""
    try:
        return run_inputs(job, run), None
    except BackendError as exc:
        return {}, exc
