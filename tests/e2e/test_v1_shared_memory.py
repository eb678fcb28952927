"""heddle.v1 tensors in system shared memory against a real gateway, through the heddle client library
(clients/shm.py): inputs read from and outputs written into registered regions answer what the bytes
path answers, the regions are the ones the KServe extension registers, the array a backend gets views
the region (no copy), and bad references are refused with a precise status naming the region."""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import stage_fns
import tritonclient.grpc as tgrpc
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    chain_toml,
    default_config,
    default_server,
    heddle_cache_dir,
    parse_test_document,
    py_model_toml,
    running_server,
    serve_toml,
)

from heddle.clients.client import HeddleClient, HeddleError
from heddle.clients.messages import build_request
from heddle.clients.shm import SharedMemoryRegion, SharedOutput
from heddle.server.config.builder import pipeline, stage, tensor
from heddle.server.testing import function_executors
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

IMAGE = np.random.default_rng(5).random((1, 3, 64, 64)).astype(np.float32)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
GATED_TOML = '[[devices]]\nid = "py0"\nbackend = "python"\nslots = 2\n' + py_model_toml("gate", "stage_fns:gate") \
    + chain_toml("gated", ["gate"])


@pytest.fixture()
def regions() -> Iterator[dict[str, SharedMemoryRegion]]:
    """An input region and an output region made with the client library; unlinked after."""
    key = f"/heddle_v1_test_{os.getpid()}"
    with SharedMemoryRegion("in", f"{key}_in", IMAGE.nbytes) as r_in, \
            SharedMemoryRegion("out", f"{key}_out", 4096) as r_out:
        yield {"in": r_in, "out": r_out}


def _register(client: HeddleClient, *made: SharedMemoryRegion) -> None:
    client.unregister_shared_memory()
    for r in made:
        client.register_shared_memory(r.name, r.key, r.byte_size)


def test_inputs_and_outputs_in_regions_equal_the_bytes_path(default_server: RunningServer, regions) -> None:
    """An input written into a region and two outputs written into another answer what sending the
    bytes answers (Infer and InferStream); KServe's status lists the regions registered over heddle.v1."""
    r_in, r_out = regions["in"], regions["out"]
    with default_server.client() as client:
        _register(client, r_in, r_out)
        plain = client.infer("multihead", {"image": IMAGE})
        shared = client.infer("multihead", {"image": r_in.write(IMAGE)},
                              output_shared_memory={"probs": r_out.output(2048), "label": r_out.output(64, 2048)})
        assert sorted(shared.shared_outputs) == ["label", "probs"] and sorted(shared.outputs) == ["embedding"]
        for name in ("probs", "label"):
            assert shared.shared_outputs[name].region == "out"
            np.testing.assert_allclose(r_out.read(shared.shared_outputs[name]), plain.outputs[name], rtol=1e-6)
        np.testing.assert_allclose(shared.outputs["embedding"], plain.outputs["embedding"], rtol=1e-6)
        last = list(client.infer_stream("multihead", {"image": r_in.write(IMAGE)}, outputs=["embedding"],
                                        output_shared_memory={"probs": r_out.output(2048)}))[-1]
        assert sorted(last.outputs) == ["embedding"] and sorted(last.shared_outputs) == ["probs"]
        np.testing.assert_allclose(r_out.read(last.shared_outputs["probs"]), plain.outputs["probs"], rtol=1e-6)
        kserve = tgrpc.InferenceServerClient(default_server.target)
        try:
            assert sorted(kserve.get_system_shared_memory_status(as_json=True)["regions"]) == ["in", "out"]
        finally:
            kserve.close()
        assert [r.name for r in client.shared_memory_status("in")] == ["in"]
        assert [r.name for r in client.unregister_shared_memory("in")] == ["out"]
        assert client.unregister_shared_memory() == []


def _refused(stub: pb_grpc.GatewayStub, request: pb.InferRequest, code: grpc.StatusCode, needle: str) -> None:
    with pytest.raises(grpc.RpcError, match=needle) as err:
        stub.Infer(request)  # the raw stub: requests the library would not build
    assert err.value.code() == code


