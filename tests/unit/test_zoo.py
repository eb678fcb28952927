"""Tests for the model zoo: building, caching, the models' IO and numerics, and the Python stage ops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from heddle.backends.zoo import MODEL_NAMES, build_default_models, build_model, ops
from heddle.backends.zoo.llm import llm_io_names

EXPECTED_IO = {
    "cnn": (["image"], ["logits"]),
    "backbone": (["image"], ["features"]),
    "head_cls": (["features"], ["logits"]),
    "head_emb": (["features"], ["embedding"]),
    "detector": (["image"], ["scores"]),
    "encoder": (["input_ids", "attention_mask"], ["last_hidden_state", "pooled"]),
    "text_cls": (["pooled"], ["logits"]),
    "llm": llm_io_names(2),
}


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_default_models(tmp_path_factory.mktemp("zoo"))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --- building and caching ---

def test_default_set_has_every_model_with_its_documented_io(zoo: dict[str, Path]) -> None:
    """Every zoo model is built, passes the ONNX checker, and has exactly the documented tensor names."""
    assert set(zoo) == set(MODEL_NAMES) == set(EXPECTED_IO)
    for name, path in zoo.items():
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        names = ([v.name for v in model.graph.input], [v.name for v in model.graph.output])
        assert names == tuple(EXPECTED_IO[name]), name


def test_second_build_reuses_the_file(tmp_path: Path) -> None:
    """Building the same model twice returns the same path and leaves the file untouched."""
    first = build_model("head_cls", tmp_path)
    mtime_ns = first.stat().st_mtime_ns
    again = build_default_models(tmp_path)["head_cls"]
    assert again == first and again.stat().st_mtime_ns == mtime_ns


def test_size_change_builds_a_new_file(tmp_path: Path) -> None:
    """Different sizes give a different file, with the new sizes inside."""
    small = build_model("head_cls", tmp_path, hidden=16)
    large = build_model("head_cls", tmp_path, hidden=32)
    assert small != large and small.exists() and large.exists()
    dims = [tuple(i.dims) for i in onnx.load(str(large)).graph.initializer]
    assert (64, 32) in dims


def test_defaults_spelled_out_share_the_file_and_builds_are_deterministic(tmp_path: Path) -> None:
    """Passing default sizes explicitly (tuple or list) names the same file, and builds are byte-identical."""
    implicit = build_model("cnn", tmp_path / "a")
    explicit = build_model("cnn", tmp_path / "b", widths=[32, 64, 64], blocks=2)
    assert implicit.name == explicit.name
    assert implicit.read_bytes() == explicit.read_bytes()


def test_build_leaves_no_temporary_files(tmp_path: Path) -> None:
    """Atomic writes leave only finished .onnx files in the cache dir."""
    build_default_models(tmp_path)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".onnx"] * len(MODEL_NAMES)


def test_unknown_model_or_size_is_refused(tmp_path: Path) -> None:
    """An unknown model name or size argument raises instead of building something else."""
    with pytest.raises(KeyError, match="resnet"):
        build_model("resnet", tmp_path)
    with pytest.raises(TypeError):
        build_model("cnn", tmp_path, depth=3)
    with pytest.raises(KeyError, match="resnet"):
        build_default_models(tmp_path, sizes={"resnet": {}})


def test_heads_follow_the_trunk_sizes(tmp_path: Path) -> None:
    """Shrinking the backbone or encoder resizes the heads that consume their outputs."""
    paths = build_default_models(tmp_path, sizes={"backbone": {"widths": (8, 8, 16)}, "encoder": {"hidden": 32}})
    for name, dim in (("head_cls", 16), ("head_emb", 16), ("text_cls", 32)):
        (value,) = onnx.load(str(paths[name])).graph.input
        assert value.type.tensor_type.shape.dim[1].dim_value == dim, name


# --- model numerics ---

def test_backbone_and_heads_produce_documented_shapes(zoo: dict[str, Path]) -> None:
    """backbone -> head_cls/head_emb chain works at batch 3, and the embedding is L2-normalised."""
    image = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    (features,) = _session(zoo["backbone"]).run(None, {"image": image})
    (logits,) = _session(zoo["head_cls"]).run(None, {"features": features})
    (embedding,) = _session(zoo["head_emb"]).run(None, {"features": features})
    assert features.shape == (3, 64) and logits.shape == (3, 10) and embedding.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)


def test_encoder_pooling_ignores_padding(zoo: dict[str, Path]) -> None:
    """A sequence padded with masked tokens pools to the same vector and hidden states as unpadded."""
    session = _session(zoo["encoder"])
    ids = np.random.default_rng(1).integers(1, 1000, (1, 7)).astype(np.int64)
    plain = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    padded_ids = np.concatenate([ids, np.zeros((1, 5), np.int64)], axis=1)
    mask = np.concatenate([np.ones((1, 7), np.int64), np.zeros((1, 5), np.int64)], axis=1)
    hidden, pooled = session.run(None, {"input_ids": padded_ids, "attention_mask": mask})
    np.testing.assert_allclose(pooled, plain[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hidden[:, :7], plain[0], rtol=1e-4, atol=1e-5)


def _llm_step(session: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
              past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    inputs, _ = llm_io_names(len(past) // 2)
    feed = dict(zip(inputs, [ids, mask, positions, *past], strict=True))
    logits, *present = session.run(None, feed)
    return logits, present


def test_llm_decode_with_kv_cache_matches_full_prefill(zoo: dict[str, Path]) -> None:
    """Prefill of a prefix then one-token decode steps gives the full prefill's last-token logits."""
    session = _session(zoo["llm"])
    batch, length, prefix = 2, 10, 4
    ids = np.random.default_rng(2).integers(0, 512, (batch, length)).astype(np.int64)
    positions = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length))
    empty = [np.zeros((batch, 4, 0, 32), np.float32)] * 4
    full, present = _llm_step(session, ids, np.ones_like(ids), positions, empty)
    assert full.shape == (batch, length, 512) and present[0].shape == (batch, 4, length, 32)

    logits, past = _llm_step(session, ids[:, :prefix], np.ones_like(ids[:, :prefix]), positions[:, :prefix], empty)
    np.testing.assert_allclose(logits, full[:, :prefix], rtol=1e-4, atol=1e-5)
    for t in range(prefix, length):
        mask = np.ones((batch, t + 1), np.int64)
        logits, past = _llm_step(session, ids[:, t:t + 1], mask, positions[:, t:t + 1], past)
    assert past[0].shape == (batch, 4, length, 32)
    np.testing.assert_allclose(logits[:, -1], full[:, -1], rtol=1e-4, atol=1e-4)


