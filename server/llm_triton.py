"""LLM stages hosted on Triton as decoupled models: one stream per generation, its tokens out as they come.

Triton owns the token loop, so the core sees the whole generation as one dispatch: it holds its
slot from the first token to the last, and no policy can freeze, reorder or migrate it between
tokens (that needs a local decoder: server/llm_runtime.py). A worker thread of the device pumps
the stream and hands each token to the event loop, which streams it to the client exactly like a
local generation's (LlmDriver._emit). heddle enforces max_new_tokens and stop_token_ids on what
comes back: a model that sends more has the surplus dropped and its request cancelled.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from heddle.backends.base import BackendError, DeviceUnavailable, InputError
from heddle.backends.llm import GenerationConfig, LlmSequence
from heddle.scheduler import Dispatch
from heddle.server.error_kind import ErrorKind
from heddle.server.logs import get_logger

if TYPE_CHECKING:
    from heddle.backends.triton import TritonStream
    from heddle.server.llm_runtime import LlmDriver, _Gen

__all__ = ["TritonLlmStreams", "generation_parameters"]

log = get_logger("heddle.llm")


def generation_parameters(config: GenerationConfig) -> dict[str, Any]:
    """The request parameters a Triton LLM gets: its generation settings (seed only when set,
    stop ids as "1,2" since Triton parameters are scalars)."""
    params: dict[str, Any] = {"max_new_tokens": config.max_new_tokens, "temperature": float(config.temperature),
                              "top_k": config.top_k, "top_p": float(config.top_p)}
    if config.seed is not None:
        params["seed"] = int(config.seed)
    if config.stop_token_ids:
        params["stop_token_ids"] = ",".join(str(i) for i in config.stop_token_ids)
    return params


def check_prompt(options: Mapping[str, Any], seq: LlmSequence) -> None:
    """InputError for a prompt the model's config rules out (vocab_size, max_positions, when set)."""
    ids, vocab = seq.prompt_ids, options.get("vocab_size")
    if vocab is not None and (ids.min() < 0 or ids.max() >= int(vocab)):
        raise InputError(f"prompt token ids must be in [0, {int(vocab)}), got [{ids.min()}, {ids.max()}]")
    limit = options.get("max_positions")
    if limit is not None and ids.size + seq.config.max_new_tokens > int(limit):
        raise InputError(f"prompt of {ids.size} tokens + max_new_tokens {seq.config.max_new_tokens} "
                         f"exceeds the model's {int(limit)} positions")


class TritonLlmStreams:
    """Runs the generations of `kind = "llm"` models whose backend is triton, for an LlmDriver."""

    def __init__(self, driver: LlmDriver) -> None:
        self.driver = driver
        self.rt = driver.rt
        self._models = {n for n, m in self.rt.config.models.items() if m.kind == "llm" and m.backend == "triton"}

    def hosts(self, model: str) -> bool:
        return model in self._models

    def dispatch(self, d: Dispatch, job: Any, inputs: Mapping[str, np.ndarray]) -> None:
        rt, driver = self.rt, self.driver
        try:
            options = rt.config.models[d.model].options
            gen = driver.open_gen(d, job, inputs, lambda seq: check_prompt(options, seq))
        except Exception as exc:  # bad options or prompt: this stage fails alone, INVALID_ARGUMENT
            driver._report(d, None, exc, 0.0)
            rt._step()
            return
        job.llm[d.stage] = gen
        gen.device, gen.in_flight = d.device, True
        executor = rt.executors[d.device]
        deadline_s = job.request.deadline_s
        timeout_s = None if deadline_s is None else max(deadline_s - rt.clock(), 1e-3)
        try:
            served = executor.served_spec(d.model).input("input_ids")
            ids = gen.seq.prompt_ids.reshape((1, -1) if len(served.shape) == 2 else (-1,))
            stream = executor.open_stream(d.model, {"input_ids": ids}, priority=job.request.priority,
                                          timeout_s=timeout_s, parameters=generation_parameters(gen.seq.config))
        except Exception as exc:
            self._ended(d, gen, None, exc)
            return
        gen.cancel = stream.cancel
        fut = rt._loop.run_in_executor(executor.pool, self._pump, stream, gen)
        fut.add_done_callback(lambda f: self._ended(d, gen, f, None))

    def _pump(self, stream: TritonStream, gen: _Gen) -> float:
        """On a device worker: every response's ids to the event loop, in order; the stream's time."""
        t0 = time.perf_counter()
        for outputs in stream:
            ids = outputs.get("output_ids")
            if ids is not None and ids.size:
                self.rt._loop.call_soon_threadsafe(self._on_tokens, gen, stream, [int(i) for i in ids.reshape(-1)])
        return time.perf_counter() - t0

    def _on_tokens(self, gen: _Gen, stream: TritonStream, tokens: list[int]) -> None:
        request = self.rt.core.request(gen.request_id)
        if not gen.live or request is None or request.finished:
            return
        seq, took = gen.seq, 0
        for token in tokens:
            if seq.done:
                break
            seq.generated.append(token)
            took += 1
            if token in seq.config.stop_token_ids:
                seq.finish_reason = "stop"
            elif len(seq.generated) >= seq.config.max_new_tokens:
                seq.finish_reason = "length"
        if took < len(tokens):  # the model went past the request's limits: stop paying for it
            stream.cancel()
        self.driver._emit(gen, self.rt.clock())

    def _ended(self, d: Dispatch, gen: _Gen, fut: asyncio.Future | None, error: BaseException | None) -> None:
        """The stream is over: report the stage (its ids, or why not) and free the sequence."""
        rt, driver = self.rt, self.driver
        gen.in_flight, gen.cancel = False, None
        elapsed_s = 0.0
        if fut is not None:
            try:
                elapsed_s = fut.result()
            except BaseException as exc:  # noqa: BLE001  (reported as the stage's error)
                error = exc
        gen.compute_s += elapsed_s
        job = rt._jobs.get(d.request_id)
        if error is None and job is not None and not job.request.finished:
            gen.seq.finish_reason = gen.seq.finish_reason or "end"  # the model ended it (its own stop)
            driver._observe_finished(gen)
        elif isinstance(error, DeviceUnavailable) and gen.emitted:
            # Tokens already streamed cannot be unsent, so no retry elsewhere: the request ends
            # UNAVAILABLE, and the device goes out of rotation until its health comes back.
            if job is not None:
                job.error_kind = ErrorKind.DEVICE_LOST
            rt.set_device_health(d.device, False)
            error = BackendError(f"{error} (after {gen.emitted} streamed tokens: not retried)")
        elif isinstance(error, DeviceUnavailable) and job is not None:
            job.llm.pop(d.stage, None)  # a retry starts a fresh generation
        result = rt._loop.create_future()
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(({"output_ids": gen.seq.output_ids()}, elapsed_s))
        driver.free(gen)
        rt._on_done_guarded(d, result)
