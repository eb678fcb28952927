"""One LLM stage run's generation state (Generation), shared by the two LLM stage runners: local
steps (server/runtime/llm_runtime.py) and Triton streams (server/runtime/llm_triton.py), and what the stream
runner needs of the step runner's sequence bookkeeping (LlmSequences)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from numpy.typing import NDArray

from heddle.backends.llm import LlmSequence
from heddle.backends.tokenizer import StreamDecoder
from heddle.scheduler import Dispatch

if TYPE_CHECKING:
    from heddle.server.runtime.jobs import Job

__all__ = ["Generation", "LlmSequences"]


@dataclass(slots=True, eq=False)
class Generation:
    """One LLM stage run of one request, across its steps."""

    request_id: str
    stage: str
    priority: int
    arrival_s: float
    seq: LlmSequence
    decoder: StreamDecoder | None
    streaming: bool  # the client listens for tokens (decode text only then)
    device: str = ""
    first_start_s: float | None = None
    queue_s: float = 0.0  # ready to prefill dispatch
    first_token_s: float | None = None
    last_token_s: float | None = None
    compute_s: float = 0.0
    live: bool = True
    in_flight: bool = False  # dispatched, its step not reported yet
    emitted: int = 0  # tokens already handed to the client
    cancel: Callable[[], None] | None = None  # stops its Triton stream (Triton-hosted LLMs)


class LlmSequences(Protocol):
    """Sequence bookkeeping the Triton stream runner shares with the local LLM runner: opening,
    token emission, reporting, timings and freeing are the same for both."""

    def open_gen(self, d: Dispatch, job: Job, inputs: Mapping[str, NDArray[Any]],
                 check: Callable[[LlmSequence], None]) -> Generation: ...

    def emit(self, gen: Generation, now: float) -> None: ...

    def report(self, d: Dispatch, gen: Generation | None, error: BaseException | None, compute_s: float) -> None: ...

    def observe_finished(self, gen: Generation) -> None: ...

    def free(self, gen: Generation) -> None: ...

    def release(self, job: Job) -> None: ...
