"""System shared memory against a real gateway: tritonclient.utils.shared_memory regions registered over
HTTP and gRPC carry inputs and outputs (answers equal to sending the tensors), the array a backend gets
views the region (no copy), and bad keys, short regions and unregistering a region in use are refused
with a precise status while the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import stage_fns
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
import tritonclient.utils.shared_memory as shm
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    chain_toml,
    default_config,
    default_server,
    heddle_cache_dir,
    parse_test_config,
    py_model_toml,
    running_server,
    serve_toml,
)
from tritonclient.utils import InferenceServerException

from heddle.server.testing import function_executors

IMAGE = np.random.default_rng(3).random((1, 3, 64, 64)).astype(np.float32)


@pytest.fixture()
def regions() -> Iterator[dict]:
    """An input region holding IMAGE and an output region, made as a client makes them; destroyed after."""
    key = f"heddle_test_{os.getpid()}"
    made = {"in": shm.create_shared_memory_region("in", f"/{key}_in", IMAGE.nbytes),
            "out": shm.create_shared_memory_region("out", f"/{key}_out", 4096)}
    shm.set_shared_memory_region(made["in"], [IMAGE])
    yield {"handles": made, "keys": {"in": f"/{key}_in", "out": f"/{key}_out"}}
    for handle in made.values():
        shm.destroy_shared_memory_region(handle)


def _plain(client_lib, client) -> np.ndarray:
    x = client_lib.InferInput("image", list(IMAGE.shape), "FP32")
    x.set_data_from_numpy(IMAGE)
    return client.infer("cnn", [x]).as_numpy("logits")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inputs_and_outputs_through_shared_memory_equal_sending_them(default_server: RunningServer, regions,
                                                                      protocol: str) -> None:
    """Register an input and an output region, infer with both: the output region holds what a plain
    request answers; status lists them; unregistering frees the names for a new registration."""
    lib = thttp if protocol == "http" else tgrpc
    port = default_server.server.http_port if protocol == "http" else default_server.server.grpc_port
    client = lib.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        client.unregister_system_shared_memory()
        client.register_system_shared_memory("in", regions["keys"]["in"], IMAGE.nbytes)
        client.register_system_shared_memory("out", regions["keys"]["out"], 4096)
        status = client.get_system_shared_memory_status(**({"as_json": True} if protocol == "grpc" else {}))
        names = sorted(status["regions"]) if protocol == "grpc" else sorted(r["name"] for r in status)
        assert names == ["in", "out"]
        x = lib.InferInput("image", list(IMAGE.shape), "FP32")
        x.set_shared_memory("in", IMAGE.nbytes)
        out = lib.InferRequestedOutput("logits")
        out.set_shared_memory("out", 40, offset=8)
        result = client.infer("cnn", [x], outputs=[out])
        meta = result.get_output("logits")
        region = (meta["parameters"]["shared_memory_region"] if protocol == "http"
                  else meta.parameters["shared_memory_region"].string_param)
        assert region == "out"
        got = shm.get_contents_as_numpy(regions["handles"]["out"], np.float32, [1, 10], offset=8)
        np.testing.assert_allclose(got, _plain(lib, client), rtol=1e-6)
        client.unregister_system_shared_memory("in")
        client.unregister_system_shared_memory()
        assert not (client.get_system_shared_memory_status(**({"as_json": True} if protocol == "grpc" else {}))
                    .get("regions", {}) if protocol == "grpc" else client.get_system_shared_memory_status())
    finally:
        client.close()


def test_bad_registrations_and_short_regions_are_refused(default_server: RunningServer, regions) -> None:
    """A key that is no /dev/shm name, a missing one, a region past the end of its object, a name
    taken twice and a tensor larger than its region are INVALID_ARGUMENT (ALREADY_EXISTS for the name)."""
    client = tgrpc.InferenceServerClient(default_server.target)
    try:
        client.unregister_system_shared_memory()
        for key, needle in (("/../etc/passwd", "not a POSIX shared memory name"), ("/heddle_nope_x", "cannot open"),
                            ("noslash", "not a POSIX")):
            with pytest.raises(InferenceServerException, match=needle) as err:
                client.register_system_shared_memory("r", key, 16)
            assert "INVALID_ARGUMENT" in err.value.status()
        with pytest.raises(InferenceServerException, match="holds"):
            client.register_system_shared_memory("r", regions["keys"]["in"], IMAGE.nbytes, offset=8)
        client.register_system_shared_memory("in", regions["keys"]["in"], IMAGE.nbytes // 2)
        with pytest.raises(InferenceServerException, match="already registered") as err:
            client.register_system_shared_memory("in", regions["keys"]["in"], 16)
        assert "ALREADY_EXISTS" in err.value.status()
        x = tgrpc.InferInput("image", list(IMAGE.shape), "FP32")
        x.set_shared_memory("in", IMAGE.nbytes)
        with pytest.raises(InferenceServerException, match="do not fit shared memory region 'in'") as err:
            client.infer("cnn", [x])
        assert "INVALID_ARGUMENT" in err.value.status()
        x.set_shared_memory("nope", 16)
        with pytest.raises(InferenceServerException, match="no shared memory region 'nope'"):
            client.infer("cnn", [x])
        assert _plain(tgrpc, client).shape == (1, 10)  # still serving
    finally:
        client.unregister_system_shared_memory()
        client.close()


GATED = """
[[devices]]
id = "py0"
backend = "python"
slots = 2
""" + py_model_toml("gate", "stage_fns:gate") + chain_toml("gated", ["gate"])


@pytest.mark.slow
def test_unregistering_a_region_in_use_fails_cleanly(regions) -> None:
    """While a request reads its input from a region, unregistering it is FAILED_PRECONDITION (HTTP 400);
    once the request ends it unregisters."""
    stage_fns.reset()
    one = np.ones(1, np.float32)
    shm.set_shared_memory_region(regions["handles"]["in"], [one])
    with serve_toml(GATED) as running, concurrent.futures.ThreadPoolExecutor(1) as pool:
        client = tgrpc.InferenceServerClient(running.target)
        http = thttp.InferenceServerClient(f"127.0.0.1:{running.server.http_port}")
        http.register_system_shared_memory("in", regions["keys"]["in"], 4)
        x = tgrpc.InferInput("x", [1], "FP32")
        x.set_shared_memory("in", 4)
        held = pool.submit(client.infer, "gated", [x])
        try:
            assert stage_fns.wait_for_call("gate", 1), "the request never started"
            with pytest.raises(InferenceServerException, match="in use") as err:
                http.unregister_system_shared_memory("in")
            assert err.value.status() == "400"
        finally:
            stage_fns.open_gate()
        assert held.result(timeout=60).as_numpy("y")[0] == 1
        http.unregister_system_shared_memory("in")
        assert http.get_system_shared_memory_status() == []
        client.close()
        http.close()


def test_the_array_a_backend_gets_views_the_region(heddle_cache_dir: Path, regions) -> None:
    """No copy on input: the array the runtime hands the backend (here run by ONNX Runtime itself) lies
    inside the server's mapping of the region."""
    import onnxruntime as ort

    config = parse_test_config(f'[server]\ncache_dir = "{heddle_cache_dir}"\n[[devices]]\nid = "cpu0"\n'
                               'backend = "onnxruntime"\n\n[[models]]\nname = "cnn"\npath = "builtin:cnn"\n')
    session = ort.InferenceSession(config.models["cnn"].artifact, providers=["CPUExecutionProvider"])
    seen: list[int] = []

    def run(model: str, inputs: dict) -> dict:
        seen.append(inputs["image"].__array_interface__["data"][0])
        return dict(zip(["logits"], session.run(None, dict(inputs)), strict=True))

    with running_server(config, executors=function_executors(config.devices, run)) as running:
        client = tgrpc.InferenceServerClient(running.target)
        client.register_system_shared_memory("in", regions["keys"]["in"], IMAGE.nbytes)
        mapping = running.server.kserve.shm.regions["in"].mapping
        start = np.frombuffer(mapping, np.uint8).ctypes.data  # dropped at once: the mapping stays closable
        x = tgrpc.InferInput("image", list(IMAGE.shape), "FP32")
        x.set_shared_memory("in", IMAGE.nbytes)
        logits = client.infer("cnn", [x]).as_numpy("logits")
        client.unregister_system_shared_memory()
        client.close()
    assert seen and start <= seen[0] < start + IMAGE.nbytes
    np.testing.assert_allclose(logits, session.run(None, {"image": IMAGE})[0], rtol=1e-6)
