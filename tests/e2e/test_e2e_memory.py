"""Memory a request may cost, against real servers: per-model input limits and the request cap refuse
at the front door on heddle.v1 and KServe, the in-flight budget refuses with a retry hint (the top
class keeps a reserve), and a `heddle serve` process gives back what big requests took; then the settings
and the estimate behind them, without a server."""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import stage_fns
import tritonclient.grpc as tgrpc
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    ServerProcess,
    chain,
    heddle_cache_dir,
    parse_test_document,
    py_model,
    running_server,
    scrape_metrics,
    wait_until,
)

from heddle.backends.graph_summary import peak_live_bytes
from heddle.clients.client import HeddleClient
from heddle.server.config.builder import (
    document,
    onnx_device,
    onnx_model,
    pipeline,
    python_device,
    stage,
    tensor,
    to_toml,
)
from heddle.server.config.default import PREPROCESS
from heddle.server.config.load import ConfigError

MIB = 1 << 20
# The gate chain costs 3x its input (input, stage input, stage output; server/config/memory_estimate.py):
# 300,000 floats are 1.2 MB in and an estimated 3.6 MB. One fits; two (7.2 MB) pass the 6.7 MB
# that classes below the top may use of 8 MiB, but not the top class's 8 MiB.
HELD_FLOATS = 300_000
TOP = 4
IDS, MASK = tensor("input_ids", "INT64", (-1, -1)), tensor("attention_mask", "INT64", (-1, -1))
TEXT = pipeline("text", [IDS, MASK], {"logits": "cls.logits"}, [
    stage("enc", "encoder", input_ids="input:input_ids", attention_mask="input:attention_mask"),
    stage("cls", "text_cls", pooled="enc.pooled")])
CLASSIFY = pipeline("classify", [tensor("image", "UINT8", (-1, 64, 64, 3))], {"logits": "cnn.logits"}, [
    stage("pre", "preprocess", image="input:image"), stage("cnn", "cnn", image="pre.image")])
CONFIG = document(
    server={"max_inflight_bytes": 8 * MIB, "max_request_bytes": 4 * MIB, "inflight_top_reserve_fraction": 0.2},
    devices=[onnx_device("cpu0"), python_device("py0", slots=2)],
    models=[onnx_model("encoder", "builtin:encoder", max_batch_size=4, max_input_elements=256),
            onnx_model("text_cls", "builtin:text_cls"), onnx_model("cnn", "builtin:cnn"), PREPROCESS,
            py_model("gate", "stage_fns:gate", devices=["py0"])],
    pipelines=[TEXT, CLASSIFY, chain("gated", ["gate"])])


@pytest.fixture(scope="module")
def gateway(heddle_cache_dir: Path) -> Iterator[RunningServer]:
    with running_server(parse_test_document(CONFIG, cache_dir=str(heddle_cache_dir))) as running:
        yield running


@pytest.fixture()
def client(gateway: RunningServer) -> Iterator[HeddleClient]:
    stage_fns.reset()
    with gateway.client() as c:
        try:
            yield c
        finally:
            stage_fns.open_gate()  # never leave a stage blocked into the next test


def ids(batch: int, seq: int) -> dict[str, np.ndarray]:
    x = np.ones((batch, seq), dtype=np.int64)
    return {"input_ids": x, "attention_mask": x}


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
    return info.value


def refusals(gateway: RunningServer, limit: str) -> float:
    return scrape_metrics(gateway.metrics_url).get(
        ("heddle_limit_refusals_total", frozenset({"pipeline": "text", "limit": limit}.items())), 0.0)


