"""LLM stages hosted on Triton as decoupled models: one stream per generation, its tokens out as they come.

Triton owns the token loop, so the core sees the whole generation as one dispatch: it holds its
slot from the first token to the last, and no policy can freeze, reorder or migrate it between
tokens (that needs a local decoder: server/runtime/llm_runtime.py). A worker thread of the device pumps
the stream and hands each token to the event loop, which streams it to the client exactly like a
local generation's (LlmSequences.emit). heddle enforces max_new_tokens and stop_token_ids on what
comes back: a model that sends more has the surplus dropped and its request cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from heddle.backends.base import DeviceUnavailable, Executor, InputError
from heddle.backends.llm import GenerationConfig, LlmSequence
from heddle.scheduler import Dispatch
from heddle.scheduler.specs import ModelSpec
from heddle.server.observe.logs import get_logger
from heddle.server.runtime.error_kind import DeviceLostMidStream
from heddle.server.runtime.jobs import Job
from heddle.server.runtime.llm_gen import Generation, LlmSequences

if TYPE_CHECKING:
    from heddle.backends.triton.executor import TritonExecutor, TritonStream
    from heddle.server.runtime.stage_runner import StageEvents, Tensors

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
    """The StageRunner of `kind = "llm"` models whose backend is triton: one stream per generation,
    its sequence kept by an LlmSequences (the local LLM runner's), reported through StageEvents."""

    def __init__(self, events: StageEvents, sequences: LlmSequences, models: Mapping[str, ModelSpec],
                 executors: Mapping[str, Executor]) -> None:
        self.events = events
        self.sequences = sequences
        self.models = models
        self.executors = executors

    def dispatch(self, d: Dispatch, job: Job, inputs: Tensors) -> None:
        events, sequences = self.events, self.sequences
        try:
            options = self.models[d.model].options
            gen = sequences.open_gen(d, job, inputs, lambda seq: check_prompt(options, seq))
        except Exception as exc:  # bad options or prompt: this stage fails alone, INVALID_ARGUMENT
            sequences.report(d, None, exc, 0.0)
            return
        job.llm[d.stage] = gen
        gen.device, gen.in_flight = d.device, True
        # A Triton-hosted LLM runs on triton devices only (the config refuses anything else).
        executor = cast("TritonExecutor", self.executors[d.device])
        deadline_s = job.request.deadline_s
        timeout_s = None if deadline_s is None else max(deadline_s - events.clock(), 1e-3)
        try:
            served = executor.served_spec(d.model).input("input_ids")
            assert served is not None  # the executor checked the served LLM's ids at load
            ids = gen.seq.prompt_ids.reshape((1, -1) if len(served.shape) == 2 else (-1,))
            stream = executor.open_stream(d.model, {"input_ids": ids}, priority=job.request.priority,
                                          timeout_s=timeout_s, parameters=generation_parameters(gen.seq.config))
        except Exception as exc:
            self._ended(d, gen, None, exc)
            return
        gen.cancel = stream.cancel
        loop = events.loop
        fut = loop.run_in_executor(executor.pool, self._pump, loop, stream, gen)
        fut.add_done_callback(lambda f: self._ended(d, gen, f, None))

    def release(self, job: Job) -> None:
        """The request ended: cancel its streams and free its sequences (the shared bookkeeping's)."""
        self.sequences.release(job)

    def _pump(self, loop: asyncio.AbstractEventLoop, stream: TritonStream, gen: Generation) -> float:
        """On a device worker: every response's ids to the event loop, in order; the stream's time."""
        t0 = time.perf_counter()
        for outputs in stream:
            ids = outputs.get("output_ids")
            if ids is not None and ids.size:
                loop.call_soon_threadsafe(self._on_tokens, gen, stream, [int(i) for i in ids.reshape(-1)])
        return time.perf_counter() - t0

    def _on_tokens(self, gen: Generation, stream: TritonStream, tokens: list[int]) -> None:
        job = self.events.job(gen.request_id)
        if not gen.live or job is None or job.request.finished:
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
        self.sequences.emit(gen, self.events.clock())

    def _ended(self, d: Dispatch, gen: Generation, fut: asyncio.Future[float] | None,
               error: BaseException | None) -> None:
        """The stream is over: report the stage (its ids, or why not) and free the sequence."""
        events, sequences = self.events, self.sequences
        gen.in_flight, gen.cancel = False, None
        elapsed_s = 0.0
        if fut is not None:
            try:
                elapsed_s = fut.result()
            except BaseException as exc:  # noqa: BLE001  (reported as the stage's error)
                error = exc
        gen.compute_s += elapsed_s
        job = events.job(d.request_id)
        if error is None and job is not None and not job.request.finished:
            gen.seq.finish_reason = gen.seq.finish_reason or "end"  # the model ended it (its own stop)
            sequences.observe_finished(gen)
        elif isinstance(error, DeviceUnavailable) and gen.emitted:
            # Tokens already streamed cannot be unsent, so no retry elsewhere: the request ends
            # UNAVAILABLE, and the device goes out of rotation until its health comes back.
            events.device_lost(d.device)
            error = DeviceLostMidStream(f"{error} (after {gen.emitted} streamed tokens: not retried)")
        elif isinstance(error, DeviceUnavailable) and job is not None:
            job.llm.pop(d.stage, None)  # a retry starts a fresh generation
        result = events.loop.create_future()
        if error is not None:
            result.set_exception(error)
        else:
            result.set_result(({"output_ids": gen.seq.output_ids()}, elapsed_s))
        sequences.free(gen)
        events.stage_done(d, result)
