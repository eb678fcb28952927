"""Zoo text models: a BERT-like encoder (post-LN, masked attention, mean pooling) and a classifier head."""

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
    linear,
    scalar,
    tensor,
)

__all__ = ["encoder", "text_cls"]


def _embed(g: GraphBuilder, vocab: int, hidden: int, max_seq: int) -> str:
    """Token + learned position embeddings, then LayerNorm; positions are 0..S-1."""
    words = g.const(g.rng.normal(0.0, 0.02, (vocab, hidden)), "word_emb")
    positions = g.const(g.rng.normal(0.0, 0.02, (max_seq, hidden)), "pos_emb")
    seq = scalar(g, dim(g, "input_ids", 1))
    position_ids = g.op("Range", [g.const(0, "zero", np.int64), seq, g.const(1, "one", np.int64)])
    x = g.op("Add", [g.op("Gather", [words, "input_ids"]), g.op("Gather", [positions, position_ids])])
    return layer_norm(g, x, hidden)


def _mask_bias(g: GraphBuilder, mask_float: str) -> str:
    """attention_mask [B, S] (1 keep, 0 pad) -> additive bias [B, 1, 1, S]."""
    bias = g.op("Mul", [g.op("Sub", [g.const(1.0), mask_float]), g.const(NEG_INF)])
    return g.op("Unsqueeze", [bias, g.const([1, 2], "axes", np.int64)])


def _mean_pool(g: GraphBuilder, hidden_state: str, mask_float: str) -> str:
    """Mean of the kept positions: sum(h * m) / max(sum(m), 1)."""
    m = g.op("Unsqueeze", [mask_float, g.const([2], "axes", np.int64)])
    axis = g.const([1], "axes", np.int64)
    total = g.op("ReduceSum", [g.op("Mul", [hidden_state, m]), axis], keepdims=0)
    count = g.op("Max", [g.op("ReduceSum", [m, axis], keepdims=0), g.const(1.0)])
    return g.op("Div", [total, count])


def encoder(layers: int = 2, hidden: int = 128, heads: int = 4, vocab: int = 1000, max_seq: int = 128,
            ffn: int | None = None, seed: int = 10) -> onnx.ModelProto:
    """"input_ids", "attention_mask" INT64 [B, S] -> "last_hidden_state" [B, S, H], "pooled" [B, H]."""
    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
    g = GraphBuilder(seed)
    x = _embed(g, vocab, hidden, max_seq)
    mask_float = g.op("Cast", ["attention_mask"], to=FLOAT)
    bias = _mask_bias(g, mask_float)
    for _ in range(layers):
        x = layer_norm(g, g.op("Add", [x, attention(g, x, bias, hidden, heads)]), hidden)
        x = layer_norm(g, g.op("Add", [x, feed_forward(g, x, hidden, ffn or 4 * hidden)]), hidden)
    g.op("Identity", [x], ["last_hidden_state"])
    g.op("Identity", [_mean_pool(g, x, mask_float)], ["pooled"])
    return g.model(
        "encoder",
        [tensor("input_ids", INT64, ["batch", "sequence"]), tensor("attention_mask", INT64, ["batch", "sequence"])],
        [tensor("last_hidden_state", FLOAT, ["batch", "sequence", hidden]), tensor("pooled", FLOAT, ["batch", hidden])],
    )


def text_cls(hidden: int = 128, classes: int = 4, seed: int = 11) -> onnx.ModelProto:
    """"pooled" [N, H] -> "logits" [N, classes]: a tanh dense layer (BERT's pooler) and a classifier."""
    g = GraphBuilder(seed)
    y = linear(g, g.op("Tanh", [linear(g, "pooled", hidden, hidden)]), hidden, classes)
    g.op("Identity", [y], ["logits"])
    return g.model(
        "text_cls",
        [tensor("pooled", FLOAT, ["batch", hidden])],
        [tensor("logits", FLOAT, ["batch", classes])],
    )