def test_batch_over_max_batch_size_is_refused_naming_it(client, gateway):
    """A batch of 5 for an encoder with max_batch_size = 4 is RESOURCE_EXHAUSTED naming the limit,
    model, stage, pipeline, value and maximum, with no retry hint (it would never fit); the
    server keeps serving, and the refusal is counted by limit."""
    before = refusals(gateway, "max_batch_size")
    err = refusal(lambda: client.infer("text", ids(5, 16), timeout_s=30))
    for fragment in ("max_batch_size = 4", "batch size 5", "model 'encoder'", "stage 'enc'", "pipeline 'text'",
                     "input 'input_ids'"):
        assert fragment in err.details(), err.details()
    assert err.retry_after_s is None
    assert client.infer("text", ids(4, 16), timeout_s=30).outputs["logits"].shape == (4, 4)
    assert refusals(gateway, "max_batch_size") == before + 1


def test_input_over_max_input_elements_is_refused_naming_it(client):
    """3 x 100 token ids (300 elements) for an encoder with max_input_elements = 256 is refused
    naming the limit; 2 x 128 (256) runs."""
    err = refusal(lambda: client.infer("text", ids(3, 100), timeout_s=30))
    assert "max_input_elements = 256" in err.details() and "300 elements" in err.details(), err.details()
    assert client.infer("text", ids(2, 128), timeout_s=30).outputs["logits"].shape == (2, 4)


def test_kserve_front_door_applies_the_same_limits(gateway):
    """KServe gets the same refusal, on the pipeline and on the encoder served as a model."""
    with tgrpc.InferenceServerClient(gateway.target) as kclient:
        for model in ("text", "encoder"):
            inputs = []
            for name, arr in ids(5, 16).items():
                tensor = tgrpc.InferInput(name, list(arr.shape), "INT64")
                tensor.set_data_from_numpy(arr)
                inputs.append(tensor)
            with pytest.raises(tgrpc.InferenceServerException) as info:
                kclient.infer(model, inputs, client_timeout=30)
            assert "StatusCode.RESOURCE_EXHAUSTED" in info.value.status(), info.value
            assert "max_batch_size = 4" in info.value.message(), info.value.message()


def test_request_over_max_request_bytes_is_refused_for_what_its_stages_would_hold(client):
    """Four 64x64 images are 48 KB, but the pipeline's CNN would hold an estimated 4.5 MB for them:
    over max_request_bytes (4 MiB), refused naming it; three run."""
    images = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    err = refusal(lambda: client.infer("classify", {"image": images}, timeout_s=30))
    assert "max_request_bytes = 4.0 MiB" in err.details() and "pipeline 'classify'" in err.details(), err.details()
    assert client.infer("classify", {"image": images[:3]}, timeout_s=30).outputs["logits"].shape == (3, 10)


def test_inflight_budget_refuses_lower_classes_with_a_retry_hint_and_keeps_a_reserve_for_the_top(client, gateway):
    """While one big request holds its bytes, a second at priority 1 is RESOURCE_EXHAUSTED naming the
    budget, with retry-after-ms; at the top priority it still gets in (the reserve). Once both end,
    the in-flight gauge is back to 0 and the low-priority request runs."""
    big = np.zeros(HELD_FLOATS, dtype=np.float32)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = pool.submit(client.infer, "gated", {"x": big + 1}, priority=1, timeout_s=60)
        assert stage_fns.wait_for_call("gate", 1), "the held request never started"
        err = refusal(lambda: client.infer("gated", {"x": big + 2}, priority=1, timeout_s=30))
        assert "max_inflight_bytes = 8.0 MiB" in err.details(), err.details()
        assert err.retry_after_s is not None and err.retry_after_s > 0
        top = pool.submit(client.infer, "gated", {"x": big + 3}, priority=TOP, timeout_s=60)
        assert stage_fns.wait_for_call("gate", 3), "the top-priority request was not admitted"
        stage_fns.open_gate()
        assert held.result(timeout=30).outputs["y"][0] == 1
        assert top.result(timeout=30).outputs["y"][0] == 3
    assert scrape_metrics(gateway.metrics_url)[("heddle_inflight_bytes", frozenset())] == 0
    assert client.infer("gated", {"x": big + 4}, priority=1, timeout_s=30).outputs["y"][0] == 4


# ---- memory given back, by a `heddle serve` process ---------------------------------------------

