"""Zoo vision models: a small ResNet-style classifier, its trunk, and MLP heads over its features."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from heddle.backends.zoo.layers import FLOAT, GraphBuilder, conv_bn, linear, residual_block, tensor

__all__ = ["backbone", "cnn", "head_cls", "head_emb"]

IMAGE_SIZE = 64


def _trunk(g: GraphBuilder, image: str, widths: Sequence[int], blocks: int) -> str:
    """Stem conv + max-pool, then per stage a (strided, widening) conv and `blocks` residual blocks.

    A ResNet-18 in miniature: with the defaults a 64x64 image ends 8x8x64 after ~100 M
    multiply-adds, 1-2 ms on one core.
    """
    x = conv_bn(g, image, 3, widths[0])
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    cin = widths[0]
    for i, width in enumerate(widths):
        if i > 0:
            x = conv_bn(g, x, cin, width, stride=2)
        for _ in range(blocks):
            x = residual_block(g, x, width)
        cin = width
    return g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)


def _image_input() -> onnx.ValueInfoProto:
    return tensor("image", FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])


def backbone(widths: Sequence[int] = (32, 64, 64), blocks: int = 2, seed: int = 0) -> onnx.ModelProto:
    """"image" [N,3,64,64] -> "features" [N, widths[-1]] (global-average-pooled)."""
    g = GraphBuilder(seed)
    features = _trunk(g, "image", widths, blocks)
    g.op("Identity", [features], ["features"])
    return g.model("backbone", [_image_input()], [tensor("features", FLOAT, ["batch", widths[-1]])])


def cnn(widths: Sequence[int] = (32, 64, 64), blocks: int = 2, classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """"image" [N,3,64,64] -> "logits" [N, classes]: the trunk and a linear classifier."""
    g = GraphBuilder(seed)
    features = _trunk(g, "image", widths, blocks)
    g.op("Identity", [linear(g, features, widths[-1], classes)], ["logits"])
    return g.model("cnn", [_image_input()], [tensor("logits", FLOAT, ["batch", classes])])


def _mlp(g: GraphBuilder, x: str, din: int, hidden: int, dout: int) -> str:
    return linear(g, g.op("Relu", [linear(g, x, din, hidden)]), hidden, dout)


def head_cls(features: int = 64, hidden: int = 128, classes: int = 10, seed: int = 2) -> onnx.ModelProto:
    """"features" [N, features] -> "logits" [N, classes]: a 2-layer MLP."""
    g = GraphBuilder(seed)
    g.op("Identity", [_mlp(g, "features", features, hidden, classes)], ["logits"])
    return g.model(
        "head_cls",
        [tensor("features", FLOAT, ["batch", features])],
        [tensor("logits", FLOAT, ["batch", classes])],
    )


def head_emb(features: int = 64, hidden: int = 128, dim: int = 32, seed: int = 3) -> onnx.ModelProto:
    """"features" [N, features] -> "embedding" [N, dim]: a 2-layer MLP, L2-normalised."""
    g = GraphBuilder(seed)
    y = _mlp(g, "features", features, hidden, dim)
    g.op("LpNormalization", [y], ["embedding"], axis=-1, p=2)
    return g.model(
        "head_emb",
        [tensor("features", FLOAT, ["batch", features])],
        [tensor("embedding", FLOAT, ["batch", dim])],
    )
