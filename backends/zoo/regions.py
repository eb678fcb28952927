"""Python stages of the demo detect -> crop -> classify pipeline (docs/CONFIG.md, "Fan-out"): crop
the detector's confident cells into classifier-sized images, one list element per region, and
gather the per-region classifications back into tensors."""

from __future__ import annotations

import numpy as np

from heddle.backends.zoo.detector import GRID, IMAGE_SIZE
from heddle.backends.zoo.ops import postprocess

__all__ = ["CLASSES", "crop_regions", "gather_regions"]

CELL = IMAGE_SIZE // GRID  # pixels per grid cell
WINDOW = 2 * CELL  # a region: the cell and half a cell around it, clipped to the image
CLASSES = 10


def crop_regions(image: np.ndarray, scores: np.ndarray, threshold: float = 0.5,
                 max_regions: int = 8) -> dict[str, object]:
    """"image" [N,3,64,64] and its cells' "scores" [N,8,8] -> "crops", a list with one [1,3,64,64]
    image per region (cells scoring over `threshold`, the best `max_regions` of each image, best
    first), and "boxes" [R,6]: image index, y0, x0, y1, x1 in pixels, score. No region: [] and [0,6]."""
    crops, boxes = [], []
    for n in range(scores.shape[0]):
        flat = scores[n].reshape(-1)
        best = [int(i) for i in np.argsort(-flat, kind="stable")[:max(0, max_regions)] if flat[i] > threshold]
        for cell in best:
            cy, cx = divmod(cell, GRID)
            y0 = min(max(0, cy * CELL - CELL // 2), IMAGE_SIZE - WINDOW)
            x0 = min(max(0, cx * CELL - CELL // 2), IMAGE_SIZE - WINDOW)
            window = image[n:n + 1, :, y0:y0 + WINDOW, x0:x0 + WINDOW]
            # Nearest-neighbour upscale to the classifier's 64x64: no interpolation library needed.
            crops.append(np.ascontiguousarray(window.repeat(IMAGE_SIZE // WINDOW, 2).repeat(IMAGE_SIZE // WINDOW, 3)))
            boxes.append([n, y0, x0, y0 + WINDOW, x0 + WINDOW, flat[cell]])
    return {"crops": crops, "boxes": np.asarray(boxes, np.float32).reshape(-1, 6)}


def gather_regions(logits: list[np.ndarray], boxes: np.ndarray) -> dict[str, np.ndarray]:
    """The classifier's "logits" per region (a list of [1,10], in region order) -> "probs" [R,10] and
    "label" [R] beside the regions' "boxes" [R,6]."""
    joined = np.concatenate(logits, axis=0) if logits else np.zeros((0, CLASSES), np.float32)
    return {"boxes": boxes, **postprocess(joined)}
