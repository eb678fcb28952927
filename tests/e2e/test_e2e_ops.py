"""End-to-end operations: health, reflection, metrics, listings, admin auth, graceful shutdown."""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import stage_fns
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    ServerProcess,
    chain,
    default_client,
    default_config,
    default_server,
    heddle_cache_dir,
    py_model,
    scrape_metrics,
    serve_document,
    wait_until,
)

from heddle.clients.client import HeddleClient
from heddle.server.config.builder import document, python_device, to_toml
from heddle.server.config.load import Config

GATEWAY, ADMIN = "heddle.v1.Gateway", "heddle.v1.Admin"
IMAGE = np.zeros((1, 64, 64, 3), dtype=np.uint8)


def health_status(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


@pytest.mark.parametrize("service", ["", GATEWAY, ADMIN])
def test_health_reports_serving(default_server: RunningServer, service: str):
    """grpc.health.v1 Check answers SERVING for the server and each heddle service."""
    assert health_status(default_server.target, service) == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_heddle_services(default_server: RunningServer):
    """Server reflection's ListServices names the Gateway, Admin and Health services."""
    with grpc.insecure_channel(default_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        [reply] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 timeout=10))
    names = {s.name for s in reply.list_services_response.service}
    assert {GATEWAY, ADMIN, "grpc.health.v1.Health"} <= names