def test_llm_left_padding_is_masked(zoo: dict[str, Path]) -> None:
    """A left-padded row (mask 0 on pads) gives the same last logits as the sequence alone."""
    session = _session(zoo["llm"])
    ids = np.random.default_rng(3).integers(0, 512, (1, 6)).astype(np.int64)
    empty = [np.zeros((1, 4, 0, 32), np.float32)] * 4
    alone, _ = _llm_step(session, ids, np.ones_like(ids), np.arange(6, dtype=np.int64)[None], empty)
    padded = np.concatenate([np.zeros((1, 3), np.int64), ids], axis=1)
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1, 1]], np.int64)
    positions = np.array([[0, 0, 0, 0, 1, 2, 3, 4, 5]], np.int64)
    logits, _ = _llm_step(session, padded, mask, positions, empty)
    np.testing.assert_allclose(logits[:, -1], alone[:, -1], rtol=1e-4, atol=1e-4)


# --- python stage ops ---

def test_preprocess_normalises_single_and_batched_images() -> None:
    """HWC uint8 images become NCHW float32, scaled to [0,1] then normalised by the fixed mean/std."""
    image = np.full((64, 64, 3), 255, np.uint8)
    single = ops.preprocess(image)["image"]
    assert single.shape == (1, 3, 64, 64) and single.dtype == np.float32
    np.testing.assert_allclose(single[0, :, 0, 0], (1.0 - ops.IMAGENET_MEAN) / ops.IMAGENET_STD, rtol=1e-6)
    batch = ops.preprocess(np.stack([image, np.zeros_like(image)]))["image"]
    assert batch.shape == (2, 3, 64, 64)
    np.testing.assert_allclose(batch[1, :, 5, 5], -ops.IMAGENET_MEAN / ops.IMAGENET_STD, rtol=1e-6)


def test_postprocess_join_and_echo() -> None:
    """postprocess gives softmax probs and argmax labels; join adds the embedding; echo returns its input."""
    logits = np.array([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]], np.float32)
    out = ops.postprocess(logits)
    assert out["probs"].dtype == np.float32 and out["label"].dtype == np.int64
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, rtol=1e-6)
    assert out["label"].tolist() == [1, 0]
    embedding = np.ones((2, 32), np.float32)
    joined = ops.join(logits, embedding)
    assert sorted(joined) == ["embedding", "label", "probs"] and joined["embedding"] is embedding
    x = np.arange(4, dtype=np.float32)
    assert ops.echo(x)["y"] is x
