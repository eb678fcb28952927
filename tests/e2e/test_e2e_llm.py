"""LLM pipelines through a real gateway: greedy equality, continuous batching, token streams, cancellation."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    heddle_cache_dir,
    parse_test_document,
    running_server,
    scrape_metrics,
    wait_until,
)
from test_llm_engine import reference_greedy

from heddle.backends.testing import FunctionExecutor
from heddle.clients.tensors import from_tensor, to_tensor
from heddle.server.config.builder import document, onnx_device, onnx_model, pipeline, python_device, stage, tensor
from heddle.server.config.default import TOKENIZER_MODELS
from heddle.server.config.load import Config
from heddle.server.runtime.metrics import Metrics
from heddle.server.runtime.runtime import Runtime
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc


def chat_pipeline(name: str, model: str) -> dict[str, Any]:
    """input_ids -> the LLM `model` -> output_ids."""
    return pipeline(name, [tensor("input_ids", "INT64", (1, -1))], {"output_ids": "llm.output_ids"},
                    [stage("llm", model, input_ids="input:input_ids")])


def chat_text_pipeline(name: str = "chat_text") -> dict[str, Any]:
    """text -> tokenize -> llm -> detokenize -> text (and the ids)."""
    return pipeline(name, [tensor("text", "BYTES", (1,))], {"text": "detok.text", "output_ids": "llm.output_ids"}, [
        stage("tok", "tokenize", text="input:text"), stage("llm", "llm", input_ids="tok.input_ids"),
        stage("detok", "detokenize", output_ids="llm.output_ids")])


@pytest.fixture(scope="module")
def llm_config(heddle_cache_dir: Path) -> Config:
    """cpu0 has one slot; max_batch lets up to 8 steps of the llm share it, in one forward pass."""
    llm = onnx_model("llm", "builtin:llm", kind="llm", max_new_tokens=8, max_positions=512, max_batch=8,
                     tokenizer="byte")
    return parse_test_document(document(
        server={"policy": "priority", "cache_dir": str(heddle_cache_dir)},
        devices=[onnx_device("cpu0"), python_device("py0", slots=2)], models=[llm, *TOKENIZER_MODELS],
        pipelines=[chat_pipeline("chat", "llm"), chat_text_pipeline()]))


@pytest.fixture(scope="module")
def llm_server(llm_config: Config) -> Iterator[RunningServer]:
    with running_server(llm_config) as running:
        yield running


@pytest.fixture(scope="module")
def stub(llm_server: RunningServer) -> Iterator[pb_grpc.GatewayStub]:
    with grpc.insecure_channel(llm_server.target) as channel:
        yield pb_grpc.GatewayStub(channel)


@pytest.fixture(scope="module")
def session(llm_config: Config) -> ort.InferenceSession:
    return ort.InferenceSession(llm_config.models["llm"].artifact, providers=["CPUExecutionProvider"])


def chat(prompt: list[int], max_new_tokens: int = 0, **options) -> pb.InferRequest:
    return pb.InferRequest(pipeline="chat", inputs=[to_tensor("input_ids", np.array([prompt], np.int64))],
                           generation=pb.GenerationOptions(max_new_tokens=max_new_tokens, **options))


def output_ids(response: pb.InferResponse) -> list[int]:
    return from_tensor(next(t for t in response.outputs if t.name == "output_ids")).reshape(-1).tolist()


def test_greedy_output_equals_the_reference_loop(stub, session) -> None:
    """One greedy request through the gateway gives the direct onnxruntime loop's tokens."""
    response = stub.Infer(chat([3, 1, 4, 1, 5, 9, 2, 6], 12))
    assert output_ids(response) == reference_greedy(session, [3, 1, 4, 1, 5, 9, 2, 6], 12)
    (stage,) = response.stages
    assert stage.tokens == 12 and stage.status == pb.STAGE_STATUS_OK
    assert 0 < stage.ttft_ms <= stage.end_offset_ms and stage.tpot_ms > 0


def test_model_default_max_new_tokens_applies_without_options(stub, session) -> None:
    """A request with no generation options gets the model's configured 8 tokens."""
    request = pb.InferRequest(pipeline="chat", inputs=[to_tensor("input_ids", np.array([[7, 7, 7]], np.int64))])
    assert output_ids(stub.Infer(request)) == reference_greedy(session, [7, 7, 7], 8)


def test_concurrent_requests_batch_and_each_equals_its_reference(stub, session, llm_server) -> None:
    """Six concurrent generations of different lengths each match the reference; passes were shared."""
    before = _passes(llm_server)
    cases = [([i + 1] * (2 + 3 * i), 10 + 7 * i) for i in range(6)]
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        responses = list(pool.map(lambda c: stub.Infer(chat(*c)), cases))
    for (prompt, n), response in zip(cases, responses, strict=True):
        assert output_ids(response) == reference_greedy(session, prompt, n)
    count, total = (after - was for after, was in zip(_passes(llm_server), before, strict=True))
    assert total == sum(n for _, n in cases)  # every step of every sequence ran once
    assert count < total  # ... in fewer passes than steps: some passes carried several sequences


def _passes(server: RunningServer) -> tuple[float, float]:
    metrics = scrape_metrics(server.metrics_url)
    return (metrics[("heddle_llm_pass_sequences_count", frozenset())],
            metrics[("heddle_llm_pass_sequences_sum", frozenset())])


