"""Zoo decoder-only LLM (GPT-style, pre-LN) with a KV cache in the common ONNX export convention."""

from __future__ import annotations

import numpy as np
import onnx

from heddle.backends.zoo.layers import (
    FLOAT,
    INT64,
    NEG_INF,
    GraphBuilder,
    attention,
    dim,
    feed_forward,
    layer_norm,
    scalar,
    tensor,
)

__all__ = ["llm", "llm_io_names"]


def llm_io_names(layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of an llm with `layers` layers, in graph order."""
    past = [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def _causal_bias(g: GraphBuilder) -> str:
    """Additive bias [B, 1, S, T]: query i (absolute position P+i) sees key j iff j <= P+i and mask[j].

    S new tokens, T = P + S positions in attention_mask; so prefill (P=0, S>1) and decode
    (P>0, S=1) use one graph, and left padding is masked out too.
    """
    seq = scalar(g, dim(g, "input_ids", 1))
    total = scalar(g, dim(g, "attention_mask", 1))
    one = g.const(1, "one", np.int64)
    rows = g.op("Range", [g.op("Sub", [total, seq]), total, one])
    cols = g.op("Range", [g.const(0, "zero", np.int64), total, one])
    causal = g.op("LessOrEqual", [
        g.op("Unsqueeze", [cols, g.const([0], "axes", np.int64)]),
        g.op("Unsqueeze", [rows, g.const([1], "axes", np.int64)]),
    ])
    padding = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=onnx.TensorProto.BOOL),
                                 g.const([1, 2], "axes", np.int64)])
    return g.op("Where", [g.op("And", [causal, padding]), g.const(0.0), g.const(NEG_INF)])


def llm(layers: int = 2, hidden: int = 128, heads: int = 4, vocab: int = 512, max_positions: int = 512,
        ffn: int | None = None, seed: int = 20) -> onnx.ModelProto:
    """input_ids/position_ids [B,S], attention_mask [B,P+S], past [B,heads,P,hd] -> logits [B,S,V], present."""
    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
    head_dim = hidden // heads
    g = GraphBuilder(seed)
    words = g.const(g.rng.normal(0.0, 0.02, (vocab, hidden)), "word_emb")
    positions = g.const(g.rng.normal(0.0, 0.02, (max_positions, hidden)), "pos_emb")
    x = g.op("Add", [g.op("Gather", [words, "input_ids"]), g.op("Gather", [positions, "position_ids"])])
    bias = _causal_bias(g)
    for i in range(layers):
        past = (f"past_key_values.{i}.key", f"past_key_values.{i}.value")
        present = (f"present.{i}.key", f"present.{i}.value")
        x = g.op("Add", [x, attention(g, layer_norm(g, x, hidden), bias, hidden, heads, past, present)])
        x = g.op("Add", [x, feed_forward(g, layer_norm(g, x, hidden), hidden, ffn or 4 * hidden)])
    lm_head = g.weight((hidden, vocab), hidden, "lm_head")
    g.op("MatMul", [layer_norm(g, x, hidden), lm_head], ["logits"])

    kv_past = ["batch", heads, "past_sequence", head_dim]
    kv_total = ["batch", heads, "total_sequence", head_dim]
    inputs = [
        tensor("input_ids", INT64, ["batch", "sequence"]),
        tensor("attention_mask", INT64, ["batch", "total_sequence"]),
        tensor("position_ids", INT64, ["batch", "sequence"]),
    ]
    outputs = [tensor("logits", FLOAT, ["batch", "sequence", vocab])]
    for i in range(layers):
        inputs += [tensor(f"past_key_values.{i}.{kv}", FLOAT, kv_past) for kv in ("key", "value")]
        outputs += [tensor(f"present.{i}.{kv}", FLOAT, kv_total) for kv in ("key", "value")]
    return g.model("llm", inputs, outputs)
