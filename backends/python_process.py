"""Process isolation for python stages: a killable worker process per slot, so a hung stage can be stopped.

A thread cannot be stopped from outside in Python; a process can. Stages with `isolation = "process"`
run in one of the device's worker processes (one per slot): inputs go down a pipe as numpy arrays,
outputs come back the same way (about 60 us a call for small tensors, 2 ms per MB, measured). A
call that outlives its timeout gets its worker killed (SIGKILL) and replaced at once; the
replacement imports the device's stage modules before it takes its first call.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
from collections.abc import Mapping
from typing import Any

from heddle.backends.base import BackendError, BackendTimeout

__all__ = ["LOAD_TIMEOUT_S", "ProcessPool"]

_Load = tuple[str, str, "dict[str, Any] | None"]  # (stage, module:function or module:Class, class options)

# Workers start with 'spawn': forking a gateway full of threads (gRPC, ONNX Runtime) can copy a
# lock some other thread holds, and the child would hang on it.
_CONTEXT = multiprocessing.get_context("spawn")
# How long a worker may take to start and import a stage's module; a bound for a broken import
# that hangs, not an expectation (a start with numpy takes about 0.1 s).
LOAD_TIMEOUT_S = 60.0


def _worker_main(conn) -> None:
    """A worker's loop: (stage, inputs) in; ("ok", result) or ("error", text) out. A load,
    (stage, (reference, options)), imports the function (or constructs the stage class's one
    instance for this worker) so that calls do not pay for it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the gateway decides
    from heddle.backends.python import make_stage

    stages: dict[str, Any] = {}
    while True:
        try:
            stage, message = conn.recv()
        except (EOFError, OSError):  # the gateway closed the pipe or died: nothing left to serve
            return
        try:
            if isinstance(message, tuple):  # a load
                stages[stage] = make_stage(*message)
                reply: tuple[str, Any] = ("ok", None)
            else:
                reply = ("ok", stages[stage](**message))
        except Exception as e:  # the operator's error, reported as the thread backend reports it
            reply = ("error", f"{type(e).__name__}: {e}")
        try:
            conn.send(reply)
        except Exception as e:  # e.g. a result that cannot be pickled (pickling fails before any byte is sent)
            conn.send(("error", f"its result cannot be sent back: {type(e).__name__}: {e}"))


class _Worker:
    """One worker process and the gateway's end of its pipe."""

    def __init__(self, name: str, loads: tuple[_Load, ...]) -> None:
        self.conn, child = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(target=_worker_main, args=(child,), name=name, daemon=True)
        self.process.start()
        child.close()  # so that the worker's death shows here as EOF
        self.loads_pending = 0
        for load in loads:  # queued now, answered before any call: the replacement warms meanwhile
            self.send_load(load)

    def send_load(self, load: _Load) -> None:
        stage, ref, options = load
        self.conn.send((stage, (ref, options)))
        self.loads_pending += 1

    def settle(self) -> None:
        """Read the answers to the loads sent so far; BackendError if one failed."""
        while self.loads_pending:
            status, text = self._receive(LOAD_TIMEOUT_S, "to start and import its stages")
            self.loads_pending -= 1
            if status != "ok":
                raise BackendError(text)

    def call(self, stage: str, inputs: Mapping[str, Any], timeout_s: float | None) -> Any:
        self.settle()
        try:
            self.conn.send((stage, dict(inputs)))
        except OSError:
            raise BackendError("its worker process is gone") from None
        status, result = self._receive(timeout_s, "")
        if status != "ok":
            raise BackendError(result)
        return result

    def _receive(self, timeout_s: float | None, what: str) -> tuple[str, Any]:
        try:
            if not self.conn.poll(timeout_s):
                raise BackendTimeout(f"took longer than {timeout_s:g} s {what}" if what else
                                     f"ran past its timeout of {timeout_s * 1e3:.0f} ms; its worker "
                                     f"process was killed and replaced")
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(1.0)
            raise BackendError(f"its worker process died (exit code {self.process.exitcode})") from None

    def kill(self) -> None:
        # The pipe is left to its owner thread (it may be polling it): closing it here could
        # hand its descriptor number to an unrelated file under that poll.
        self.process.kill()
        self.process.join(1.0)


class ProcessPool:
    """The worker processes of one python device: one per slot, each able to run any of its
    process-isolated stages. The device's thread pool has `slots` threads, so a call always
    finds an idle worker."""

    def __init__(self, device_id: str, slots: int) -> None:
        self._name = f"heddle-{device_id}-worker"
        self._loads: list[_Load] = []
        self._lock = threading.Lock()
        self._all: list[_Worker] = []
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for i in range(slots):
            worker = _Worker(f"{self._name}{i}", ())
            self._all.append(worker)
            self._idle.put(worker)

    def load(self, stage: str, ref: str, options: Mapping[str, Any] | None = None) -> None:
        """Import `module:function` (or construct the stage class with **options) in every worker,
        for calls naming `stage`; BackendError if it fails (at start, not per call)."""
        load = (stage, ref, None if options is None else dict(options))
        with self._lock:
            workers = list(self._all)
            self._loads.append(load)
        for worker in workers:  # all idle (loading happens before the gateway serves), so in parallel
            worker.send_load(load)
        for worker in workers:
            worker.settle()

    def run(self, stage: str, inputs: Mapping[str, Any], timeout_s: float | None) -> Any:
        """The stage's fn(**inputs) in an idle worker. BackendTimeout after timeout_s (the worker is
        killed and replaced), BackendError if the function raised or its worker died (replaced too)."""
        worker = self._idle.get()
        try:
            return worker.call(stage, inputs, timeout_s)
        except BackendError as e:
            if isinstance(e, BackendTimeout) or not worker.process.is_alive():
                worker = self._replace(worker)
            raise
        finally:
            self._idle.put(worker)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        worker.conn.close()
        with self._lock:
            if worker not in self._all:  # the pool was closed meanwhile: nothing to replace
                return worker
            fresh = _Worker(worker.process.name, tuple(self._loads))
            self._all[self._all.index(worker)] = fresh
        return fresh

    def close(self) -> None:
        """Kill every worker (a stage still running in one included): nothing waits for them."""
        with self._lock:
            workers, self._all = self._all, []
        for worker in workers:
            worker.kill()
