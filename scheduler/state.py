"""Request and stage-run state: what the core tracks for every request it holds."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from heddle.scheduler.dag import Pipeline

__all__ = ["Outcome", "Request", "RunState", "StageRun", "device_of", "started_s_of"]


class RunState(enum.IntEnum):
    """Ordered so that `state >= RunState.DONE` means finished (vLLM's trick)."""

    WAITING = 0  # some input not produced yet
    READY = 1  # inputs present, sitting in a device queue
    # Held in its queue by the policy (twill) so more urgent work gets the device; not
    # started, so `state < RUNNING` still means "can be dropped without waiting for it".
    FROZEN = 2
    RUNNING = 3  # dispatched to a device
    # A map stage's own run once its element runs exist (scheduler/fanout.py): they carry it, and
    # it is DONE when the last of them is. Holds no device, and is not shed as unstarted.
    MAPPED = 4
    DONE = 10
    FAILED = 11
    CANCELLED = 12  # dropped before it started: request cancelled, failed or past deadline
    SKIPPED = 13  # its `when` was false, or a stage it needs was skipped: complete, never ran


class Outcome(enum.Enum):
    """How a request ended; the server maps each to a gRPC status code."""

    OK = "OK"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    REJECTED = "REJECTED"  # refused by admission (power, queue bound, load): RESOURCE_EXHAUSTED


@dataclass(slots=True, eq=False)
class StageRun:
    """One stage of one request, or one element run of a map stage (element >= 0: the stage's
    runs over its list, named "STAGE[i]"; scheduler/fanout.py)."""

    request: Request
    stage: str
    model: str
    index: int  # topological position: the last tie-breaker of every ordering
    deps_left: int
    state: RunState = RunState.WAITING
    device: str | None = None  # queue it sits in, then device it ran on
    ready_s: float | None = None
    started_s: float | None = None
    finished_s: float | None = None
    error: str = ""
    # Set when the run becomes ready: its share of the request deadline (budget.py).
    sub_deadline_s: float = math.inf
    latest_finish_s: float = math.inf  # past this, the request cannot finish on time
    level: int = 0  # DVFS level of the device it ran at, for profile updates
    attempts: int = 0  # dispatches lost to a device that went away (Core.retry_stage)
    # Dynamic batching (scheduler/batching.py), set when the run becomes ready for a model that
    # batches: its inputs' shapes past the first dim (runs share a pass only if these are equal;
    # None where the driver told no shape) and its rows (the first dim).
    signature: tuple[tuple[int, ...] | None, ...] = ()
    rows: int = 1
    # Rows of the pass it ran in, for the profile's batch axis; 0 for a batch member that rode
    # on another run's pass (that run reports the pass's time once).
    pass_rows: int = 1
    element: int = -1
    name: str = ""  # the run's own name: the stage's, or "STAGE[i]" for an element run

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.stage if self.element < 0 else f"{self.stage}[{self.element}]"

    @property
    def key(self) -> tuple[str, str]:
        return (self.request.id, self.name)


@dataclass(slots=True, eq=False)
class Request:
    """A pipeline request as the core sees it: no tensors, only identities and times."""

    id: str
    pipeline: Pipeline
    priority: int
    arrival_s: float
    deadline_s: float | None = None  # absolute, on the core's clock
    seq: int = 0  # arrival counter set by the core: total order among equal arrival times
    last_progress_s: float = 0.0  # arrival, then each stage completion (DREAM's fairness term)
    runs: dict[str, StageRun] = field(default_factory=dict)  # by run name (StageRun.name)
    # Shapes of the tensors known so far, keyed like the pipeline's wires: (None, input name)
    # for the request's inputs (given by the driver), (stage, output name) for stage outputs
    # (Core.on_stage_done). Only models that batch read them.
    shapes: dict[tuple[str | None, str], tuple[int, ...]] = field(default_factory=dict)
    # List outputs known so far, (stage, output name) -> each element's shape (None: not told):
    # how many element runs a map stage over one gets (scheduler/fanout.py).
    lists: dict[tuple[str, str], tuple[tuple[int, ...] | None, ...]] = field(default_factory=dict)
    # Whether outputs known so far are non-empty / true, (stage, output name) -> flag, as the
    # driver tells them: what a `when` reads (scheduler/conditions.py).
    flags: dict[tuple[str, str], bool] = field(default_factory=dict)
    outcome: Outcome | None = None
    error: str = ""
    finished_s: float | None = None

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    @property
    def deadline_missed(self) -> bool:
        return (
            self.deadline_s is not None
            and self.finished_s is not None
            and self.finished_s > self.deadline_s
        )


# Typed reads of what a run has once the core placed or started it: a run is placed on a device
# before any policy orders it, and started before anyone asks how long it has been running.
def device_of(run: StageRun) -> str:
    """The device a placed run (READY and after) is queued on or ran on."""
    assert run.device is not None, f"run {run.key} has no device: it was never placed"
    return run.device


def started_s_of(run: StageRun) -> float:
    """When a started run (RUNNING and after) was dispatched."""
    assert run.started_s is not None, f"run {run.key} has no start time: it never started"
    return run.started_s
