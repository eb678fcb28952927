"""Zoo detector: a small fully-convolutional net scoring every cell of an 8x8 grid over a 64x64
image for "something is here" (random weights, realistic shape: the first stage of a detect ->
crop -> classify pipeline, whose region count varies with the image)."""

from __future__ import annotations

import onnx

from heddle.backends.zoo.layers import FLOAT, GraphBuilder, conv_bn, tensor

__all__ = ["GRID", "detector"]

IMAGE_SIZE = 64
GRID = 8  # cells per side: a 64x64 image halved three times


def detector(widths: tuple[int, int, int] = (16, 32, 32), seed: int = 4) -> onnx.ModelProto:
    """"image" [N,3,64,64] -> "scores" [N,8,8] in (0, 1): three strided conv-bn layers, a 1x1
    conv to one channel, and a sigmoid. About 6 M multiply-adds, well under a millisecond."""
    g = GraphBuilder(seed)
    x, cin = "image", 3
    for width in widths:
        x, cin = conv_bn(g, x, cin, width, stride=2), width
    logits = conv_bn(g, x, cin, 1, kernel=1, relu=False)
    g.op("Squeeze", [g.op("Sigmoid", [logits]), g.const([1], "axis", dtype="int64")], ["scores"])
    return g.model("detector", [tensor("image", FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
                   [tensor("scores", FLOAT, ["batch", GRID, GRID])])