def labelled(samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_metrics_count_requests_and_stage_runs(default_server: RunningServer, default_client: HeddleClient):
    """After two classify requests, heddle_requests_total and heddle_stage_runs_total rose by 2 each."""
    before = scrape_metrics(default_server.metrics_url)
    for _ in range(2):
        default_client.infer("classify", {"image": IMAGE})
    after = scrape_metrics(default_server.metrics_url)
    for name, labels in [("heddle_requests_total", {"pipeline": "classify", "status": "OK"}),
                         ("heddle_stage_runs_total", {"pipeline": "classify", "stage": "cnn", "status": "OK"}),
                         ("heddle_stage_runs_total", {"pipeline": "classify", "stage": "pre", "status": "OK"})]:
        assert labelled(after, name, **labels) - labelled(before, name, **labels) == 2, (name, labels)


def test_metrics_count_refused_requests_by_status(default_server: RunningServer, default_client: HeddleClient):
    """A refused request is counted under its status code name."""
    before = scrape_metrics(default_server.metrics_url)
    with pytest.raises(grpc.RpcError):
        default_client.infer("classify", {"image": IMAGE}, priority=9)
    after = scrape_metrics(default_server.metrics_url)
    labels = {"pipeline": "classify", "status": "INVALID_ARGUMENT"}
    assert labelled(after, "heddle_requests_total", **labels) - labelled(before, "heddle_requests_total", **labels) == 1


def test_listings_show_the_configured_items(default_client: HeddleClient, default_config: Config):
    """ListPipelines, ListModels and ListDevices return what the config declares."""
    pipelines = {p.name: p for p in default_client.list_pipelines()}
    assert sorted(pipelines) == sorted(default_config.pipelines)
    assert [s.name for s in pipelines["multihead"].stages] == ["backbone", "cls", "emb", "join"]
    assert list(next(s for s in pipelines["multihead"].stages if s.name == "join").depends_on) == ["cls", "emb"]
    models = {m.name: m for m in default_client.list_models()}
    assert sorted(models) == sorted(default_config.models)
    assert models["cnn"].backend == "onnxruntime" and models["preprocess"].backend == "python"
    assert [(t.name, t.datatype, list(t.shape)) for t in models["cnn"].inputs] == [("image", "FP32", [-1, 3, 64, 64])]
    devices = {d.id: d for d in default_client.list_devices()}
    assert sorted(devices) == sorted(d.id for d in default_config.devices)
    for spec in default_config.devices:
        info = devices[spec.id]
        assert (info.backend, info.slots, info.healthy) == (spec.backend, spec.slots, True)
        if spec.backend == "onnxruntime":
            assert "CPUExecutionProvider" in info.providers


ADMIN_TOKEN = "s3cret-admin-token"
ADMIN_CONFIG = document(server={"policy": "priority", "admin_token": ADMIN_TOKEN}, devices=[python_device("py0")],
                        models=[py_model("tail", "stage_fns:tail")], pipelines=[chain("echo", ["tail"])])


@pytest.fixture(scope="module")
def admin_server() -> Iterator[RunningServer]:
    with serve_document(ADMIN_CONFIG) as running:
        yield running


def test_set_policy_without_token_is_unauthenticated(admin_server: RunningServer):
    """With an admin token configured, SetPolicy without a token is UNAUTHENTICATED and changes nothing."""
    with admin_server.client() as anonymous:
        with pytest.raises(grpc.RpcError) as info:
            anonymous.set_policy("fcfs")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The gateway itself needs no token.
        np.testing.assert_array_equal(anonymous.infer("echo", {"x": stage_fns.tagged(3)}).outputs["y"], [3.0])
    with admin_server.client(token=ADMIN_TOKEN) as admin:
        assert admin.get_policy().policy == "priority"


def test_set_policy_with_wrong_token_is_permission_denied(admin_server: RunningServer):
    """A token other than the server's is PERMISSION_DENIED."""
    with admin_server.client(token="guess") as guesser, pytest.raises(grpc.RpcError) as info:
        guesser.set_policy("fcfs")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_set_policy_with_token_switches_the_policy(admin_server: RunningServer):
    """SetPolicy with the token switches the policy (GetPolicy shows it); an unknown one is INVALID_ARGUMENT."""
    with admin_server.client(token=ADMIN_TOKEN) as admin:
        try:
            assert admin.set_policy("fcfs").policy == "fcfs"
            info = admin.get_policy()
            assert info.policy == "fcfs" and {"fcfs", "priority"} <= set(info.available)
            with pytest.raises(grpc.RpcError) as err:
                admin.set_policy("lottery")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unknown policy 'lottery'" in err.value.details()
            assert admin.get_policy().policy == "fcfs"
        finally:
            admin.set_policy("priority")


SHUTDOWN_CONFIG = document(
    server={"grace_period_s": 30}, devices=[python_device("py0", slots=2)],
    models=[py_model("hold", "stage_fns:wait_for_file"), py_model("tail", "stage_fns:tail")],
    pipelines=[chain("held", ["hold"]), chain("quick", ["tail"])])


@pytest.mark.slow
def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(tmp_path: Path):
    """On SIGTERM `heddle serve` refuses new requests, completes the one in flight, and exits 0."""
    config, gate = tmp_path / "heddle.toml", tmp_path / "gate"
    config.write_text(to_toml(SHUTDOWN_CONFIG))
    proc = ServerProcess(["--config", str(config), "--grpc-port", "0", "--metrics-port", "0"],
                         env={"HEDDLE_TEST_GATE_FILE": str(gate)})
    try:
        target = proc.wait_for_event("heddle serving")["grpc"]
        assert health_status(target, "") == health_pb2.HealthCheckResponse.SERVING
        with HeddleClient(target) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(client.infer, "held", {"x": stage_fns.tagged(9)}, timeout_s=60)
            wait_until(lambda: next(d.running for d in client.list_devices()) == 1, "the held request to start")
            proc.proc.send_signal(signal.SIGTERM)
            proc.wait_for_event("shutting down")
            with pytest.raises(grpc.RpcError) as refused:
                client.infer("quick", {"x": stage_fns.tagged(1)}, timeout_s=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in refused.value.details()
            gate.touch()
            np.testing.assert_array_equal(in_flight.result(timeout=30).outputs["y"], [9.0])
        assert proc.proc.wait(timeout=30) == 0
        proc.wait_for_event("heddle stopped")
        with HeddleClient(target) as late, pytest.raises(grpc.RpcError) as gone:
            late.infer("quick", {"x": stage_fns.tagged(2)}, timeout_s=5)
        assert gone.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        gate.touch()
        proc.stop()
