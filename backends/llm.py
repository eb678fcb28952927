"""LLM generation over an ONNX decoder with a KV cache: sequences, sampling, prefill and batched decode.

The decoder follows the common export convention (input_ids, attention_mask, position_ids,
past_key_values.N.key/value -> logits, present.N.key/value). The engine never owns a session: it
calls a `run(feed) -> outputs` function (an Executor's run bound to a model), so one prefill or one
decode step is one call the scheduler can place on any device. A sequence's KV cache is plain
numpy, so it moves between devices with the sequence: the next forward pass feeds it wherever.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heddle.backends.base import InputError, numpy_dtype
from heddle.scheduler.specs import ModelSpec, TensorSpec

__all__ = [
    "DecoderLayout", "GenerationConfig", "KVCache", "LlmEngine", "LlmSequence", "decoder_spec",
    "sample_token", "stage_io",
]

RunFn = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)$")


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """How to pick tokens. temperature 0 is greedy; seed None draws a fresh one."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> GenerationConfig:
        """The defaults a model's config options give (unknown keys are not generation's)."""
        names = {f.name for f in dataclasses.fields(cls)}
        raw = {k: v for k, v in options.items() if k in names}
        if "stop_token_ids" in raw:
            raw["stop_token_ids"] = tuple(int(i) for i in raw["stop_token_ids"])
        return cls(**raw)

    def with_overrides(self, **overrides: Any) -> GenerationConfig:
        """These settings, with the given ones replaced (None means keep)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True, slots=True)
class DecoderLayout:
    """What feeds of a decoder look like, read from its graph IO spec."""

    layers: int
    heads: int
    head_dim: int
    vocab: int
    kv_dtype: np.dtype
    batchable: bool  # input_ids has a dynamic batch dim: decode steps of several sequences can share a pass
    max_positions: int | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> DecoderLayout:
        names = {t.name: t for t in spec.inputs}
        for needed in ("input_ids", "attention_mask", "position_ids"):
            if needed not in names:
                raise InputError(f"model {spec.name}: decoder input {needed} is missing")
        pasts = sorted((int(m[1]), t) for t in spec.inputs if (m := _PAST.match(t.name)) and m[2] == "key")
        logits = spec.output("logits")
        if not pasts or logits is None or len(pasts[0][1].shape) != 4:
            raise InputError(f"model {spec.name}: not a KV-cache decoder (past_key_values.N.key "
                             f"[B, heads, past, head_dim] inputs and a logits output)")
        kv = pasts[0][1]
        heads = kv.shape[1] if kv.shape[1] > 0 else int(spec.options.get("num_heads", -1))
        head_dim = kv.shape[3] if kv.shape[3] > 0 else int(spec.options.get("head_dim", -1))
        if heads < 1 or head_dim < 1:
            raise InputError(f"model {spec.name}: KV cache dims are dynamic; set num_heads and head_dim")
        max_positions = spec.options.get("max_positions")
        return cls(len(pasts), heads, head_dim, logits.shape[-1], numpy_dtype(kv.datatype),
                   names["input_ids"].shape[0] < 0, None if max_positions is None else int(max_positions))


class KVCache:
    """One sequence's past keys and values: per layer, [1, heads, length, head_dim] arrays.

    Host memory on purpose: a sequence frozen between tokens holds no accelerator memory, and
    moving it to another device is relabelling it (the next forward pass copies it there)."""

    def __init__(self, keys: list[np.ndarray], values: list[np.ndarray], device: str | None = None) -> None:
        self.keys, self.values, self.device = keys, values, device

    @classmethod
    def empty(cls, layout: DecoderLayout) -> KVCache:
        shape = (1, layout.heads, 0, layout.head_dim)
        return cls([np.zeros(shape, layout.kv_dtype) for _ in range(layout.layers)],
                   [np.zeros(shape, layout.kv_dtype) for _ in range(layout.layers)])

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)

    def moved_to(self, device: str) -> KVCache:
        self.device = device
        return self

    def clear(self) -> None:
        self.keys, self.values = [], []


@dataclass(slots=True, eq=False)
class LlmSequence:
    """One generation: its prompt, what it produced, its cache and its random stream."""

    prompt_ids: np.ndarray  # 1-D int64
    config: GenerationConfig
    rng: np.random.Generator = field(init=False)
    cache: KVCache | None = None
    generated: list[int] = field(default_factory=list)
    finish_reason: str = ""  # "" while going on, then "length" | "stop" | "cancelled"

    def __post_init__(self) -> None:
        self.prompt_ids = np.asarray(self.prompt_ids, dtype=np.int64).reshape(-1)
        if self.prompt_ids.size == 0:
            raise InputError("the prompt has no tokens")
        self.rng = np.random.default_rng(self.config.seed)

    @property
    def done(self) -> bool:
        return bool(self.finish_reason)

    @property
    def prefilled(self) -> bool:
        return self.cache is not None

    def output_ids(self) -> np.ndarray:
        return np.asarray(self.generated, dtype=np.int64).reshape(1, -1)

    def release(self) -> int:
        """Drop the KV cache; the bytes it held."""
        freed = 0
        if self.cache is not None:
            freed = self.cache.nbytes
            self.cache.clear()
        if not self.finish_reason:
            self.finish_reason = "cancelled"
        return freed

    def absorb(self, logits: np.ndarray, cache: KVCache) -> int:
        """The engine's forward pass for this sequence: sample its next token from `logits`, keep
        the grown cache, and end it on a stop token or at max_new_tokens. The token."""
        token = sample_token(logits, self.config, self.rng)
        self.cache = cache
        self.generated.append(token)
        if token in self.config.stop_token_ids:
            self.finish_reason = "stop"
        elif len(self.generated) >= self.config.max_new_tokens:
            self.finish_reason = "length"
        return token


def sample_token(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    """The next token from one row of logits: argmax, or a draw after temperature, top-k, top-p."""
    if config.temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / config.temperature
    if 0 < config.top_k < scaled.size:
        cut = np.partition(scaled, -config.top_k)[-config.top_k]
        scaled = np.where(scaled >= cut, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if config.top_p < 1:
        order = np.argsort(-probs, kind="stable")
        # Keep the smallest head of the distribution whose mass reaches top_p (at least one token).
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), config.top_p)) + 1]
        kept = np.zeros_like(probs)
        kept[keep] = probs[keep]
        probs = kept / kept.sum()
    return int(rng.choice(probs.size, p=probs))


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
