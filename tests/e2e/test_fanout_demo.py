"""The embedded default's fan-out demo (#14): detect_classify, detector -> crop each confident cell
(a list) -> the CNN per region (a map stage) -> gather, against the default gateway: each region's
classification equals running the zoo models directly on its crop; 0, 1 and many regions (the
threshold and max_regions parameters); the regions of one request run on both CPU devices at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from server_fixtures import default_config, default_server, heddle_cache_dir  # noqa: F401  (fixtures by name)

from heddle.backends.zoo.ops import postprocess, preprocess
from heddle.backends.zoo.regions import crop_regions

RTOL, ATOL = 1e-4, 1e-5


def session(config, model: str) -> ort.InferenceSession:
    return ort.InferenceSession(config.models[model].artifact, providers=["CPUExecutionProvider"])


def direct(config, image: np.ndarray, **parameters) -> dict[str, np.ndarray]:
    """The pipeline run by hand: the zoo models in ONNX Runtime, the CNN once per crop alone."""
    pre = preprocess(image)["image"]
    (scores,) = session(config, "detector").run(None, {"image": pre})
    regions = crop_regions(pre, scores, **parameters)
    cnn = session(config, "cnn")
    logits = [cnn.run(None, {"image": crop})[0] for crop in regions["crops"]]
    joined = np.concatenate(logits) if logits else np.zeros((0, 10), np.float32)
    return {"boxes": regions["boxes"], **postprocess(joined)}


def image_with_regions(config, at_least: int) -> np.ndarray:
    """A random image the detector finds at least `at_least` regions in (at the default threshold)."""
    for seed in range(100):
        image = np.random.default_rng(seed).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
        if len(direct(config, image)["boxes"]) >= at_least:
            return image
    raise AssertionError("no image with enough regions")


@pytest.mark.parametrize(("parameters", "count"), [({"threshold": 1.0}, 0), ({"max_regions": 1}, 1), ({}, None)])
def test_each_region_is_classified_as_the_cnn_classifies_its_crop_alone(default_server, default_config,
                                                                        parameters, count):
    """No region (threshold 1), one (max_regions 1) and several: boxes, probs and labels equal the
    models run directly, one CNN run per crop, and each region is an element run of its own."""
    image = image_with_regions(default_config, 4)
    want = direct(default_config, image, **parameters)
    count = len(want["boxes"]) if count is None else count
    assert len(want["boxes"]) == count and (count >= 4 or parameters)
    with default_server.client() as client:
        result = client.infer("detect_classify", {"image": image}, parameters=parameters)
    for name, value in want.items():
        np.testing.assert_allclose(result.outputs[name], value, rtol=RTOL, atol=ATOL, err_msg=name)
    assert [s.stage for s in result.stages if s.stage.startswith("classify[")] == [
        f"classify[{i}]" for i in range(count)]


def test_the_regions_of_one_request_run_on_both_cpu_devices_at_once(default_server, default_config):
    """Several regions: element runs on cpu0 and cpu1 whose intervals overlap."""
    image = image_with_regions(default_config, 4)
    with default_server.client() as client:
        result = client.infer("detect_classify", {"image": image})
    runs = [s for s in result.stages if s.stage.startswith("classify[")]
    assert {s.device for s in runs} >= {"cpu0", "cpu1"}
    assert any(a.device != b.device and a.start_offset_ms < b.end_offset_ms and b.start_offset_ms < a.end_offset_ms
               for a in runs for b in runs), [(s.device, s.start_offset_ms, s.end_offset_ms) for s in runs]


def test_the_demo_is_the_worked_example_in_config_docs() -> None:
    """docs/CONFIG.md shows the demo pipeline's stages as they are in the embedded default."""
    text = (Path(__file__).parents[2] / "docs" / "CONFIG.md").read_text()
    for line in ('{ name = "classify", model = "cnn", map = "crop.crops", inputs = { image = "crop.crops" } }',
                 'function = "heddle.backends.zoo.regions:crop_regions"'):
        assert line in text
