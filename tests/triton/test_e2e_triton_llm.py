"""Triton-hosted LLMs through a real gateway: a decoupled python-backend model on a real Triton server
streams its tokens, which heddle streams on (heddle.v1 and KServe), equal to a plain greedy loop."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tgrpc
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    heddle_cache_dir,
    parse_test_document,
    running_server,
    scrape_metrics,
    wait_until,
)
from test_e2e_llm import chat_pipeline, chat_text_pipeline, output_ids
from test_llm_engine import reference_greedy
from triton_fixtures import (  # noqa: F401  (fixtures are found by name)
    Gate,
    triton_llm_path,
    triton_server,
    write_llm_models,
)
from tritonclient.utils import InferenceServerException

from heddle.backends.base import BackendError
from heddle.backends.triton.executor import TritonExecutor
from heddle.backends.triton.server import TritonServer
from heddle.clients.tensors import from_tensor, to_tensor
from heddle.scheduler.specs import DeviceSpec, ModelSpec
from heddle.server.config.builder import (
    document,
    python_device,
    triton_device,
    triton_model,
)
from heddle.server.config.default import TOKENIZER_MODELS
from heddle.server.config.load import ConfigError
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

# Each test here starts or talks to a real tritonserver (`make test-fast` leaves them out).
pytestmark = pytest.mark.triton

WAIT_S = 30.0  # bound on any one call; reached only when something is broken


def gateway_doc(url: str, cache: Path, **llm_keys: object) -> dict[str, Any]:
    """tr0 on the Triton server hosting `llm` and `llm_slow` as heddle LLMs; py0 for the byte tokenizer
    (llm_keys: more keys of `llm`)."""
    llm = triton_model("llm", kind="llm", triton_model="llm", max_new_tokens=8, max_positions=512,
                       vocab_size=512, tokenizer="byte", **llm_keys)
    return document(server={"policy": "priority", "cache_dir": str(cache)},
                    devices=[triton_device("tr0", url, slots=4, client_timeout_s=WAIT_S),
                             python_device("py0", slots=2)],
                    models=[llm, triton_model("llm_slow", kind="llm", triton_model="llm_slow"), *TOKENIZER_MODELS],
                    pipelines=[chat_pipeline("chat", "llm"), chat_pipeline("chat_slow", "llm_slow"),
                               chat_text_pipeline()])


@pytest.fixture(scope="module")
def gateway(triton_server: TritonServer, heddle_cache_dir: Path) -> Iterator[RunningServer]:
    with running_server(parse_test_document(gateway_doc(triton_server.grpc_url, heddle_cache_dir))) as running:
        yield running


@pytest.fixture(scope="module")
def stub(gateway: RunningServer) -> Iterator[pb_grpc.GatewayStub]:
    with grpc.insecure_channel(gateway.target) as channel:
        yield pb_grpc.GatewayStub(channel)


@pytest.fixture(scope="module")
def session(triton_llm_path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(triton_llm_path), providers=["CPUExecutionProvider"])


def chat(prompt: list[int], max_new_tokens: int = 0, pipeline: str = "chat", **options) -> pb.InferRequest:
    return pb.InferRequest(pipeline=pipeline, inputs=[to_tensor("input_ids", np.array([prompt], np.int64))],
                           generation=pb.GenerationOptions(max_new_tokens=max_new_tokens, **options))


def probe(server: TritonServer, model: str = "llm_slow") -> tuple[int, int, int]:
    """What the Triton model says: (generations running, generations stopped by a cancel, the last
    generation's request timeout in us)."""
    answers: queue.Queue = queue.Queue()
    ids = tgrpc.InferInput("input_ids", [1, 1], "INT64")
    ids.set_data_from_numpy(np.array([[1]], np.int64))
    with tgrpc.InferenceServerClient(server.grpc_url) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            client.async_stream_infer(model, [ids], parameters={"probe": True})
            result, error = answers.get(timeout=WAIT_S)
        finally:
            client.stop_stream()
    assert error is None, error
    running, cancelled, timeout_us = result.as_numpy("output_ids").reshape(-1).tolist()
    return running, cancelled, timeout_us


# ---- streams and results ---------------------------------------------------------------------

def test_streamed_tokens_equal_the_reference_loop(stub, session, triton_server) -> None:
    """InferStream: one TokenEvent per token Triton streams, equal to plain greedy decoding; then the
    stage, then the result with every id; the gRPC deadline reached the Triton request as its timeout."""
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    events = list(stub.InferStream(chat(prompt, 12), timeout=WAIT_S))
    assert [e.WhichOneof("event") for e in events] == ["tokens"] * 12 + ["stage_done", "result"]
    tokens = [e.tokens for e in events[:12]]
    assert [t.token_ids[0] for t in tokens] == reference_greedy(session, prompt, 12)
    assert [t.index for t in tokens] == list(range(12)) and all(t.stage == "llm" for t in tokens)
    result = events[-1].result
    assert output_ids(result) == [t.token_ids[0] for t in tokens]
    (stage,) = result.stages
    assert (stage.tokens, stage.device, stage.status) == (12, "tr0", pb.STAGE_STATUS_OK)
    assert 0 < stage.ttft_ms <= stage.end_offset_ms and stage.tpot_ms > 0
    *_, timeout_us = probe(triton_server, "llm")
    assert 0 < timeout_us <= WAIT_S * 1e6


def test_unary_infer_returns_every_id_and_model_defaults_apply(stub, session) -> None:
    """Infer returns the whole generation; with no options the model's max_new_tokens (8) applies."""
    assert output_ids(stub.Infer(chat([7, 7, 7], 20))) == reference_greedy(session, [7, 7, 7], 20)
    bare = pb.InferRequest(pipeline="chat", inputs=[to_tensor("input_ids", np.array([[5, 4]], np.int64))])
    assert output_ids(stub.Infer(bare)) == reference_greedy(session, [5, 4], 8)


def test_llm_in_the_middle_of_a_pipeline_streams_text(stub, session) -> None:
    """text -> tokenize -> Triton llm -> detokenize: its tokens stream, the stage after it gets its ids."""
    request = pb.InferRequest(pipeline="chat_text", inputs=[to_tensor("text", np.array([b"hi"], dtype=object))],
                              generation=pb.GenerationOptions(max_new_tokens=5))
    events = list(stub.InferStream(request, timeout=WAIT_S))
    ids = [e.tokens.token_ids[0] for e in events if e.HasField("tokens")]
    assert ids == reference_greedy(session, [256, ord("h"), ord("i")], 5)
    result = events[-1].result
    text = from_tensor(next(t for t in result.outputs if t.name == "text"))[0]
    assert text == bytes(i for i in ids if i < 256).decode("utf-8", errors="replace").encode()
    assert [s.stage for s in result.stages] == ["tok", "llm", "detok"]


def test_sampling_options_reach_the_model_and_stop_ids_end_it(stub, session) -> None:
    """temperature and seed reach the Triton model (it samples: the same seed gives the same tokens,
    not the greedy ones); a stop id ends the generation at its first occurrence."""
    sampled = [output_ids(stub.Infer(chat([2, 3], 10, temperature=1.0, seed=7))) for _ in range(2)]
    greedy = reference_greedy(session, [2, 3], 10)
    assert sampled[0] == sampled[1] and len(sampled[0]) == 10 and sampled[0] != greedy
    stopped = output_ids(stub.Infer(chat([2, 3], 10, stop_token_ids=[greedy[3]])))
    assert stopped == greedy[:greedy.index(greedy[3]) + 1]


def test_kserve_stream_through_heddle_sends_each_token(gateway, session) -> None:
    """ModelStreamInfer on the chat pipeline: a response per token Triton streamed, then the final one."""
    answers: queue.Queue = queue.Queue()
    ids = tgrpc.InferInput("input_ids", [1, 3], "INT64")
    ids.set_data_from_numpy(np.array([[9, 8, 7]], np.int64))
    got = []
    with tgrpc.InferenceServerClient(gateway.target) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        try:
            client.async_stream_infer("chat", [ids], request_id="r1", parameters={"max_new_tokens": 6})
            while not got or not got[-1].parameters["triton_final_response"].bool_param:
                result, error = answers.get(timeout=WAIT_S)
                assert error is None, error
                got.append(result.get_response())
        finally:
            client.stop_stream()
    *token_responses, final = got
    expected = reference_greedy(session, [9, 8, 7], 6)
    assert [r.parameters["heddle_token_index"].int64_param for r in token_responses] == list(range(6))
    assert [int(np.frombuffer(r.raw_output_contents[0], np.int64)[0]) for r in token_responses] == expected
    assert np.frombuffer(final.raw_output_contents[0], np.int64).tolist() == expected
    assert all(r.id == "r1" for r in got)


# ---- cancel and bad input --------------------------------------------------------------------

def test_cancelled_stream_cancels_the_triton_request(stub, gateway, triton_server) -> None:
    """Closing the client stream mid-generation cancels the Triton request (the model sees it and
    stops) and the live-sequences gauge comes back."""
    key = ("heddle_llm_live_sequences", frozenset({("priority", "2")}))
    before = scrape_metrics(gateway.metrics_url).get(key, 0.0)
    _, cancelled_before, _ = probe(triton_server)
    call = stub.InferStream(chat([1, 2, 3], 400, pipeline="chat_slow"), timeout=WAIT_S)
    stream = iter(call)
    assert [next(stream).WhichOneof("event") for _ in range(3)] == ["tokens"] * 3
    assert scrape_metrics(gateway.metrics_url)[key] == before + 1
    assert probe(triton_server)[0] == 1
    call.cancel()
    wait_until(lambda: probe(triton_server)[:2] == (0, cancelled_before + 1), "the Triton request to stop")
    wait_until(lambda: scrape_metrics(gateway.metrics_url)[key] == before, "the sequence to be freed")


@pytest.mark.parametrize(("options", "field"), [
    ({"temperature": -1.0}, "temperature"),
    ({"top_p": 2.0}, "top_p"),
    ({"max_new_tokens": 600}, "max_new_tokens"),  # beyond the model's max_positions = 512
])
def test_bad_generation_options_are_invalid_argument(stub, options, field) -> None:
    """Options heddle can tell are bad end the request INVALID_ARGUMENT naming them, before Triton."""
    with pytest.raises(grpc.RpcError) as err:
        stub.Infer(chat([1, 2], **options), timeout=WAIT_S)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()


def test_kserve_bad_max_new_tokens_and_out_of_vocab_prompt_are_invalid_argument(stub, gateway) -> None:
    """A negative max_new_tokens parameter over KServe, and a prompt id past vocab_size, are INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as err:
        stub.Infer(chat([1, 100000], 4), timeout=WAIT_S)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "prompt token ids" in err.value.details()
    ids = tgrpc.InferInput("input_ids", [1, 2], "INT64")
    ids.set_data_from_numpy(np.array([[1, 2]], np.int64))
    with tgrpc.InferenceServerClient(gateway.target) as client, pytest.raises(InferenceServerException) as kerr:
        client.infer("chat", [ids], parameters={"max_new_tokens": -1}, client_timeout=WAIT_S)
    assert "INVALID_ARGUMENT" in str(kerr.value.status()) and "max_new_tokens" in kerr.value.message()


# ---- a dead server, and models that are not streaming LLMs -----------------------------------

def failover_doc(doomed_url: str, peer_url: str, cache: Path) -> dict[str, Any]:
    """tr_a (the doomed server, listed first: an idle gateway places there) and tr_b (a peer):
    llm on both, llm_slow on tr_a only."""
    devices = [triton_device(i, u, slots=4, client_timeout_s=WAIT_S)
               for i, u in (("tr_a", doomed_url), ("tr_b", peer_url))]
    models = [triton_model("llm", kind="llm", devices=["tr_a", "tr_b"]),
              triton_model("llm_slow", kind="llm", devices=["tr_a"])]
    return document(server={"cache_dir": str(cache)}, devices=devices, models=models,
                    pipelines=[chat_pipeline("chat", "llm"), chat_pipeline("chat_slow", "llm_slow")])


def stream_tokens(stub: pb_grpc.GatewayStub, request: pb.InferRequest, on_token=None) -> tuple[list[int], object]:
    """The token ids a stream sent, and its result event or the error that ended it."""
    got = []
    try:
        for event in stub.InferStream(request, timeout=WAIT_S):
            if event.HasField("result"):
                return got, event.result
            if event.HasField("tokens"):
                got.append(event.tokens.token_ids[0])
                if on_token is not None:
                    on_token(len(got))
    except grpc.RpcError as e:
        return got, e
    raise AssertionError("the stream ended without a result or an error")


def test_dead_triton_server_before_and_after_the_first_token(tmp_path: Path, heddle_cache_dir: Path,
                                                             triton_server: TritonServer, session) -> None:
    """SIGKILL of a Triton server with two generations on it: the one held before its first token
    is retried on the peer server and completes equal to the reference; the one that had streamed
    tokens ends UNAVAILABLE (tokens sent stand: no retry), and what it got is the reference's prefix."""
    write_llm_models(tmp_path / "repo", tmp_path / "models", hold=("llm",))
    with TritonServer(tmp_path / "repo", work_dir=tmp_path / "work") as doomed:
        config = parse_test_document(failover_doc(doomed.grpc_url, triton_server.grpc_url, heddle_cache_dir))
        with (running_server(config) as running, grpc.insecure_channel(running.target) as channel,
              running.client() as client, Gate(doomed, "llm") as gate, ThreadPoolExecutor(1) as pool):
            stub = pb_grpc.GatewayStub(channel)
            held = pool.submit(stream_tokens, stub, chat([7, 8, 9], 6))
            gate.wait_started()
            slow_tokens, slow_end = stream_tokens(stub, chat([4, 5, 6], 400, pipeline="chat_slow"),
                                                  lambda n: doomed.kill() if n == 2 else None)
            held_tokens, held_end = held.result(WAIT_S)
            (device,) = [d for d in client.list_devices(timeout_s=WAIT_S) if d.id == "tr_a"]
    assert isinstance(slow_end, grpc.RpcError), slow_end
    assert slow_end.code() is grpc.StatusCode.UNAVAILABLE and "not retried" in slow_end.details()
    assert len(slow_tokens) >= 2 and slow_tokens == reference_greedy(session, [4, 5, 6], len(slow_tokens))
    assert isinstance(held_end, pb.InferResponse), held_end
    assert held_tokens == output_ids(held_end) == reference_greedy(session, [7, 8, 9], 6)
    assert [s.device for s in held_end.stages] == ["tr_b"]
    assert device.healthy is False


def test_only_decoupled_models_with_token_ids_load_as_llms(triton_server: TritonServer) -> None:
    """A Triton model that is not decoupled, or streams something else than output_ids, does not
    load as an LLM; the error says what is missing."""
    executor = TritonExecutor(DeviceSpec("tr0", "remote", "triton", 1, {"url": triton_server.grpc_url}))
    try:
        for name, why in (("echo", "must be decoupled"), ("countdown", "INT64 input input_ids")):
            with pytest.raises(BackendError, match=why):
                executor.load(ModelSpec(name, "triton", name, (), (), "llm"))
        executor.load(ModelSpec("llm", "triton", "llm", (), (), "llm"))
        assert [t.name for t in executor.served_spec("llm").inputs] == ["input_ids"]
    finally:
        executor.close()


def test_triton_llm_takes_no_max_batch(heddle_cache_dir: Path) -> None:
    """max_batch (heddle's own continuous batching) on a Triton-hosted LLM is a config error."""
    with pytest.raises(ConfigError, match="max_batch"):
        parse_test_document(gateway_doc("127.0.0.1:1", heddle_cache_dir, max_batch=4))
