"""LLM stages on the runtime: one sequence per stage run, steps gated and batched per device, tokens out.

The core sees an LLM stage as a run that re-enters its ready queue after every step (prefill,
then one decode step per token: Core.on_stage_step), so policies freeze, reorder and migrate it
between tokens. Here each dispatched step joins its (device, model) gate: one forward pass at a
time per gate, and the decode steps that gathered while one ran go together in the next pass
(continuous batching: sequences join and leave the batch at every step; the device's slots
bound how many can be dispatched at once). The KV cache travels with the sequence. LLMs hosted
on Triton as decoupled models stream a whole generation per dispatch instead (server/runtime/llm_triton.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from heddle.backends.base import Executor
from heddle.backends.llm import DecoderLayout, GenerationConfig, LlmEngine, LlmSequence, decoder_spec
from heddle.backends.tokenizer import StreamDecoder, load_tokenizer
from heddle.scheduler import Dispatch
from heddle.scheduler.specs import ModelSpec
from heddle.server.observe.logs import get_logger
from heddle.server.runtime.jobs import Job, TokenUpdate
from heddle.server.runtime.llm_gen import Generation

if TYPE_CHECKING:
    from heddle.server.runtime.metrics import Metrics
    from heddle.server.runtime.stage_runner import StageEvents, Tensors

__all__ = ["LlmDriver"]

log = get_logger("heddle.llm")


@dataclass(slots=True)
class _Gate:
    pending: list[tuple[Dispatch, Generation]] = field(default_factory=list)
    busy: bool = False
    flush_scheduled: bool = False


class LlmDriver:
    """The StageRunner of `kind = "llm"` models run locally, step by step; it also keeps the
    sequence bookkeeping (LlmSequences) that Triton streams share. Reports through StageEvents."""

    def __init__(self, events: StageEvents, models: Mapping[str, ModelSpec], executors: Mapping[str, Executor],
                 metrics: Metrics | None = None) -> None:
        self.events = events
        self.executors = executors
        self.metrics = metrics
        self._llm = {n: m for n, m in models.items() if m.kind == "llm"}
        self._engines: dict[tuple[str, str], LlmEngine] = {}
        self._gates: dict[tuple[str, str], _Gate] = {}
        self.live_sequences = 0

    def executor_spec(self, model: ModelSpec) -> ModelSpec:
        """What to load on executors: an LLM's decoder graph, not its stage IO (on Triton: the
        model as served, which its executor checks)."""
        if model.kind != "llm":
            return model
        return dataclasses.replace(model, inputs=(), outputs=()) if model.backend == "triton" else decoder_spec(model)

    # ---- dispatch ------------------------------------------------------------------------
    def dispatch(self, d: Dispatch, job: Job, inputs: Tensors) -> None:
        gen = job.llm.get(d.stage)
        if gen is None:
            try:
                gen = job.llm[d.stage] = self.open_gen(d, job, inputs, self._engine(d.device, d.model).check)
            except Exception as exc:  # a bad prompt or bad options fail this stage alone
                self.report(d, None, exc, 0.0)
                return
        if gen.device and gen.device != d.device:
            cache = gen.seq.cache
            assert cache is not None  # it moves between steps, and its first step (prefill) made its cache
            log.debug("sequence migrated", request_id=d.request_id, stage=d.stage,
                      from_device=gen.device, to_device=d.device, kv_bytes=cache.nbytes)
            cache.moved_to(d.device)
        gen.device, gen.in_flight = d.device, True
        gate = self._gates.setdefault((d.device, d.model), _Gate())
        gate.pending.append((d, gen))
        # Dispatches of one plan arrive together: flush after them, so they share one pass.
        if not gate.busy and not gate.flush_scheduled:
            gate.flush_scheduled = True
            self.events.loop.call_soon(self._flush, d.device, d.model)

    def open_gen(self, d: Dispatch, job: Job, inputs: Tensors,
                 check: Callable[[LlmSequence], None]) -> Generation:
        """A new live sequence for this stage run, its prompt and options checked (InputError)."""
        spec = self._llm[d.model]
        config = GenerationConfig.from_options(spec.options).with_overrides(**(job.generation or {}))
        seq = LlmSequence(inputs["input_ids"], config)
        check(seq)
        tokenizer = spec.options.get("tokenizer")
        request = job.request
        run = request.runs[d.stage]
        started_s, ready_s = run.started_s, run.ready_s
        assert started_s is not None and ready_s is not None  # dispatched: it was ready, then started
        gen = Generation(request.id, d.stage, request.priority, request.arrival_s, seq,
                         StreamDecoder(load_tokenizer(tokenizer)) if tokenizer else None, job.on_token is not None,
                         first_start_s=started_s, queue_s=started_s - ready_s)
        self.live_sequences += 1
        if self.metrics is not None:
            self.metrics.llm_sequence_started(request.priority, gen.queue_s)
        return gen

    def _engine(self, device: str, model: str) -> LlmEngine:
        engine = self._engines.get((device, model))
        if engine is None:
            executor, spec = self.executors[device], decoder_spec(self._llm[model])
            engine = self._engines[(device, model)] = LlmEngine(
                lambda feed: executor.run(model, feed), DecoderLayout.from_spec(spec))
        return engine

    def _flush(self, device: str, model: str) -> None:
        gate = self._gates[(device, model)]
        gate.flush_scheduled = False
        if gate.busy or not gate.pending:
            return
        items, gate.pending, gate.busy = gate.pending, [], True
        engine = self._engine(device, model)
        # step_scheduling = false makes a whole generation one dispatch: nothing can go between
        # its tokens (the baseline token-level scheduling is measured against).
        work = _run_step if self._llm[model].options.get("step_scheduling", True) else _run_to_end
        fut = self.events.loop.run_in_executor(self.executors[device].pool, work, engine,
                                               [g.seq for _, g in items])
        fut.add_done_callback(lambda f: self._on_step_done(device, model, items, f))

    # ---- completion -----------------------------------------------------------------------
    def _on_step_done(self, device: str, model: str, items: list[tuple[Dispatch, Generation]],
                      fut: asyncio.Future[tuple[list[BaseException | None], float]]) -> None:
        gate = self._gates[(device, model)]
        gate.busy = False
        try:
            errors, elapsed_s = fut.result()
        except BaseException as exc:  # a bug in the pass itself: fail its sequences, not the gateway
            errors, elapsed_s = [exc] * len(items), 0.0
        now = self.events.clock()
        share_s = elapsed_s / len(items)  # the pass's time, split so device busy time adds up
        if self.metrics is not None:
            self.metrics.llm_pass(len(items))
        for (d, gen), error in zip(items, errors, strict=True):
            gen.in_flight = False
            job = self.events.job(d.request_id)
            if error is None and job is not None and not job.request.finished:
                self.emit(gen, now)
            self.report(d, gen, error, share_s)
        if gate.pending:
            self._flush(device, model)

    def emit(self, gen: Generation, now: float) -> None:
        """The sequence's tokens not handed out yet, to the client through the runtime."""
        tokens = gen.seq.generated[gen.emitted:]
        if not tokens:
            return
        index, gen.emitted = gen.emitted, len(gen.seq.generated)
        gen.first_token_s = gen.first_token_s if gen.first_token_s is not None else now
        gen.last_token_s = now
        if self.metrics is not None:
            self.metrics.llm_tokens(gen.priority, len(tokens))
        if gen.streaming:
            text = gen.decoder.push(tokens) if gen.decoder is not None else ""
            self.events.tokens(TokenUpdate(gen.request_id, gen.stage, tuple(tokens), index,
                                           now - gen.arrival_s, text))

    def report(self, d: Dispatch, gen: Generation | None, error: BaseException | None, compute_s: float) -> None:
        """Tell the runtime how the step went (the stage is done, or goes on); free the sequence if it is over."""
        events = self.events
        if gen is not None:
            gen.compute_s += compute_s
        if error is not None or gen is None or gen.seq.done:
            fut = events.loop.create_future()
            if error is not None:
                fut.set_exception(error)
            else:
                assert gen is not None  # a stage fails without a sequence only with an error
                fut.set_result(({"output_ids": gen.seq.output_ids()}, compute_s))
            if gen is not None and error is None:
                self.observe_finished(gen)
            events.stage_done(d, fut)
            job = events.job(d.request_id)
            # Done, or failed for good; a step lost with its device is retried from its cache.
            if gen is not None and (gen.seq.done or job is None or job.request.finished):
                self.free(gen)
            return
        if not events.step_done(d, compute_s):
            self.free(gen)  # its request ended while this step ran

    def observe_finished(self, gen: Generation) -> None:
        if self.metrics is None or gen.first_token_s is None:
            return
        n = len(gen.seq.generated)
        last_s = gen.last_token_s  # set with first_token_s
        tpot_s = (last_s - gen.first_token_s) / (n - 1) if n > 1 and last_s is not None else None
        self.metrics.llm_sequence_timings(gen.priority, gen.first_token_s - gen.arrival_s, tpot_s)

    # ---- ending ----------------------------------------------------------------------------
    def free(self, gen: Generation) -> None:
        """Drop a sequence's KV cache (once)."""
        if not gen.live:
            return
        gen.live = False
        gen.seq.release()
        self.live_sequences -= 1
        if self.metrics is not None:
            self.metrics.llm_sequence_ended(gen.priority)

    def release(self, job: Job) -> None:
        """The request ended: free its sequences, except those in a step now (freed after it,
        so a cancelled generation stops within one step; a Triton stream is cancelled now, once:
        both LLM runners call this)."""
        for gen in job.llm.values():
            cancel = gen.cancel
            if cancel is not None:
                gen.cancel = None
                cancel()
            if not gen.in_flight:
                self.free(gen)

    def stage_fields(self, job: Job, stage: str) -> dict[str, Any]:
        """StageTiming fields of an LLM stage: queue before prefill, first start, tokens, TTFT, TPOT."""
        gen = job.llm.get(stage)
        if gen is None:
            return {}
        n = len(gen.seq.generated)
        fields_ = {"tokens": n, "queue_s": gen.queue_s, "compute_s": gen.compute_s,
                   "start_offset_s": (gen.first_start_s or gen.arrival_s) - gen.arrival_s}
        if gen.first_token_s is not None:
            fields_["ttft_s"] = gen.first_token_s - gen.arrival_s
            if n > 1 and gen.last_token_s is not None:  # set with first_token_s
                fields_["tpot_s"] = (gen.last_token_s - gen.first_token_s) / (n - 1)
        return fields_


