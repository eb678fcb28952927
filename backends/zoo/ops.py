"""Python stage functions for the default pipelines (called as fn(**inputs) -> dict of arrays)."""

from __future__ import annotations

import numpy as np

from heddle.scheduler.specs import TensorSpec

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "OP_IO", "echo", "join", "postprocess", "preprocess"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(image: np.ndarray) -> dict[str, np.ndarray]:
    """UINT8 HWC image(s) [64,64,3] or [N,64,64,3] -> "image" FP32 [N,3,64,64], ImageNet-normalised."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H,W,3] or [N,H,W,3], got shape {list(image.shape)}")
    scaled = image.astype(np.float32) * np.float32(1.0 / 255.0)
    normalised = (scaled - IMAGENET_MEAN) / IMAGENET_STD
    return {"image": np.ascontiguousarray(normalised.transpose(0, 3, 1, 2))}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def postprocess(logits: np.ndarray) -> dict[str, np.ndarray]:
    """"logits" [N,C] -> "probs" FP32 softmax [N,C] and "label" INT64 argmax [N]."""
    return {"probs": _softmax(logits), "label": logits.argmax(axis=-1).astype(np.int64)}


def join(logits: np.ndarray, embedding: np.ndarray) -> dict[str, np.ndarray]:
    """The fork/join pipeline's join: a classification and an embedding of the same image, together."""
    return {**postprocess(logits), "embedding": embedding.astype(np.float32, copy=False)}


def echo(x: np.ndarray) -> dict[str, np.ndarray]:
    """Returns its input as "y": a stage that costs nothing, for measuring overhead."""
    return {"y": x}


# The IO specs of the functions above, for configs that declare them as python-backend models.
# preprocess also takes a single [64,64,3] image, which a TensorSpec cannot say alongside [N,...].
OP_IO: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    "preprocess": (
        (TensorSpec("image", "UINT8", (-1, 64, 64, 3)),),
        (TensorSpec("image", "FP32", (-1, 3, 64, 64)),),
    ),
    "postprocess": (
        (TensorSpec("logits", "FP32", (-1, 10)),),
        (TensorSpec("probs", "FP32", (-1, 10)), TensorSpec("label", "INT64", (-1,))),
    ),
    "join": (
        (TensorSpec("logits", "FP32", (-1, 10)), TensorSpec("embedding", "FP32", (-1, 32))),
        (TensorSpec("probs", "FP32", (-1, 10)), TensorSpec("label", "INT64", (-1,)),
         TensorSpec("embedding", "FP32", (-1, 32))),
    ),
    "echo": ((TensorSpec("x", "FP32", (-1,)),), (TensorSpec("y", "FP32", (-1,)),)),
}