RSS_MODELS = [onnx_model("encoder", "builtin:encoder"), onnx_model("text_cls", "builtin:text_cls")]
BIG_BATCH = 512  # x 128 tokens: 1 MiB of ids, about 450 MB of activations in the encoder


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_memory_returns_near_its_level_after_big_requests(tmp_path: Path, heddle_cache_dir: Path):
    """Three 512 x 128 batches through the encoder leave the server's RSS within 200 MB of where it
    was (ONNX Runtime's CPU arena kept their peak, over 500 MB, for the server's life)."""
    config = tmp_path / "heddle.toml"
    server = {"max_inflight_bytes": 4 << 30, "max_request_bytes": 2 << 30, "cache_dir": str(heddle_cache_dir)}
    config.write_text(to_toml(document(server=server, devices=[onnx_device("cpu0")], models=RSS_MODELS,
                                       pipelines=[TEXT])))
    proc = ServerProcess(["--config", str(config), "--grpc-port", "0", "--metrics-port", "0"])
    try:
        target = proc.wait_for_event("heddle serving")["grpc"]
        with HeddleClient(target) as client:
            client.infer("text", ids(1, 16), timeout_s=60)
            before = rss_of(proc.proc.pid)
            for _ in range(3):
                client.infer("text", ids(BIG_BATCH, 128), timeout_s=120)
            client.infer("text", ids(1, 16), timeout_s=60)  # what is freed last is trimmed at the next request
            # The trim runs off the event loop just after a request ends: wait for it, not for a time.
            wait_until(lambda: rss_of(proc.proc.pid) - before < 200 * MIB,
                       f"RSS to return within 200 MB of {before >> 20} MB "
                       f"(now {rss_of(proc.proc.pid) >> 20} MB)")
    finally:
        proc.stop()


# ---- configuration and the estimate, without a server ---------------------------------------------

@pytest.mark.parametrize("server, fragment", [
    ({"max_inflight_bytes": 1000, "max_request_bytes": 900}, "max_request_bytes 900 is over the 800 bytes"),
    ({"inflight_top_reserve_fraction": 1.0}, "[server]: inflight_top_reserve_fraction must be less than 1, got 1.0"),
    ({"max_inflight_bytes": -1}, "[server]: max_inflight_bytes must be greater than or equal to 0, got -1"),
])
def test_memory_settings_that_cannot_work_are_refused_at_load(server: dict[str, Any], fragment: str):
    """A per-request cap the lower classes could never be admitted under, a reserve of everything, or
    a negative budget stops the config with a message naming the key."""
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        parse_test_document(document(server=server, devices=[python_device("py0")]))


@pytest.mark.parametrize("value, said", [
    (0, "greater than or equal to 1, got 0"), (-3, "greater than or equal to 1, got -3"),
    (2.5, "an integer, got 2.5"), (True, "an integer, got True"), ("8", "an integer, got '8'"),
])
def test_model_limits_must_be_positive_integers(value: object, said: str):
    """max_batch_size is a positive integer: 0, a fraction, a boolean or a string is refused naming it."""
    with pytest.raises(ConfigError, match=re.escape(f"model 'tail': max_batch_size must be {said}")):
        parse_test_document(document(devices=[python_device("py0")],
                                     models=[py_model("tail", "stage_fns:tail", max_batch_size=value)]))


def test_peak_live_bytes_frees_each_tensor_after_its_last_reader():
    """x -> a -> b -> y, each [1, 256] FP32 (1 KiB): at most two are alive at once (a node's input
    and output), plus the graph output kept to the end: 2 KiB, where summing all outputs says 3."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 256])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 256])
    nodes = [onnx.helper.make_node("Relu", ["x"], ["a"]), onnx.helper.make_node("Relu", ["a"], ["b"]),
             onnx.helper.make_node("Relu", ["b"], ["y"])]
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, "chain", [x], [y]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17)])
    assert peak_live_bytes(model, {"n": 1}) == 2 * 1024
    assert peak_live_bytes(model, {"n": 10}) == 20 * 1024
