"""The Triton backend: stages run as ModelInfer (or streamed) calls on a remote Triton server over gRPC
(the translations to Triton's terms: wire.py)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from heddle.backends.base import (
    CALL_HEADERS,
    BackendError,
    BackendTimeout,
    check_inputs,
    make_pool,
)
from heddle.backends.triton.wire import (
    RemoteModel,
    channel_args,
    check_declared,
    llm_io,
    map_error,
    read_triton_io_spec,
    response_outputs,
    tensor_specs,
    triton_priority,
    with_io,
)
from heddle.scheduler.specs import DeviceSpec, ModelSpec

# channel_args, map_error, read_triton_io_spec and triton_priority live in wire.py, and are
# re-exported: this module is where their callers have found them.
__all__ = [
    "TritonExecutor", "TritonStream", "channel_args", "map_error", "read_triton_io_spec", "triton_priority",
]

_CANCELLED = object()  # put in a stream's response queue by TritonStream.cancel


class TritonExecutor:
    """Runs models hosted on one Triton server (device.options["url"], host:port of its gRPC port).

    One sync gRPC client is shared by the pool's threads (its stub is thread-safe); each stream
    gets a client of its own, since a client holds at most one stream. Options: `url`,
    `client_timeout_s` (gRPC deadline of a call when the request sets none; default 60).
    """

    def __init__(self, device: DeviceSpec, *, priority_levels: int = 4) -> None:
        url = device.options.get("url")
        if not url:
            raise BackendError(f"device {device.id}: a triton device needs url = 'host:port' (the gRPC port)")
        self.device = device
        self.url = str(url)
        self.priority_levels = priority_levels
        self.client_timeout_s = float(device.options.get("client_timeout_s", 60.0))
        self._client = tgrpc.InferenceServerClient(self.url, channel_args=channel_args())
        self._models: dict[str, RemoteModel] = {}
        self._lock = threading.Lock()
        self.pool = make_pool(device)

    def _where(self, model: str) -> str:
        return f"model {model} on Triton server {self.url} (device {self.device.id})"

    def load(self, model: ModelSpec) -> None:
        """Check the model is ready on the server and record what the server says it serves."""
        name, version = model.artifact or model.name, str(model.options.get("triton_version", ""))
        where = self._where(name)
        try:
            if not self._client.is_model_ready(name, version, client_timeout=self.client_timeout_s):
                raise BackendError(f"{where}: not ready (unknown to the server, or still loading)")
            meta = self._client.get_model_metadata(name, version, client_timeout=self.client_timeout_s)
            config = self._client.get_model_config(name, version, client_timeout=self.client_timeout_s).config
        except InferenceServerException as e:
            raise map_error(e, where) from None
        inputs, outputs = tensor_specs(meta.inputs), tensor_specs(meta.outputs)
        check_declared(model, model.inputs, inputs, "input", where)
        check_declared(model, model.outputs, outputs, "output", where)
        if model.kind == "llm":
            model = llm_io(model, inputs, outputs, config.model_transaction_policy.decoupled, where)
        elif not model.inputs:  # undeclared IO: the server's metadata is the spec
            model = with_io(model, inputs, outputs)
        remote = RemoteModel(
            spec=model, name=name, version=version,
            outputs=tuple(t.name for t in (model.outputs or outputs)),
            datatypes={t.name: t.datatype for t in inputs},
            decoupled=config.model_transaction_policy.decoupled,
            priority_levels=config.dynamic_batching.priority_levels,
        )
        with self._lock:
            self._models[model.name] = remote

    def unload(self, model: str) -> None:
        """Forget a model (removed by a config reload); the Triton server itself is not touched."""
        with self._lock:
            self._models.pop(model, None)

    def _remote(self, model: str) -> RemoteModel:
        remote = self._models.get(model)
        if remote is None:
            raise BackendError(f"model {model} is not loaded on device {self.device.id}")
        return remote

    def served_spec(self, model: str) -> ModelSpec:
        """The model as loaded: its IO as the server serves it (for an LLM, just its ids)."""
        return self._remote(model).spec

    def _request(self, remote: RemoteModel, inputs: Mapping[str, np.ndarray], priority: int,
                 timeout_s: float | None, parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        check_inputs(remote.spec, inputs)
        if timeout_s is not None and timeout_s <= 0:
            raise BackendTimeout(f"{self._where(remote.name)}: no time left (timeout {timeout_s:.3f} s)")
        infer_inputs = []
        for name, array in inputs.items():
            datatype = remote.datatypes[name]
            if datatype == "BF16":  # tritonclient carries BF16 as float32 arrays
                array = array.astype(np.float32)
            item = tgrpc.InferInput(name, list(array.shape), datatype)
            item.set_data_from_numpy(array)
            infer_inputs.append(item)
        return dict(
            model_name=remote.name, inputs=infer_inputs, model_version=remote.version,
            outputs=[tgrpc.InferRequestedOutput(n) for n in remote.outputs],
            priority=triton_priority(priority, self.priority_levels, remote.priority_levels),
            # Triton takes microseconds; its dynamic batcher rejects a request queued longer.
            timeout=None if timeout_s is None else max(1, int(timeout_s * 1e6)),
            parameters=dict(parameters) if parameters else None,
        )

    def _client_timeout(self, timeout_s: float | None) -> float:
        return self.client_timeout_s if timeout_s is None else min(timeout_s, self.client_timeout_s)

    def run(self, model: str, inputs: Mapping[str, np.ndarray], *, priority: int = 0,
            timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """One ModelInfer call; blocks. priority is heddle's (0 = default), timeout_s the time left."""
        remote = self._remote(model)
        if remote.decoupled:
            raise BackendError(f"{self._where(remote.name)}: decoupled model; use stream()")
        request = self._request(remote, inputs, priority, timeout_s)
        headers = CALL_HEADERS.get()  # the caller's trace context, passed on (W3C traceparent)
        try:
            result = self._client.infer(**request, client_timeout=self._client_timeout(timeout_s),
                                        headers=dict(headers) if headers else None)
        except InferenceServerException as e:
            raise map_error(e, self._where(remote.name)) from None
        return response_outputs(remote, result)

    def stream(self, model: str, inputs: Mapping[str, np.ndarray], *, priority: int = 0,
               timeout_s: float | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Each response of a (decoupled) model as it comes; closing the iterator early cancels the request.

        timeout_s bounds the whole stream; client_timeout_s bounds the wait for each next response.
        """
        return iter(self.open_stream(model, inputs, priority=priority, timeout_s=timeout_s))

    def open_stream(self, model: str, inputs: Mapping[str, np.ndarray], *, priority: int = 0,
                    timeout_s: float | None = None, parameters: Mapping[str, Any] | None = None) -> TritonStream:
        """A stream not started yet: iterate it (on a worker thread) for its responses, and cancel it
        from any thread. `parameters` go to the model as request parameters (str, int, float, bool).
        InputError/BackendError for a request that cannot be sent at all, before anything is sent."""
        remote = self._remote(model)
        request = self._request(remote, inputs, priority, timeout_s, parameters)
        return TritonStream(self.url, remote, request, timeout_s, self._client_timeout(timeout_s),
                            self._where(remote.name))

    def providers(self) -> list[str]:
        return [f"triton:{self.url}"]

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self._client.close()
        with self._lock:
            self._models.clear()


def _is_final(result: tgrpc.InferResult) -> bool:
    param = result.get_response().parameters.get("triton_final_response")
    return param is not None and param.bool_param


class TritonStream:
    """One streamed request on a client of its own. Iterate it once for the responses (blocking;
    on a worker thread); `cancel()`, from any thread, ends the iteration at once and cancels the
    request on the server. An iteration that stops early (error, cancel, or the consumer closing
    it) cancels the request too."""

    def __init__(self, url: str, remote: RemoteModel, request: dict[str, Any], timeout_s: float | None,
                 gap_timeout_s: float, where: str) -> None:
        self._url, self._remote, self._request = url, remote, request
        self._timeout_s, self._gap_timeout_s, self.where = timeout_s, gap_timeout_s, where
        self._responses: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        self._responses.put((_CANCELLED, None))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self.cancelled.is_set():
            return
        client = tgrpc.InferenceServerClient(self._url, channel_args=channel_args())
        finished = False
        try:
            client.start_stream(lambda result, error: self._responses.put((result, error)),
                                stream_timeout=self._timeout_s)
            client.async_stream_infer(**self._request, enable_empty_final_response=True)
            while True:
                result = self._next()
                if result is _CANCELLED:
                    return
                outputs = response_outputs(self._remote, result)
                if outputs:
                    yield outputs
                if _is_final(result):
                    finished = True
                    return
        except InferenceServerException as e:
            raise map_error(e, self.where) from None
        finally:
            client.stop_stream(cancel_requests=not finished)
            client.close()

    def _next(self) -> Any:
        try:
            result, error = self._responses.get(timeout=self._gap_timeout_s)
        except queue.Empty:
            raise BackendTimeout(f"{self.where}: no streamed response within {self._gap_timeout_s:.3f} s") from None
        if error is not None:
            raise map_error(error, self.where)
        return result
