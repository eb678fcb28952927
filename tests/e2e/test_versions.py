"""Model versions and canary splits (server/config/versions.py, server/runtime/versions.py) against
a real gateway: a 90/10 split holds over 2,000 requests (seeded), a request can pin a version,
KServe's model_version picks one, and config mistakes about versions are refused naming them."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
from server_fixtures import parse_test_document, running_server, scale_onnx

from heddle.clients.errors import HeddleError
from heddle.server.config.builder import document, onnx_device, onnx_model, pipeline, stage, tensor
from heddle.server.config.schema import ConfigError

X = np.arange(4, dtype=np.float32)


def _one(name: str, model: str) -> dict:
    return pipeline(name, [tensor("x")], {"y": "s.y"}, [stage("s", model, x="input:x")])


def _config(tmp_path: Path, *versions: dict, pipelines=None):
    v1, v2 = scale_onnx(tmp_path / "v1.onnx", 2.0), scale_onnx(tmp_path / "v2.onnx", 3.0)
    paths = {"1": v1, "2": v2}
    models = [onnx_model("scale", paths[str(v.get("version", "1"))], **v) for v in versions]
    return parse_test_document(document(devices=[onnx_device("cpu0")], models=models,
                                        pipelines=pipelines or [_one("p", "scale"), _one("p_pinned", "scale@1")]),
                               base_dir=tmp_path)


@pytest.mark.slow
def test_a_90_10_canary_split_holds_over_2000_requests(tmp_path: Path) -> None:
    config = _config(tmp_path, {"version": "1", "weight": 90}, {"version": "2", "weight": 10})
    assert [round(share, 2) for _, share in config.variants["p"]] == [0.9, 0.1]
    with running_server(config) as running, running.client() as client:
        running.server.runtime.versions.rng.seed(7)
        ran = collections.Counter(client.infer("p", {"x": X}).stages[0].model for _ in range(2000))
        assert abs(ran["scale@2"] / 2000 - 0.10) <= 0.03 and ran["scale@1"] + ran["scale@2"] == 2000
        y = client.infer("p", {"x": X}, model_versions={"scale": "2"}).outputs["y"]
        assert y.tolist() == (X * 3).tolist()  # pinned: the canary's weights
        assert client.infer("p_pinned", {"x": X}).outputs["y"].tolist() == (X * 2).tolist()
        with pytest.raises(HeddleError) as refused:
            client.infer("p", {"x": X}, model_versions={"scale": "7"})
        assert refused.value.code().name == "INVALID_ARGUMENT"
        assert "cannot run scale@7: its stages offer scale: ['1', '2']" in refused.value.details()
        samples = {s.labels["model"]: s.value for s in running.server.metrics.version_requests.collect()[0].samples
                   if s.name.endswith("_total")}
    assert samples["scale@1"] + samples["scale@2"] == 2001 and samples["scale@2"] == ran["scale@2"] + 1


def test_without_weights_the_highest_version_takes_every_unpinned_request(tmp_path: Path) -> None:
    config = _config(tmp_path, {"version": "2"}, {"version": "1"})
    assert config.pipelines["p"].stages[0].model == "scale@2"
    with running_server(config) as running, running.client() as client:
        assert {client.infer("p", {"x": X}).stages[0].model for _ in range(20)} == {"scale@2"}
        assert client.infer("p", {"x": X}, model_versions={"scale": "1"}).outputs["y"].tolist() == (X * 2).tolist()


def test_kserve_model_version_picks_the_version(tmp_path: Path) -> None:
    tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
    config = _config(tmp_path, {"version": "1", "weight": 1}, {"version": "2", "weight": 1})
    with running_server(config) as running:
        client = tritonclient_grpc.InferenceServerClient(running.target)
        x = tritonclient_grpc.InferInput("x", [4], "FP32")
        x.set_data_from_numpy(X)
        for version, k in (("1", 2), ("2", 3)):
            y = client.infer("scale", [x], model_version=version).as_numpy("y")
            assert y.tolist() == (X * k).tolist()


@pytest.mark.parametrize(("tables", "message"), [
    (({"version": "1"}, {}), "model 'scale' has tables with and without a version"),
    (({"version": "1"}, {"version": 1}), "model 'scale' version '1' is given twice"),
    (({"weight": 5},), "weight is for versioned models"),
    (({"version": "1", "weight": 0}, {"version": "2", "weight": 0}), "the weights of its versions sum to 0"),
])
def test_version_mistakes_are_refused_naming_them(tmp_path: Path, tables, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, *tables)


def test_a_model_name_with_an_at_sign_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot contain '@'"):
        parse_test_document(document(devices=[onnx_device("cpu0")],
                                     models=[onnx_model("a@b", scale_onnx(tmp_path / "a.onnx", 2.0))]))
