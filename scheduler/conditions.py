"""Conditional stages: a stage with `when = "STAGE.OUTPUT"` runs only if that output is non-empty /
true (as its driver reported, or for a map stage's gathered list, its length); else it is SKIPPED,
takes no device, and so is every stage after it, which would lack its outputs. A skipped stage is
complete: a request whose remaining stages were all skipped ends OK, its optional outputs left out."""

from __future__ import annotations

from heddle.scheduler.state import RunState, StageRun

__all__ = ["may_run", "skip"]


def may_run(run: StageRun) -> bool:
    """Is the stage's `when` true (or has it none)? A flag not reported counts as true, so a
    driver that tells none (a simulator without a skip model) runs every stage."""
    request = run.request
    wire = request.pipeline.whens.get(run.stage)
    if wire is None or wire.stage is None:
        return True
    key = (wire.stage, wire.tensor)
    flag = request.flags.get(key)
    if flag is None and key in request.lists:
        return bool(request.lists[key])
    return flag is not False


def skip(run: StageRun, now: float) -> None:
    """Skip the stage's run and every waiting stage after it (their inputs will never exist)."""
    run.state, run.finished_s = RunState.SKIPPED, now
    request = run.request
    for name in request.pipeline.dependents[run.stage]:
        after = request.runs[name]
        if after.state is RunState.WAITING:
            skip(after, now)
