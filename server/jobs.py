"""What a request is while it runs (Job), what it streams (TokenUpdate) and what it ends as
(JobResult, StageTiming per stage)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from heddle.scheduler import Outcome, Request
from heddle.server.error_kind import ErrorKind

__all__ = ["Job", "JobResult", "StageTiming", "TokenUpdate"]


@dataclass(frozen=True, slots=True)
class TokenUpdate:
    """Tokens an LLM stage just produced; index is the first one's position in its output."""

    request_id: str
    stage: str
    token_ids: tuple[int, ...]
    index: int
    offset_s: float  # from the request's arrival
    text: str = ""


@dataclass(frozen=True, slots=True)
class StageTiming:
    """Where and how long one stage of a request ran; offsets are from the request's arrival."""

    stage: str
    model: str
    device: str
    status: str  # OK | FAILED | CANCELLED | SKIPPED
    queue_s: float
    compute_s: float
    start_offset_s: float
    end_offset_s: float
    error: str = ""
    # LLM stages: tokens generated, time from the request's arrival to the first, mean between them.
    tokens: int = 0
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    # Joules charged to this run (server/energy.py) and whether "measured" or "estimated".
    energy_j: float = 0.0
    energy_source: str = ""


@dataclass(frozen=True, slots=True)
class JobResult:
    request_id: str
    pipeline: str
    outcome: Outcome
    error: str
    error_kind: ErrorKind | None  # why, when the outcome is FAILED (server/status.py maps both)
    outputs: dict[str, np.ndarray]
    stages: tuple[StageTiming, ...]
    total_s: float
    priority: int
    deadline_missed: bool
    energy_j: float = 0.0  # sum over stages
    energy_source: str = ""  # measured | estimated | mixed | "" (nothing metered)
    retry_after_s: float | None = None  # refused at admission: when a retry may succeed


@dataclass(slots=True, eq=False)
class Job:
    """One request in flight: its tensors so far, the future its caller awaits, its callbacks."""

    request: Request
    tensors: dict[tuple[str | None, str], np.ndarray]
    done: asyncio.Future
    on_stage: Callable[[StageTiming], None] | None
    compute_s: dict[str, float] = field(default_factory=dict)
    error_kind: ErrorKind | None = None  # its first failed stage's kind
    generation: Mapping[str, object] | None = None  # GenerationConfig overrides for LLM stages
    on_token: Callable[[TokenUpdate], None] | None = None
    llm: dict = field(default_factory=dict)  # stage -> its Generation (server/llm_gen.py)
    energy: dict[str, tuple[float, str]] = field(default_factory=dict)  # stage -> (joules, source)
    retry_after_s: float | None = None