def test_bad_references_are_refused_naming_the_region(default_server: RunningServer, regions) -> None:
    """An unknown region, a byte_size the shape does not fill, a reference past its region's end, an output
    larger than its room, raw_data alongside shared_memory: INVALID_ARGUMENT naming what; unknown names in
    Status/Unregister NOT_FOUND; every region released afterwards and the server still serving."""
    r_in, r_out = regions["in"], regions["out"]
    with default_server.client() as client, grpc.insecure_channel(default_server.target) as channel:
        stub = pb_grpc.GatewayStub(channel)
        _register(client, r_in, r_out)
        good = r_in.write(IMAGE)

        def request(image: pb.Tensor, **outs: SharedOutput) -> pb.InferRequest:
            built = build_request("multihead", {}, output_shared_memory=outs)
            built.inputs.append(image)
            return built

        nope = pb.Tensor(name="image", datatype="FP32", shape=IMAGE.shape,
                         shared_memory=pb.SharedMemoryRef(region="nope", byte_size=IMAGE.nbytes))
        _refused(stub, request(nope), INVALID, "no shared memory region 'nope'")
        short = good.to_proto("image")
        short.shared_memory.byte_size = 16
        _refused(stub, request(short), INVALID, "byte_size is 16; shape .* needs 49152 bytes")
        past = good.to_proto("image")
        past.shared_memory.offset = 8
        _refused(stub, request(past), INVALID, "do not fit shared memory region 'in' of 49152 bytes")
        both = good.to_proto("image")
        both.raw_data = IMAGE.tobytes()
        _refused(stub, request(both), INVALID, "both raw_data and shared_memory")
        _refused(stub, request(good.to_proto("image"), probs=SharedOutput("out", 8)), INVALID,
                 "output 'probs' is 40 bytes; shared memory region 'out' gives it 8")
        _refused(stub, request(good.to_proto("image"), nope=SharedOutput("out", 8)), INVALID,
                 "has no output 'nope'")
        for call in (client.shared_memory_status, client.unregister_shared_memory):
            with pytest.raises(HeddleError, match="no shared memory region 'gone'") as err:
                call("gone")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(HeddleError, match="not a POSIX shared memory name") as err:
            client.register_shared_memory("bad", "/../etc/passwd", 16)
        assert err.value.code() == INVALID
        assert client.unregister_shared_memory() == []  # no refused request still holds one
        assert client.infer("multihead", {"image": IMAGE}).outputs["probs"].shape == (1, 10)


@pytest.mark.slow
def test_unregistering_a_region_a_v1_request_reads_fails_cleanly(regions) -> None:
    """While a heddle.v1 request reads its input from a region, unregistering it is FAILED_PRECONDITION;
    once the request has answered it unregisters."""
    stage_fns.reset()
    one = regions["in"].write(np.ones(1, np.float32))
    with serve_toml(GATED_TOML) as running, running.client() as client, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        client.register_shared_memory("in", regions["in"].key, 4)
        held = pool.submit(client.infer, "gated", {"x": one})
        try:
            assert stage_fns.wait_for_call("gate", 1), "the request never started"
            with pytest.raises(HeddleError, match="in use") as err:
                client.unregister_shared_memory("in")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        finally:
            stage_fns.open_gate()
        assert held.result(timeout=60).outputs["y"][0] == 1
        assert client.unregister_shared_memory("in") == []


def test_the_array_a_backend_gets_views_the_region(heddle_cache_dir: Path, regions) -> None:
    """No copy on input: the array the runtime hands the backend (run by ONNX Runtime itself) for a
    heddle.v1 tensor in shared memory lies inside the server's mapping of the region."""
    import onnxruntime as ort

    config = parse_test_document({
        "server": {"cache_dir": str(heddle_cache_dir)},
        "devices": [{"id": "cpu0", "backend": "onnxruntime"}],
        "models": [{"name": "cnn", "path": "builtin:cnn"}],
        "pipelines": [pipeline("p", [tensor("image", shape=(-1, 3, 64, 64))], {"logits": "cnn.logits"},
                               [stage("cnn", "cnn", image="input:image")])],
    })
    session = ort.InferenceSession(config.models["cnn"].artifact, providers=["CPUExecutionProvider"])
    seen: list[int] = []

    def run(model: str, inputs: dict) -> dict:
        seen.append(inputs["image"].__array_interface__["data"][0])
        return dict(zip(["logits"], session.run(None, dict(inputs)), strict=True))

    with running_server(config, executors=function_executors(config.devices, run)) as running, \
            running.client() as client:
        client.register_shared_memory("in", regions["in"].key, IMAGE.nbytes)
        mapping = running.server.kserve.shm.regions["in"].mapping
        start = np.frombuffer(mapping, np.uint8).ctypes.data  # dropped at once: the mapping stays closable
        logits = client.infer("p", {"image": regions["in"].write(IMAGE)}).outputs["logits"]
        client.unregister_shared_memory()
    assert seen and start <= seen[0] < start + IMAGE.nbytes
    np.testing.assert_allclose(logits, session.run(None, {"image": IMAGE})[0], rtol=1e-6)
