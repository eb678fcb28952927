"""Python stage functions that end-to-end test configs load by "stage_fns:NAME", and their controls.

Every function takes x (FP32 [N]) and returns {"y": x}; its tag is int(x[0]), so a test can tell
requests apart. Stages run in the server's worker threads: an in-process server shares this
module with the test, which records calls and opens gates here. `reset()` before each test.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np

__all__ = [
    "HANG_S", "WAIT_LIMIT_S", "barrier_branch", "boom", "burn_cpu", "by_width", "calls", "crash", "gate",
    "gather_rows", "hang", "join2", "nap_then_pid", "open_gate", "ragged_rows_of", "reset", "rows_as_array", "rows_of",
    "sleep_50ms", "SAME_CALLS", "same", "stall_on_1", "tagged", "tail", "wait_for_call", "wait_for_file",
]

# Safety net only: a stage never blocks longer than this, so a failing test cannot hang the suite.
WAIT_LIMIT_S = 10.0
# How long `hang` sleeps: far past any timeout or grace period a test sets, so a test that waits
# for it to return (old code) takes this long instead of failing fast.
HANG_S = 60.0
# Where wait_for_file looks (set in the environment of a server subprocess).
GATE_FILE_ENV = "HEDDLE_TEST_GATE_FILE"

_lock = threading.Condition()
_calls: list[tuple[str, int]] = []
_gate = threading.Event()
_barrier = threading.Barrier(2, timeout=WAIT_LIMIT_S)


def reset() -> None:
    """Forget recorded calls, close the gate, and re-arm the two-party barrier."""
    global _barrier
    with _lock:
        _calls.clear()
    _gate.clear()
    _barrier = threading.Barrier(2, timeout=WAIT_LIMIT_S)


def open_gate() -> None:
    _gate.set()


def calls() -> list[tuple[str, int]]:
    """(function, tag) of every stage call so far, in the order they started."""
    with _lock:
        return list(_calls)


def wait_for_call(name: str, tag: int, timeout_s: float = WAIT_LIMIT_S) -> bool:
    """Block until stage function `name` has started for `tag`; False on timeout."""
    with _lock:
        return _lock.wait_for(lambda: (name, tag) in _calls, timeout=timeout_s)


def tagged(x: np.ndarray) -> np.ndarray:
    """An FP32 [1] tensor carrying tag `x`, as the functions here read it."""
    return np.array([x], dtype=np.float32)


def _record(name: str, x: np.ndarray) -> None:
    with _lock:
        _calls.append((name, int(x[0])))
        _lock.notify_all()


def tail(x: np.ndarray) -> dict[str, np.ndarray]:
    """Records its call and returns at once."""
    _record("tail", x)
    return {"y": x}


def gate(x: np.ndarray) -> dict[str, np.ndarray]:
    """Records its call, then holds its device slot until the test opens the gate."""
    _record("gate", x)
    if not _gate.wait(WAIT_LIMIT_S):
        raise TimeoutError("the test never opened the gate")
    return {"y": x}


def stall_on_1(x: np.ndarray) -> dict[str, np.ndarray]:
    """A stage that stalls once: 0.3 s of sleep for tag 1 (a GC pause, a busy box), else at once."""
    _record("stall_on_1", x)
    if int(x[0]) == 1:
        time.sleep(0.3)
    return {"y": x}


def burn_cpu(x: np.ndarray) -> dict[str, np.ndarray]:
    """A CPU-bound stage: a fixed amount of pure-Python arithmetic (~40 ms of CPU on the dev box)."""
    total = 0
    for i in range(1_000_000):
        total += i * i
    return {"y": x}


def sleep_50ms(x: np.ndarray) -> dict[str, np.ndarray]:
    """A slow stage: 50 ms of sleep (which releases the GIL), then returns."""
    _record("sleep_50ms", x)
    time.sleep(0.05)
    return {"y": x}


def barrier_branch(x: np.ndarray) -> dict[str, np.ndarray]:
    """Returns only once a second call is inside it too: succeeds only if two calls overlap."""
    _record("barrier_branch", x)
    _barrier.wait()
    return {"y": x}


def join2(x1: np.ndarray, x2: np.ndarray) -> dict[str, np.ndarray]:
    """Joins two branches: their sum."""
    return {"y": x1 + x2}


def thread_name(x: np.ndarray) -> dict[str, np.ndarray]:
    """Records the name of the thread it runs on (calls() gives ("thread:NAME", tag)); returns x."""
    _record("thread:" + threading.current_thread().name, x)
    return {"y": x}


def slow_thread_name(x: np.ndarray) -> dict[str, np.ndarray]:
    """thread_name after 2 ms of sleep: far over the auto-inline budget."""
    time.sleep(0.002)
    return thread_name(x)


def boom(x: np.ndarray) -> dict[str, np.ndarray]:
    """An operator bug: always raises."""
    _record("boom", x)
    raise ZeroDivisionError(f"boom on tag {int(x[0])}")


def wait_for_file(x: np.ndarray) -> dict[str, np.ndarray]:
    """Holds its slot until the file named by $HEDDLE_TEST_GATE_FILE exists (gate across processes)."""
    path = Path(os.environ[GATE_FILE_ENV])
    deadline = time.monotonic() + WAIT_LIMIT_S
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate file {path} never appeared")
        time.sleep(0.005)
    return {"y": x}


def hang(x: np.ndarray) -> dict[str, np.ndarray]:
    """A stuck operator: sleeps HANG_S (only for server processes or process-isolated stages,
    which can be killed; a thread running it cannot)."""
    _record("hang", x)
    time.sleep(HANG_S)
    return {"y": x}


def nap_then_pid(x: np.ndarray) -> dict[str, np.ndarray]:
    """Sleeps x[0] seconds (at most HANG_S), then returns the id of the process it ran in
    (exact in FP32: Linux pids stay below 2**22), so a test can tell worker processes apart."""
    time.sleep(min(float(x[0]), HANG_S))
    return {"y": np.array([os.getpid()], dtype=np.float32)}


def crash(x: np.ndarray) -> dict[str, np.ndarray]:
    """Ends the process it runs in at once, as a segfaulting extension would: only ever load it
    as a process-isolated stage."""
    os._exit(3)


class Scaler:
    """A stage class: constructed once per worker slot with its options, called per run. Counts
    its constructions (per process) so a test can tell once-per-slot from once-per-run."""

    constructed = 0

    def __init__(self, factor: float, offset: float = 0.0) -> None:
        type(self).constructed += 1
        self.factor, self.offset = factor, offset
        self.pid = os.getpid()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": (x * self.factor + self.offset).astype(np.float32),
                "pid": np.array([self.pid, type(self).constructed], np.int64)}


class NeedsAThreshold:
    """A stage class whose constructor refuses what it is given."""

    def __init__(self, threshold: float) -> None:
        if not 0 <= threshold <= 1:
            raise ValueError(f"threshold {threshold} is outside [0, 1]")

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": x}


def thresholded(x: np.ndarray, threshold: float, keep_above: bool = True) -> dict[str, np.ndarray]:
    """Takes per-request parameters: the rows of x past the threshold (1.0 where kept, 0.0 where not)."""
    kept = x > threshold if keep_above else x <= threshold
    return {"y": kept.astype(np.float32)}


def rows_of(x: np.ndarray, count: np.ndarray) -> dict[str, list[np.ndarray]]:
    """A list of `count` elements, element i being row i of x ([1, D]): what a map stage fans out over."""
    return {"parts": [x[i:i + 1] for i in range(int(count[0]))]}


def ragged_rows_of(x: np.ndarray, count: np.ndarray) -> dict[str, list[np.ndarray]]:
    """A ragged list of `count` elements, element i being the first i + 1 rows of x ([i + 1, D])."""
    return {"parts": [x[:i + 1] for i in range(int(count[0]))]}


def gather_rows(parts: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The elements of a list joined on the first dim, in order; zero rows for an empty list."""
    return {"y": np.concatenate(parts, axis=0) if parts else np.zeros((0, 3), np.float32)}


def rows_as_array(x: np.ndarray, count: np.ndarray) -> dict[str, np.ndarray]:
    """rows_of's mistake: the rows as one array where a list is declared."""
    return {"parts": x[:int(count[0])]}


SAME_CALLS: list[int] = []


def same(x: np.ndarray) -> dict[str, np.ndarray]:
    """x back, any shape; each call's row count recorded in SAME_CALLS (a skipped stage has none)."""
    SAME_CALLS.append(len(x))
    return {"y": x}


def by_width(x: np.ndarray, count: np.ndarray) -> dict[str, object]:
    """`count` elements of widths 4, 2, 4, 2, ... (element i: row i of x, cut), and their widths as
    sort keys: elements of one width can share a run, of two cannot."""
    parts = [x[i:i + 1, :4 if i % 2 == 0 else 2] for i in range(int(count[0]))]
    return {"parts": parts, "widths": np.array([p.shape[1] for p in parts], np.int64)}