def _run_step(engine: LlmEngine, seqs: list[LlmSequence]) -> tuple[list[BaseException | None], float]:
    """In a device worker: prefill new sequences one by one, then one decode pass for the rest.
    A failed pass fails only the sequences in it; a sequence changes only when its pass worked."""
    t0 = time.perf_counter()
    errors: list[BaseException | None] = [None] * len(seqs)
    going = []
    for i, seq in enumerate(seqs):
        if seq.prefilled:
            going.append(i)
            continue
        try:
            engine.prefill(seq)
        except Exception as exc:  # reported per sequence, as the stage's error
            errors[i] = exc
    groups = [going] if engine.layout.batchable else [[i] for i in going]
    for group in filter(None, groups):
        try:
            engine.decode([seqs[i] for i in group])
        except Exception as exc:
            for i in group:
                errors[i] = exc
    return errors, time.perf_counter() - t0


def _run_to_end(engine: LlmEngine, seqs: list[LlmSequence]) -> tuple[list[BaseException | None], float]:
    """Every sequence to its end in this one dispatch (steps still batched)."""
    errors: list[BaseException | None] = [None] * len(seqs)
    elapsed_s = 0.0
    while live := [i for i, s in enumerate(seqs) if errors[i] is None and not s.done]:
        step_errors, step_s = _run_step(engine, [seqs[i] for i in live])
        elapsed_s += step_s
        for i, error in zip(live, step_errors, strict=True):
            errors[i] = error
    return errors, elapsed_s
