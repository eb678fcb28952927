"""Shared by the KServe frontend's tests (tests/e2e/test_kserve_*.py): a tritonclient and a raw stub
on the session's default server, and helpers that compute what a model or pipeline should answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
from server_fixtures import RunningServer
from tritonclient.grpc import service_pb2_grpc as kpb_grpc
from tritonclient.utils import InferenceServerException

from heddle.backends.zoo import ops
from heddle.server.config.load import Config

__all__ = [
    "ATOL", "RTOL", "assert_result", "client", "image_input", "in_loop", "multihead_direct", "ort_run",
    "random_image", "status_of", "stub",
]

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture()
def client(default_server: RunningServer) -> Iterator[tgrpc.InferenceServerClient]:
    c = tgrpc.InferenceServerClient(default_server.target)
    yield c
    c.close()


@pytest.fixture()
def stub(default_server: RunningServer) -> Iterator[kpb_grpc.GRPCInferenceServiceStub]:
    """The raw generated stub, for requests tritonclient cannot build (typed contents, odd parameters)."""
    with grpc.insecure_channel(default_server.target) as channel:
        yield kpb_grpc.GRPCInferenceServiceStub(channel)


def in_loop(running: RunningServer, fn: Callable[[], Any]) -> Any:
    """Run fn on the server's loop thread, where its state lives, and return its result."""
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), running.loop).result(20.0)


def ort_run(config: Config, model: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(Path(config.models[model].artifact)), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def multihead_direct(config: Config, image: np.ndarray) -> dict[str, np.ndarray]:
    features = ort_run(config, "backbone", {"image": image})["features"]
    logits = ort_run(config, "head_cls", {"features": features})["logits"]
    embedding = ort_run(config, "head_emb", {"features": features})["embedding"]
    return ops.join(logits, embedding)


def image_input(image: np.ndarray, name: str = "image", datatype: str = "FP32") -> tgrpc.InferInput:
    i = tgrpc.InferInput(name, list(image.shape), datatype)
    i.set_data_from_numpy(image)
    return i


def assert_result(result, expected: dict[str, np.ndarray]) -> None:
    assert sorted(o.name for o in result.get_response().outputs) == sorted(expected)
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def status_of(exc: InferenceServerException) -> str:
    return exc.status().removeprefix("StatusCode.")


def random_image(seed: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 64, 64)).astype(np.float32)
