"""Deadline-aware dynamic batching: which ready runs of one model share a pass on a device that
freed, and whether the device waits for more. Pure functions of the runs the core hands in;
the core starts what they choose (Core._form_batch).

A device waits for a fuller batch only while every rule below holds, else the batch goes now:
- it is not full (max_batch rows) and not of a preferred size;
- the model allows a wait (max_queue_delay_us > 0) and no member has waited that long since it
  became ready;
- the most urgent member's sub-deadline still covers the wait and a full batch's estimated pass
  (estimated at max_batch rows, the longest a pass may grow to while it waits, so whatever joins
  later the pass still ends by then);
- every ready run the device could take instead is of a lower priority than the batch's best
  member and within its aging bound: a device idles for a forming batch only when it has nothing
  as urgent to do, so the wait never holds a run of a higher priority (nor one of the same,
  which it could as well run while the batch forms).
Members are the lead (the policy's pick) and, in policy order, ready runs of the same model with
the same input shapes past the first dim: shapes never mix in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from heddle.scheduler.fanout import element_input_shape
from heddle.scheduler.specs import BatchOptions
from heddle.scheduler.state import StageRun

__all__ = ["BatchChoice", "Signature", "choose_batch", "shape_signature"]

# Per model input, in wiring order: (rank, dims past the first), or None where no shape is known.
Signature = tuple[tuple[int, ...] | None, ...]


@dataclass(frozen=True, slots=True)
class BatchChoice:
    """What a freed device does for a batching model: start `members` (lead first) as one pass
    of `rows` rows, or, with no members, wait until `wake_s` (or the next event) for more."""

    members: tuple[StageRun, ...]
    rows: int
    wake_s: float | None = None
    waits_with: tuple[StageRun, ...] = ()  # when waiting: the runs it would go with now


def shape_signature(run: StageRun) -> tuple[Signature, int]:
    """The run's input shapes as far as batching cares (ranks and dims past the first: runs
    share a pass only if these are equal) and its rows (the first dim of its first input)."""
    request = run.request
    mapped = request.pipeline.maps.get(run.stage) if run.element >= 0 else None
    shapes = [element_input_shape(run, w) if w == mapped else request.shapes.get((w.stage, w.tensor))
              for w in request.pipeline.wires[run.stage].values()]
    rows = next((s[0] for s in shapes if s), 1)
    return tuple(None if s is None else (len(s), *s[1:]) for s in shapes), rows


def choose_batch(lead: StageRun, alike: Sequence[StageRun], pool: Sequence[StageRun], options: BatchOptions,
                 blocked: Callable[[StageRun], bool], pass_s: float, now: float) -> BatchChoice:
    """Form the batch of `lead` from `alike` (the ready runs of its model and signature the
    device may take, in policy order, lead included); `pool`: every ready run it may take.
    `blocked(run)`: the run must not be held by a wait (aged). `pass_s`: the estimated pass of
    max_batch rows on this device."""
    members, rows = [lead], lead.rows
    for run in alike:
        if rows >= options.max_batch:
            break
        if run is not lead and rows + run.rows <= options.max_batch:
            members.append(run)
            rows += run.rows
    if rows < options.max_batch and rows not in options.preferred_batch_sizes:
        wake_s = _wait_until(members, options, pass_s, now)
        if wake_s is not None and not _holds_others(members, pool, blocked):
            return BatchChoice((), rows, wake_s, tuple(members))
    return _trimmed(members, rows, options)


def _wait_until(members: Sequence[StageRun], options: BatchOptions, pass_s: float, now: float) -> float | None:
    """Until when the members may wait for more (None: not at all)."""
    if options.max_queue_delay_s <= 0:
        return None
    oldest_s = min(now if m.ready_s is None else m.ready_s for m in members)
    urgent_s = min(m.sub_deadline_s for m in members)
    wake_s = min(oldest_s + options.max_queue_delay_s, urgent_s - pass_s)
    return wake_s if wake_s > now else None


def _holds_others(members: Sequence[StageRun], pool: Sequence[StageRun],
                  blocked: Callable[[StageRun], bool]) -> bool:
    """Would waiting hold a run that is not a member and is as urgent as the batch (a priority at
    least its best member's) or past its aging bound?"""
    top = max(m.request.priority for m in members)
    inside = {m.key for m in members}
    return any(r.key not in inside and (r.request.priority >= top or blocked(r)) for r in pool)


def _trimmed(members: list[StageRun], rows: int, options: BatchOptions) -> BatchChoice:
    """A batch going now without reaching a preferred size: cut to the largest preferred size it
    covers (as Triton does), the runs cut off staying queued for the next pass."""
    target = max((p for p in options.preferred_batch_sizes if p <= rows), default=None)
    if target is None or rows == target:
        return BatchChoice(tuple(members), rows)
    kept, kept_rows = [members[0]], members[0].rows
    for run in members[1:]:
        if kept_rows + run.rows <= target:
            kept.append(run)
            kept_rows += run.rows
    return BatchChoice(tuple(kept), kept_rows)
