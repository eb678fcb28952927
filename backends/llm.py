"""LLM generation over an ONNX decoder with a KV cache: prefill and batched decode of sequences
(the sequences, their caches and sampling: llm_state.py).

The decoder follows the common export convention (input_ids, attention_mask, position_ids,
past_key_values.N.key/value -> logits, present.N.key/value). The engine never owns a session: it
calls a `run(feed) -> outputs` function (an Executor's run bound to a model), so one prefill or one
decode step is one call the scheduler can place on any device. A sequence's KV cache is plain
numpy, so it moves between devices with the sequence: the next forward pass feeds it wherever.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from heddle.backends.base import InputError
from heddle.backends.llm_state import DecoderLayout, GenerationConfig, KVCache, LlmSequence, sample_token
from heddle.scheduler.specs import ModelSpec, TensorSpec

# DecoderLayout, GenerationConfig, KVCache, LlmSequence and sample_token live in llm_state.py, and
# are re-exported: this module is where their callers have found them.
__all__ = [
    "DecoderLayout", "GenerationConfig", "KVCache", "LlmEngine", "LlmSequence", "decoder_spec",
    "sample_token", "stage_io",
]

RunFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


class LlmEngine:
    """Prefill and decode steps of sequences through one decoder `run` function."""

    def __init__(self, run: RunFn, layout: DecoderLayout) -> None:
        self.run, self.layout = run, layout

    def check(self, seq: LlmSequence) -> None:
        """InputError for a prompt this model cannot take (ids out of vocab, too long)."""
        ids = seq.prompt_ids
        if ids.min() < 0 or ids.max() >= self.layout.vocab:
            raise InputError(f"prompt token ids must be in [0, {self.layout.vocab}), got "
                             f"[{ids.min()}, {ids.max()}]")
        limit = self.layout.max_positions
        if limit is not None and ids.size + seq.config.max_new_tokens > limit:
            raise InputError(f"prompt of {ids.size} tokens + max_new_tokens {seq.config.max_new_tokens} "
                             f"exceeds the model's {limit} positions")

    def step(self, seqs: list[LlmSequence]) -> list[int]:
        """One unit of work for each sequence: prefill the new ones (one pass each), one decode
        step for the others (one pass for all when the model batches). Returns the new tokens."""
        fresh = [s for s in seqs if not s.prefilled]
        going = [s for s in seqs if s.prefilled]
        tokens = {id(s): self.prefill(s) for s in fresh}
        if going:
            groups = [going] if self.layout.batchable else [[s] for s in going]
            for group in groups:
                tokens.update(zip(map(id, group), self.decode(group), strict=True))
        return [tokens[id(s)] for s in seqs]

    def prefill(self, seq: LlmSequence) -> int:
        self.check(seq)
        ids = seq.prompt_ids.reshape(1, -1)
        n = ids.shape[1]
        feed = {"input_ids": ids, "attention_mask": np.ones((1, n), np.int64),
                "position_ids": np.arange(n, dtype=np.int64).reshape(1, n)}
        feed.update(_past_feed(KVCache.empty(self.layout)))
        out = self.run(feed)
        return seq.absorb(out["logits"][0, -1], _present(out, self.layout, 0, 0))

    def decode(self, seqs: list[LlmSequence]) -> list[int]:
        """One token for each sequence in one pass: caches left-padded to the longest, the
        padding masked out, each sequence at its own position."""
        lengths = [s.cache.length for s in seqs]
        longest = max(lengths)
        mask = np.zeros((len(seqs), longest + 1), np.int64)
        for i, n in enumerate(lengths):
            mask[i, longest - n:] = 1
        feed = {"input_ids": np.array([[s.generated[-1]] for s in seqs], np.int64), "attention_mask": mask,
                "position_ids": np.array([[n] for n in lengths], np.int64)}
        for i in range(self.layout.layers):
            for kind, arrays in (("key", [s.cache.keys[i] for s in seqs]),
                                 ("value", [s.cache.values[i] for s in seqs])):
                feed[f"past_key_values.{i}.{kind}"] = _left_pad(arrays, longest)
        out = self.run(feed)
        return [s.absorb(out["logits"][row, -1], _present(out, self.layout, row, longest - n))
                for row, (s, n) in enumerate(zip(seqs, lengths, strict=True))]

    def generate(self, prompt_ids: Any, config: GenerationConfig) -> list[int]:
        """A whole generation, one sequence, start to end (for direct use and tests)."""
        seq = LlmSequence(prompt_ids, config)
        while not seq.done:
            self.step([seq])
        return list(seq.generated)


def _past_feed(cache: KVCache) -> dict[str, np.ndarray]:
    feed = {}
    for i, (k, v) in enumerate(zip(cache.keys, cache.values, strict=True)):
        feed[f"past_key_values.{i}.key"], feed[f"past_key_values.{i}.value"] = k, v
    return feed


def _left_pad(arrays: list[np.ndarray], length: int) -> np.ndarray:
    if len(arrays) == 1:
        return arrays[0]
    first = arrays[0]
    out = np.zeros((len(arrays), first.shape[1], length, first.shape[3]), first.dtype)
    for row, a in enumerate(arrays):
        out[row, :, length - a.shape[2]:] = a[0]
    return out


def _present(out: Mapping[str, np.ndarray], layout: DecoderLayout, row: int, pad: int) -> KVCache:
    """One row's new cache, its left padding cut off; rows of a batch are copied so the batch's
    arrays can go (a batch of one owns its arrays already)."""
    take = np.asarray if out["logits"].shape[0] == 1 else np.array
    keys = [take(out[f"present.{i}.key"][row:row + 1, :, pad:]) for i in range(layout.layers)]
    values = [take(out[f"present.{i}.value"][row:row + 1, :, pad:]) for i in range(layout.layers)]
    return KVCache(keys, values)


def stage_io() -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """What an LLM stage takes and gives in a pipeline: prompt ids in, generated ids out."""
    return ((TensorSpec("input_ids", "INT64", (1, -1)),), (TensorSpec("output_ids", "INT64", (1, -1)),))


@functools.lru_cache(maxsize=64)
def _graph_io(artifact: str) -> tuple:
    from heddle.backends.onnxruntime import read_io_spec

    return read_io_spec(artifact)


def decoder_spec(model: ModelSpec) -> ModelSpec:
    """The model as its executor sees it: the decoder graph's own inputs and outputs."""
    inputs, outputs = _graph_io(model.artifact)
    return dataclasses.replace(model, inputs=inputs, outputs=outputs)
