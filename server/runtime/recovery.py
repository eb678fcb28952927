"""Loading each device's models, and bringing back a remote device whose server was unreachable:
its models load when the server is back, and a load that fails is retried with backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from heddle.backends.base import DeviceUnavailable, Executor
from heddle.scheduler.specs import ModelSpec
from heddle.server.observe.logs import get_logger

__all__ = ["LOAD_STATES", "DeviceLoader", "LoadMetrics", "LoadStatus", "backoff_delays"]

log = get_logger("heddle.recovery")

# loaded: its models are loaded (whether it takes work is its health). unreachable: its server
# could not be reached; the models load when the health watcher sees it back. loading: an attempt
# is under way. failed: the server answered but a model did not load; retried with backoff.
LOADED, UNREACHABLE, LOADING, FAILED = LOAD_STATES = ("loaded", "unreachable", "loading", "failed")


def backoff_delays(first_s: float = 0.5, max_s: float = 30.0) -> Iterator[float]:
    """first_s, doubling up to max_s, then max_s for ever."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)


class LoadMetrics(Protocol):
    """What the loader reports to (runtime/metrics.py's Metrics, which imports this module's states)."""

    def observe_load_failure(self, device: str, model: str) -> None: ...
    def set_device_load_state(self, device: str, state: str) -> None: ...


@dataclass(frozen=True, slots=True)
class LoadStatus:
    """Where a device's models stand: its state, the last failure's reason, failed attempts so far."""

    state: str
    error: str = ""
    failures: int = 0


class DeviceLoader:
    """Loads models on devices off the event loop. A device whose server was unreachable at start
    stays `pending` (out of rotation) until `start(device)`, called when its server answers again,
    has loaded all its models; then `on_loaded(device)` puts it back. One recovery task per device."""

    def __init__(self, executors: Mapping[str, Executor], on_loaded: Callable[[str], None],
                 metrics: LoadMetrics | None = None, *,
                 first_delay_s: float = 0.5, max_delay_s: float = 30.0) -> None:
        self.executors = executors
        self.on_loaded = on_loaded
        self.metrics = metrics
        self.first_delay_s, self.max_delay_s = first_delay_s, max_delay_s
        self.pending: dict[str, list[ModelSpec]] = {}  # device -> models still to load
        self._status: dict[str, LoadStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def status(self, device: str) -> LoadStatus:
        return self._status.get(device, LoadStatus(LOADED))

    async def load(self, device: str, models: Sequence[ModelSpec]) -> bool:
        """At start: load every model. False, the device left pending, when its server cannot be
        reached; any other error raises, since a config that does not match its servers is a
        mistake to fix before serving."""
        errors = await self._load(device, models)
        unreachable = [str(e) for e in errors.values() if isinstance(e, DeviceUnavailable)]
        if unreachable:
            log.warning("device unreachable at load; serving without it", device=device, error=unreachable[0])
            self.pending[device] = list(models)
            self._set(device, LoadStatus(UNREACHABLE, unreachable[0]))
            return False
        if errors:
            raise next(iter(errors.values()))
        self._set(device, LoadStatus(LOADED))
        return True

    def start(self, device: str) -> None:
        """The device's server answers: load its pending models, retrying until they all load."""
        task = self._tasks.get(device)
        if device not in self.pending or (task is not None and not task.done()):
            return
        self._tasks[device] = asyncio.get_running_loop().create_task(
            self._recover(device), name=f"heddle-recover-{device}")

    def stop(self, device: str) -> None:
        """The device's server is unreachable again: stop retrying until `start` is called again."""
        task = self._tasks.pop(device, None)
        if task is not None and not task.done():
            task.cancel()
            log.warning("device unreachable again; recovery paused until it answers", device=device)
        if device in self.pending:
            self._set(device, LoadStatus(UNREACHABLE, self.status(device).error, self.status(device).failures))

    def close(self) -> None:
        """Shutting down: no more attempts."""
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    async def _recover(self, device: str) -> None:
        delays = backoff_delays(self.first_delay_s, self.max_delay_s)
        failures = self.status(device).failures
        while True:
            self._set(device, LoadStatus(LOADING, self.status(device).error, failures))
            try:
                errors = await self._load(device, self.pending[device])
            except Exception as bug:  # a bug here must not end recovery silently
                errors = {"": bug}
            if not errors:
                break
            failures += 1
            delay = next(delays)
            for model, exc in errors.items():
                # DeviceUnavailable too: the watcher stops this task if the server is really gone;
                # if it is not, only a retry would ever bring the device back.
                log.error("model did not load on a returning device; it stays out of rotation", device=device,
                          model=model, error=str(exc), attempt=failures, retry_in_s=delay)
                if self.metrics is not None:
                    self.metrics.observe_load_failure(device, model)
            reason = "; ".join(str(e) for e in errors.values())
            self._set(device, LoadStatus(FAILED, reason, failures))
            await asyncio.sleep(delay)
        del self.pending[device]
        self._tasks.pop(device, None)
        self._set(device, LoadStatus(LOADED))
        log.warning("device models loaded; back in rotation", device=device, failed_attempts=failures)
        self.on_loaded(device)

    async def _load(self, device: str, models: Sequence[ModelSpec]) -> dict[str, BaseException]:
        """Load each model on the device's pool; the models that failed, with their errors."""
        ex = self.executors[device]
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(ex.pool, ex.load, m) for m in models),
                                       return_exceptions=True)
        errors: dict[str, BaseException] = {}
        for model, result in zip(models, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancellation and the like are not load failures
                errors[model.name] = result
        return errors

    def _set(self, device: str, status: LoadStatus) -> None:
        self._status[device] = status
        if self.metrics is not None:
            self.metrics.set_device_load_state(device, status.state)