def test_stream_yields_each_token_then_the_stage_then_the_result(stub, session) -> None:
    """InferStream sends one TokenEvent per token in order, then stage_done, then the result."""
    events = list(stub.InferStream(chat([10, 20, 30], 6)))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["tokens"] * 6 + ["stage_done", "result"]
    tokens = [e.tokens for e in events[:6]]
    assert [t.index for t in tokens] == list(range(6)) and all(t.stage == "llm" for t in tokens)
    assert [t.token_ids[0] for t in tokens] == reference_greedy(session, [10, 20, 30], 6)
    assert output_ids(events[-1].result) == [t.token_ids[0] for t in tokens]
    offsets = [t.offset_ms for t in tokens]
    assert offsets == sorted(offsets)


def test_llm_in_the_middle_of_a_pipeline_streams_text(stub, session) -> None:
    """text -> tokenize -> llm -> detokenize: tokens stream, and the text output decodes the ids."""
    request = pb.InferRequest(pipeline="chat_text", inputs=[to_tensor("text", np.array([b"hi"], dtype=object))],
                              generation=pb.GenerationOptions(max_new_tokens=5))
    events = list(stub.InferStream(request))
    ids = [e.tokens.token_ids[0] for e in events if e.HasField("tokens")]
    assert ids == reference_greedy(session, [256, ord("h"), ord("i")], 5)
    result = events[-1].result
    assert output_ids(result) == ids
    text = from_tensor(next(t for t in result.outputs if t.name == "text"))[0]
    assert text == bytes(i for i in ids if i < 256).decode("utf-8", errors="replace").encode()
    assert [s.stage for s in result.stages] == ["tok", "llm", "detok"]


def test_bad_generation_options_are_invalid_argument(stub) -> None:
    """A negative temperature, or a prompt id outside the vocabulary, is INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as err:
        stub.Infer(chat([1, 2], 4, temperature=-1.0))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "temperature" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Infer(chat([1, 100000], 4))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_cancelled_stream_frees_its_kv_cache(stub, llm_server) -> None:
    """Cancelling a long streaming generation brings the live-sequences gauge back to where it was."""
    key = ("heddle_llm_live_sequences", frozenset({("priority", "2")}))
    before = scrape_metrics(llm_server.metrics_url).get(key, 0.0)
    call = stub.InferStream(chat([1, 2, 3], 400))
    stream = iter(call)
    assert [next(stream).WhichOneof("event") for _ in range(3)] == ["tokens"] * 3
    assert scrape_metrics(llm_server.metrics_url)[key] == before + 1
    call.cancel()
    wait_until(lambda: scrape_metrics(llm_server.metrics_url)[key] == before, "the KV cache to be freed")


def test_cancel_stops_generation_within_one_decode_step(llm_config: Config) -> None:
    """Cancelled from its third token, a generation runs at most one more forward pass, then is freed."""
    session = ort.InferenceSession(llm_config.models["llm"].artifact, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    device, py0 = (next(d for d in llm_config.devices if d.id == i) for i in ("cpu0", "py0"))
    counting = FunctionExecutor(
        device, lambda model, feed: dict(zip(names, session.run(names, dict(feed)), strict=True)))
    python = FunctionExecutor(py0, lambda model, feed: {})
    metrics = Metrics()

    async def scenario() -> tuple[int, int, int]:
        runtime = Runtime(llm_config, {"cpu0": counting, "py0": python}, metrics)
        await runtime.load_models()
        tokens: list = []
        calls_at_cancel: list[int] = []

        def on_token(update) -> None:
            tokens.append(update)
            if len(tokens) == 3:
                calls_at_cancel.append(len(counting.calls))
                task.cancel()

        task = asyncio.ensure_future(runtime.run(
            llm_config.pipelines["chat"], {"input_ids": np.array([[1, 2, 3]], np.int64)}, priority=2,
            generation={"max_new_tokens": 400}, on_token=on_token))
        with pytest.raises(asyncio.CancelledError):
            await task
        loop = asyncio.get_running_loop()
        give_up_s = loop.time() + 20
        while runtime.llm.live_sequences and loop.time() < give_up_s:
            await asyncio.sleep(0)  # the step in flight ends on a worker thread; nothing to await
        return len(tokens), len(counting.calls) - calls_at_cancel[0], runtime.llm.live_sequences

    try:
        received, passes_after_cancel, live = asyncio.run(scenario())
    finally:
        counting.close()
        python.close()
    assert received == 3 and passes_after_cancel <= 1 and live == 0
    assert metrics.registry.get_sample_value("heddle_llm_live_sequences", {"priority": "2"}) == 0


def test_kserve_stream_sends_token_responses_then_a_final_one(llm_server, session) -> None:
    """ModelStreamInfer on the chat pipeline: one response per token, then the final full response."""
    import queue

    import tritonclient.grpc as tgrpc

    answers: queue.Queue = queue.Queue()
    client = tgrpc.InferenceServerClient(llm_server.target)
    prompt = np.array([[9, 8, 7]], np.int64)
    ids = tgrpc.InferInput("input_ids", [1, 3], "INT64")
    ids.set_data_from_numpy(prompt)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("chat", [ids], request_id="r1", parameters={"max_new_tokens": 5})
        got = []
        while True:
            result, error = answers.get(timeout=20)
            assert error is None
            response = result.get_response()
            got.append(response)
            if response.parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    *token_responses, final = got
    expected = reference_greedy(session, [9, 8, 7], 5)
    assert [r.parameters["heddle_token_index"].int64_param for r in token_responses] == list(range(5))
    streamed = [int(np.frombuffer(r.raw_output_contents[0], np.int64)[0]) for r in token_responses]
    assert streamed == expected and all(r.id == "r1" for r in got)
    assert np.frombuffer(final.raw_output_contents[0], np.int64).tolist() == expected
