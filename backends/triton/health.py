"""Watches Triton servers' readiness: a pure tracker of health changes and a thread that polls ServerReady."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from heddle.backends.triton.wire import channel_args

__all__ = ["HealthCallback", "HealthTracker", "TritonHealthWatcher", "probe_ready"]

HealthCallback = Callable[[str, bool], None]


class HealthTracker:
    """Turns probe outcomes into health changes; no I/O, no clock.

    A device starts healthy. `failures_to_unhealthy` failed probes in a row mark it unhealthy
    (1: the first failure does); one successful probe marks it healthy again.
    """

    def __init__(self, device_ids: Iterable[str], *, failures_to_unhealthy: int = 1) -> None:
        if failures_to_unhealthy < 1:
            raise ValueError(f"failures_to_unhealthy must be >= 1, got {failures_to_unhealthy}")
        self.failures_to_unhealthy = failures_to_unhealthy
        self._healthy = {d: True for d in device_ids}
        self._failures = {d: 0 for d in self._healthy}

    def observe(self, device_id: str, ready: bool) -> bool | None:
        """Record one probe; the device's new health when it changed, else None."""
        if device_id not in self._healthy:
            raise KeyError(f"unknown device {device_id!r}")
        self._failures[device_id] = 0 if ready else self._failures[device_id] + 1
        healthy = self._healthy[device_id]
        if ready and not healthy:
            self._healthy[device_id] = True
            return True
        if healthy and self._failures[device_id] >= self.failures_to_unhealthy:
            self._healthy[device_id] = False
            return False
        return None

    def healthy(self, device_id: str) -> bool:
        return self._healthy[device_id]

    def snapshot(self) -> dict[str, bool]:
        return dict(self._healthy)


def probe_ready(client: tgrpc.InferenceServerClient, timeout_s: float) -> bool:
    """ServerReady within timeout_s; any error (refused, timed out, not ready) counts as not ready."""
    try:
        return bool(client.is_server_ready(client_timeout=timeout_s))
    except InferenceServerException:
        return False


class TritonHealthWatcher:
    """Polls each Triton device's ServerReady every period_s and calls callback(device_id, healthy)
    on changes, from its own thread (an asyncio owner should hop back with call_soon_threadsafe).

    `poll_once()` runs one round synchronously, for callers that drive the polling themselves.
    """

    def __init__(self, urls: Mapping[str, str], callback: HealthCallback, *, period_s: float = 1.0,
                 timeout_s: float = 0.5, failures_to_unhealthy: int = 1) -> None:
        self.urls = dict(urls)
        self.callback = callback
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.tracker = HealthTracker(self.urls, failures_to_unhealthy=failures_to_unhealthy)
        # One channel per server, with a short reconnect backoff, so a server that returns is seen soon.
        self._clients = {d: tgrpc.InferenceServerClient(u, channel_args=channel_args()) for d, u in self.urls.items()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> list[tuple[str, bool]]:
        """Probe every server once; the (device_id, healthy) changes, already reported to the callback."""
        changes = []
        for device_id, client in self._clients.items():
            changed = self.tracker.observe(device_id, probe_ready(client, self.timeout_s))
            if changed is not None:
                changes.append((device_id, changed))
                self.callback(device_id, changed)
        return changes

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._stop.wait(self.period_s)

    def start(self) -> TritonHealthWatcher:
        if self._thread is not None:
            raise RuntimeError("the health watcher is already running")
        self._thread = threading.Thread(target=self._loop, name="heddle-triton-health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (waits for the round in progress) and close the channels."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for client in self._clients.values():
            client.close()

    def __enter__(self) -> TritonHealthWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
