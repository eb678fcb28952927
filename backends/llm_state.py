"""What the LLM engine works on: a decoder's layout read from its graph IO, a generation's
settings, its sequence of tokens with its KV cache, and the sampling of each next token.

Apart from llm.py, which owns the forward passes (prefill, batched decode) through a decoder's
run function: these are plain data and numpy with no session, held by the runtime between
steps (server/runtime/llm_*.py) and by a Triton-hosted LLM's stream, which has no engine.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heddle.backends.base import InputError, numpy_dtype
from heddle.scheduler.specs import ModelSpec

__all__ = ["DecoderLayout", "GenerationConfig", "KVCache", "LlmSequence", "sample_token"]

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
