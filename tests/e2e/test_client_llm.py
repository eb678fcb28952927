"""The heddle clients on LLM pipelines against a real gateway: token events, generation options,
errors as HeddleError, `heddle infer --stream`, and load-generator records of streamed generations."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json

import grpc
import numpy as np
import pytest
from server_fixtures import RunningServer, heddle_cache_dir  # noqa: F401  (fixtures are found by name)
from test_e2e_llm import llm_config, llm_server, session  # noqa: F401  (the LLM gateway and its model)
from test_llm_engine import reference_greedy
from test_loadgen import _run

from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.client import HeddleClient, HeddleError, InferResult, StageEvent, TokenEvent
from heddle.clients.infer_cli import add_infer_parser
from heddle.clients.report import summarize
from heddle.clients.scenarios import App, Scenario

PROMPT = [5, 6, 7, 8]


@pytest.fixture(scope="module")
def server(llm_server: RunningServer) -> RunningServer:  # noqa: F811
    return llm_server


def ids(prompt: list[int]) -> dict[str, np.ndarray]:
    return {"input_ids": np.array([prompt], np.int64)}


def test_stream_yields_token_events_then_the_stage_then_the_result(server, session) -> None:
    """infer_stream gives one TokenEvent per token (the reference's greedy tokens, in order),
    then the stage's StageEvent with its token count, then the result with the same ids."""
    with HeddleClient(server.target) as client:
        events = list(client.infer_stream("chat", ids(PROMPT), generation={"max_new_tokens": 5}))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [type(e) for e in events] == [TokenEvent] * 5 + [StageEvent, InferResult]
    assert [t.index for t in tokens] == list(range(5)) and {t.stage for t in tokens} == {"llm"}
    assert [t.token_ids[0] for t in tokens] == reference_greedy(session, PROMPT, 5)
    assert all(0 < a.offset_ms <= b.offset_ms for a, b in itertools.pairwise(tokens))
    assert events[-2].tokens == 5 and events[-2].ttft_ms > 0
    assert events[-1].outputs["output_ids"].reshape(-1).tolist() == [t.token_ids[0] for t in tokens]


def test_generation_options_reach_the_llm(server) -> None:
    """max_new_tokens sets the length; a seed with sampling repeats its tokens; the message form works."""
    from heddle.v1 import heddle_pb2 as pb

    with HeddleClient(server.target) as client:
        short = client.infer("chat", ids(PROMPT), generation={"max_new_tokens": 3})
        sampled = [client.infer("chat", ids(PROMPT), generation={
            "max_new_tokens": 12, "temperature": 1.5, "top_k": 50, "seed": 7}) for _ in range(2)]
        message = client.infer("chat", ids(PROMPT), generation=pb.GenerationOptions(max_new_tokens=2))
    assert short.outputs["output_ids"].shape == (1, 3) and short.stages[0].tokens == 3
    np.testing.assert_array_equal(sampled[0].outputs["output_ids"], sampled[1].outputs["output_ids"])
    assert message.stages[0].tokens == 2


def test_bad_generation_options(server) -> None:
    """An unknown option is a ValueError before sending; a value the server refuses is a
    HeddleError (a grpc.RpcError) INVALID_ARGUMENT without a retry hint."""
    with HeddleClient(server.target) as client:
        with pytest.raises(ValueError, match="max_tokens"):
            client.infer("chat", ids(PROMPT), generation={"max_tokens": 3})
        with pytest.raises(grpc.RpcError) as err:
            client.infer("chat", ids(PROMPT), generation={"temperature": -1.0})
    assert isinstance(err.value, HeddleError) and isinstance(err.value.__cause__, grpc.RpcError)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "temperature" in err.value.details()
    assert err.value.retry_after_s is None


def test_async_client_streams_tokens_and_raises_heddle_errors(server, session) -> None:
    """The asyncio client yields the same TokenEvents, and a stream error is a HeddleError."""
    async def scenario() -> tuple[list, HeddleError]:
        async with AsyncHeddleClient(server.target) as client:
            events = [e async for e in client.infer_stream("chat", ids(PROMPT), generation={"max_new_tokens": 4})]
            try:
                async for _ in client.infer_stream("chat", ids([1, 10**6])):
                    pass
            except HeddleError as err:
                return events, err
        raise AssertionError("a prompt id outside the vocabulary streamed")

    events, err = asyncio.run(scenario())
    tokens = [e.token_ids[0] for e in events if isinstance(e, TokenEvent)]
    assert tokens == reference_greedy(session, PROMPT, 4) and isinstance(events[-1], InferResult)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_infer_cli_prints_streamed_tokens(server, capsys) -> None:
    """`heddle infer chat --stream --gen max_new_tokens=3 --json` prints three token events and the result."""
    parser = argparse.ArgumentParser(prog="heddle")
    add_infer_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["infer", "chat", "--target", server.target, "--stream", "--json",
                              "--input", f"input_ids={json.dumps([PROMPT])}", "--gen", "max_new_tokens=3"])
    assert args.func(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == ["tokens"] * 3 + ["stage_done", "result"]
    assert [line["index"] for line in lines[:3]] == [0, 1, 2]
    bad = parser.parse_args(["infer", "chat", "--target", server.target, "--gen", "max_new_tokens=lots"])
    assert bad.func(bad) == 2 and "not a number" in capsys.readouterr().err


@pytest.mark.slow
def test_loadgen_records_streamed_generations(server) -> None:
    """A streamed chat app's records carry tokens, server and client TTFT, TPOT; the report's
    LLM figures follow from them."""
    app = App("chat app", "chat", "poisson", priority=2, deadline_ms=60_000.0, rate_hz=8.0,
              stream=True, max_new_tokens=6)
    plain = App("unstreamed", "chat", "poisson", priority=1, rate_hz=4.0, max_new_tokens=4)
    scenario = Scenario("llm", (app, plain))

    result = asyncio.run(_run(server.target, scenario, 1.0, seed=3))
    streamed = [r for r in result.records if r.app == "chat app"]
    unstreamed = [r for r in result.records if r.app == "unstreamed"]
    assert streamed and unstreamed and all(r.status == "OK" for r in result.records)
    for r in streamed:
        assert r.extra["tokens"] == 6 and r.extra["ttft_ms"] > 0 and r.extra["tpot_ms"] > 0
        assert 0 < r.extra["client_ttft_ms"] <= r.latency_ms
    assert all(r.extra["tokens"] == 4 and "client_ttft_ms" not in r.extra for r in unstreamed)
    llm = summarize(result.records, result.window_s)["apps"]["chat app"]["llm"]
    assert llm["requests"] == len(streamed) and llm["tokens"] == 6 * len(streamed)
    assert llm["tokens_per_s"] == pytest.approx(6 * len(streamed) / result.window_s)
