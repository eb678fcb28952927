"""ModelStreamInfer: tritonclient's sync and aio streams against a real gateway; errors in-band, cancellation."""

from __future__ import annotations

import asyncio
import queue

import numpy as np
import pytest
import stage_fns
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
from kserve_fixtures import assert_result, image_input, in_loop, multihead_direct, ort_run, random_image
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    default_config,
    default_server,
    heddle_cache_dir,
    py_model,
    serve_document,
    wait_until,
)

from heddle.server.config.builder import document, python_device
from heddle.server.config.load import Config

WAIT_S = 20.0


def _collect(client: tgrpc.InferenceServerClient, requests: list[dict]) -> dict[str, tuple]:
    """Send requests on one sync stream; {request id: (result, error)} once every one is answered."""
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for r in requests:
            client.async_stream_infer(**r)
        got = [answers.get(timeout=WAIT_S) for _ in requests]
    finally:
        client.stop_stream()
    by_id = {}
    for result, error in got:
        rid = result.get_response().id if result is not None else None
        by_id[rid if rid is not None else f"error{len(by_id)}"] = (result, error)
    return by_id


def test_sync_stream_answers_a_model_and_a_pipeline(default_server: RunningServer, default_config: Config) -> None:
    """Requests for cnn and multihead on one stream each get their own correct response, matched by id."""
    images = [random_image(20 + i, batch=1) for i in range(3)]
    requests = [
        {"model_name": "cnn", "inputs": [image_input(images[0])], "request_id": "a"},
        {"model_name": "multihead", "inputs": [image_input(images[1])], "request_id": "b", "priority": 1},
        {"model_name": "multihead", "inputs": [image_input(images[2])], "request_id": "c"},
    ]
    client = tgrpc.InferenceServerClient(default_server.target)
    try:
        by_id = _collect(client, requests)
    finally:
        client.close()
    assert sorted(by_id) == ["a", "b", "c"] and all(error is None for _, error in by_id.values())
    assert_result(by_id["a"][0], ort_run(default_config, "cnn", {"image": images[0]}))
    assert_result(by_id["b"][0], multihead_direct(default_config, images[1]))
    assert_result(by_id["c"][0], multihead_direct(default_config, images[2]))


def test_stream_errors_are_in_band_and_the_stream_goes_on(default_server: RunningServer,
                                                           default_config: Config) -> None:
    """A bad priority and an unknown model each answer with an error message; the next request still succeeds."""
    image = random_image(30, batch=1)
    client = tgrpc.InferenceServerClient(default_server.target)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("cnn", [image_input(image)], request_id="bad", priority=99)
        first = answers.get(timeout=WAIT_S)
        client.async_stream_infer("ghost", [image_input(image)], request_id="ghost")
        second = answers.get(timeout=WAIT_S)
        client.async_stream_infer("cnn", [image_input(image)], request_id="good")
        third = answers.get(timeout=WAIT_S)
    finally:
        client.stop_stream()
        client.close()
    assert first[0] is None and "INVALID_ARGUMENT" in first[1].message() and "priority 99" in first[1].message()
    assert second[0] is None and "NOT_FOUND" in second[1].message() and "'ghost'" in second[1].message()
    assert third[1] is None and third[0].get_response().id == "good"
    assert_result(third[0], ort_run(default_config, "cnn", {"image": image}))


def test_aio_stream_infer(default_server: RunningServer, default_config: Config) -> None:
    """tritonclient.grpc.aio stream_infer: every request yields one (result, None) with the right outputs."""
    images = {f"r{i}": random_image(40 + i, batch=1) for i in range(4)}

    async def scenario():
        client = tgrpc_aio.InferenceServerClient(default_server.target)

        async def requests():
            for rid, image in images.items():
                yield {"model_name": "multihead" if rid in ("r1", "r3") else "cnn",
                       "inputs": [image_input(image)], "request_id": rid}

        got = {}
        try:
            async for result, error in client.stream_infer(requests()):
                assert error is None
                got[result.get_response().id] = result
                if len(got) == len(images):
                    break
        finally:
            await client.close()
        return got

    got = asyncio.run(scenario())
    assert sorted(got) == sorted(images)
    for rid, image in images.items():
        if rid in ("r1", "r3"):
            assert_result(got[rid], multihead_direct(default_config, image))
        else:
            assert_result(got[rid], ort_run(default_config, "cnn", {"image": image}))


def test_duplicate_ids_on_a_stream_are_both_answered(default_server: RunningServer) -> None:
    """KServe ids need not be unique: two in-flight requests with one id both succeed."""
    x = np.zeros((1, 10), np.float32)
    requests = [{"model_name": "postprocess", "inputs": [image_input(x, "logits")], "request_id": "same"}] * 2
    client = tgrpc.InferenceServerClient(default_server.target)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for r in requests:
            client.async_stream_infer(**r)
        got = [answers.get(timeout=WAIT_S) for _ in requests]
    finally:
        client.stop_stream()
        client.close()
    assert [(error, result.get_response().id) for result, error in got] == [(None, "same"), (None, "same")]


GATE_CONFIG = document(devices=[python_device("py0", kind="cpu")],
                       models=[py_model("gate", "stage_fns:gate", devices=["py0"])])


@pytest.mark.slow
def test_cancelling_a_stream_drops_its_queued_requests() -> None:
    """Closing a stream with cancel_requests=True cancels its requests: the queued one never runs."""
    stage_fns.reset()
    with serve_document(GATE_CONFIG) as running:
        client = tgrpc.InferenceServerClient(running.target)
        runtime = running.server.runtime
        try:
            client.start_stream(callback=lambda result, error: None)
            for tag in (1, 2):
                client.async_stream_infer("gate", [image_input(stage_fns.tagged(tag), "x")])
            assert stage_fns.wait_for_call("gate", 1)
            wait_until(lambda: in_loop(running, lambda: runtime.core.stats().queued["py0"]) == 1,
                       "the second request to queue behind the first")
            client.stop_stream(cancel_requests=True)
            wait_until(lambda: in_loop(running, lambda: runtime.in_flight) == 0, "both requests to end")
        finally:
            stage_fns.open_gate()
            client.close()
        wait_until(lambda: in_loop(running, lambda: runtime.core.stats().running["py0"]) == 0,
                   "the first stage to finish")
        assert stage_fns.calls() == [("gate", 1)]
