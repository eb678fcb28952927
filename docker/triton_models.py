"""Writes the model repository the Triton server of docker/compose.yaml serves: heddle's zoo models
on Triton's own ONNX Runtime backend, built into the cache dir the gateway shares.

Run in the heddle image (it has the zoo builder):  python triton_models.py CACHE_DIR
The ONNX files land in CACHE_DIR/models (where heddle's `builtin:` models are looked up, so both
sides run the very same files) and the repository in CACHE_DIR/triton-repo.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from heddle.backends.onnxruntime import read_io_spec
from heddle.backends.zoo.build import build_model
from heddle.scheduler.specs import TensorSpec

__all__ = ["MODELS", "config_text", "main", "write_repository"]

# The image models heddle-compose.toml hosts on Triton; heads follow the backbone's default width.
MODELS = ("cnn", "backbone", "head_cls", "head_emb")


def _config_type(datatype: str) -> str:
    # Triton's TYPE_* names are the KServe datatype names, except BYTES (TYPE_STRING).
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _tensors(kind: str, specs: Sequence[TensorSpec]) -> str:
    items = []
    for spec in specs:
        if not spec.shape or spec.shape[0] != -1:
            raise ValueError(f"{kind} {spec.name}: the first dim must be the dynamic batch dim, "
                             f"got {list(spec.shape)}")
        dims = ", ".join(str(d) for d in spec.shape[1:])  # Triton's config leaves the batch dim out
        items.append(f'  {{ name: "{spec.name}" data_type: {_config_type(spec.datatype)} dims: [ {dims} ] }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def config_text(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                max_batch_size: int = 32, priority_levels: int = 4) -> str:
    """config.pbtxt for an ONNX model on Triton's onnxruntime backend, with a dynamic batcher.

    No instance_group: Triton then puts an instance on each GPU it sees, or runs on CPU without
    one, so the same repository serves both compose variants. priority_levels > 0 gives the
    batcher priority queues (1 = most urgent; requests without a priority get the lowest).
    """
    text = f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
    text += _tensors("input", inputs) + _tensors("output", outputs)
    batcher = f"priority_levels: {priority_levels} default_priority_level: {priority_levels}" if priority_levels else ""
    return text + f"dynamic_batching {{ {batcher} }}\n"


def write_repository(cache_dir: Path, names: Sequence[str] = MODELS, *, max_batch_size: int = 32,
                     priority_levels: int = 4) -> Path:
    """Build the zoo models into cache_dir/models and write cache_dir/triton-repo; returns the repo."""
    repo = cache_dir / "triton-repo"
    for name in names:
        onnx_path = build_model(name, cache_dir / "models")
        inputs, outputs = read_io_spec(onnx_path)
        version = repo / name / "1"
        version.mkdir(parents=True, exist_ok=True)
        # copyfile, not copy2: the builder writes its files 0600 (owner: heddle's uid), and Triton runs
        # as another user; a fresh copy gets the default, world-readable mode.
        shutil.copyfile(onnx_path, version / "model.onnx")
        (repo / name / "config.pbtxt").write_text(
            config_text(name, inputs, outputs, max_batch_size=max_batch_size, priority_levels=priority_levels))
    return repo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir", type=Path, help="heddle's cache dir (the volume both services mount)")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--priority-levels", type=int, default=4,
                        help="priority queues in Triton's batcher (0: none, one FIFO queue)")
    args = parser.parse_args(argv)
    repo = write_repository(args.cache_dir, max_batch_size=args.max_batch_size,
                            priority_levels=args.priority_levels)
    print(f"wrote {', '.join(MODELS)} to {repo}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
