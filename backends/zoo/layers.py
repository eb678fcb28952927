"""Graph-building helpers for the zoo: a node/weight accumulator and the layers models are made of."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "FLOAT",
    "INT64",
    "IR_VERSION",
    "NEG_INF",
    "OPSET",
    "GraphBuilder",
    "attention",
    "conv_bn",
    "dim",
    "feed_forward",
    "gelu",
    "layer_norm",
    "linear",
    "residual_block",
    "scalar",
    "tensor",
]

OPSET = 17
# IR 8 is what opset 17 shipped with; older runtimes refuse newer IR versions.
IR_VERSION = 8
NEG_INF = -1e9  # added to masked attention scores; finite so fully-masked rows stay NaN-free


class GraphBuilder:
    """Accumulates nodes and seeded random weights; names are unique and deterministic."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    def fresh(self, prefix: str) -> str:
        n = self._counts.get(prefix, 0)
        self._counts[prefix] = n + 1
        return f"{prefix}_{n}"

    def const(self, value: Any, prefix: str = "const", dtype: Any = np.float32) -> str:
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, shape: Sequence[int], fan_in: int, prefix: str = "w") -> str:
        """He-normal weights, so activations keep their scale through the layers."""
        std = math.sqrt(2.0 / fan_in)
        return self.const(self.rng.normal(0.0, std, size=tuple(shape)), prefix)

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, **attrs: Any) -> Any:
        """Add a node; returns its output name, or a list of names when it has several."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if len(names) == 1 else names

    def model(self, name: str, inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto]) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, list(inputs), list(outputs), self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
            producer_name="heddle.zoo",
        )
        onnx.checker.check_model(model)
        return model


def tensor(name: str, elem_type: int, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    """A graph input/output; strings in `shape` are symbolic (dynamic) dims."""
    return helper.make_tensor_value_info(name, elem_type, list(shape))


FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def conv_bn(g: GraphBuilder, x: str, cin: int, cout: int, kernel: int = 3, stride: int = 1,
            relu: bool = True) -> str:
    """Conv + BatchNorm folded into the conv's weights and bias (as deployed exports have it)."""
    w = g.rng.normal(0.0, math.sqrt(2.0 / (cin * kernel * kernel)), size=(cout, cin, kernel, kernel))
    gamma = g.rng.uniform(0.5, 1.5, cout)
    beta = g.rng.normal(0.0, 0.1, cout)
    mean = g.rng.normal(0.0, 0.1, cout)
    var = g.rng.uniform(0.5, 1.5, cout)
    scale = gamma / np.sqrt(var + 1e-5)
    pad = kernel // 2
    y = g.op("Conv", [x, g.const(w * scale[:, None, None, None], "conv_w"), g.const(beta - mean * scale, "conv_b")],
             kernel_shape=[kernel, kernel], strides=[stride, stride], pads=[pad] * 4)
    return g.op("Relu", [y]) if relu else y


def residual_block(g: GraphBuilder, x: str, channels: int) -> str:
    """ResNet basic block: two 3x3 conv-bn, identity shortcut, ReLU after the sum."""
    y = conv_bn(g, x, channels, channels)
    y = conv_bn(g, y, channels, channels, relu=False)
    return g.op("Relu", [g.op("Add", [x, y])])


def linear(g: GraphBuilder, x: str, din: int, dout: int) -> str:
    """x @ W + b over the last axis (MatMul, so it works for [N, D] and [B, S, D] alike)."""
    y = g.op("MatMul", [x, g.weight((din, dout), din, "linear_w")])
    return g.op("Add", [y, g.const(g.rng.normal(0.0, 0.02, dout), "linear_b")])


def layer_norm(g: GraphBuilder, x: str, dim: int) -> str:
    scale = g.const(g.rng.uniform(0.9, 1.1, dim), "ln_scale")
    bias = g.const(g.rng.normal(0.0, 0.02, dim), "ln_bias")
    return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)


def gelu(g: GraphBuilder, x: str) -> str:
    """Exact GELU, x * 0.5 * (1 + erf(x / sqrt 2)); the Gelu op only arrives in opset 20."""
    erf = g.op("Erf", [g.op("Mul", [x, g.const(1.0 / math.sqrt(2.0))])])
    return g.op("Mul", [g.op("Mul", [x, g.const(0.5)]), g.op("Add", [erf, g.const(1.0)])])


def _split_heads(g: GraphBuilder, x: str, heads: int, head_dim: int, perm: Sequence[int]) -> str:
    """[B, S, H] -> [B, heads, S, head_dim] (perm 0,2,1,3) or its key form [B, heads, head_dim, S]."""
    shaped = g.op("Reshape", [x, g.const([0, 0, heads, head_dim], "shape", np.int64)])
    return g.op("Transpose", [shaped], perm=list(perm))


def attention(g: GraphBuilder, x: str, bias: str, hidden: int, heads: int,
              past: tuple[str, str] | None = None,
              present: tuple[str, str] | None = None) -> str:
    """Multi-head self-attention with an additive mask `bias` broadcast to [B, heads, S, T].

    With `past`/`present` (names of [B, heads, P, head_dim] tensors) keys and values are
    appended to the cache, and queries attend to past + new positions.
    """
    head_dim = hidden // heads
    q = _split_heads(g, linear(g, x, hidden, hidden), heads, head_dim, (0, 2, 1, 3))
    k = _split_heads(g, linear(g, x, hidden, hidden), heads, head_dim, (0, 2, 1, 3))
    v = _split_heads(g, linear(g, x, hidden, hidden), heads, head_dim, (0, 2, 1, 3))
    if past is not None and present is not None:
        k = g.op("Concat", [past[0], k], [present[0]], axis=2)
        v = g.op("Concat", [past[1], v], [present[1]], axis=2)
    k_t = g.op("Transpose", [k], perm=[0, 1, 3, 2])
    scores = g.op("Mul", [g.op("MatMul", [q, k_t]), g.const(1.0 / math.sqrt(head_dim))])
    probs = g.op("Softmax", [g.op("Add", [scores, bias])], axis=-1)
    context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    merged = g.op("Reshape", [context, g.const([0, 0, hidden], "shape", np.int64)])
    return linear(g, merged, hidden, hidden)


def feed_forward(g: GraphBuilder, x: str, hidden: int, ffn: int) -> str:
    return linear(g, gelu(g, linear(g, x, hidden, ffn)), ffn, hidden)


def dim(g: GraphBuilder, x: str, axis: int) -> str:
    """A tensor's size along one axis, as a 1-element INT64 tensor."""
    shape = g.op("Shape", [x])
    return g.op("Gather", [shape, g.const([axis], "axis", np.int64)], axis=0)


def scalar(g: GraphBuilder, one_elem: str) -> str:
    return g.op("Squeeze", [one_elem, g.const([0], "axes", np.int64)])
