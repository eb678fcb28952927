"""The OpenAI-compatible API on the HTTP port, driven by the real `openai` package against a real
gateway: models, completions and chat completions, streamed and not, give the LLM pipeline's own
tokens (as heddle.v1 returns them) with usage counts; priority and deadline apply; errors have
OpenAI's shape (400, 404, 429 with Retry-After); a tokenizer config's chat template is used."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import stage_fns
from http_fixtures import http_call, http_json
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    chain_toml,
    heddle_cache_dir,
    py_model_toml,
    serve_toml,
)

from heddle.backends.tokenizer import BOS_ID, ByteTokenizer, byte_tokenizer_json
from heddle.clients.client import HeddleClient
from heddle.server.frontends.openai_catalog import default_template

TEMPLATE = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
            "{% if add_generation_prompt %}[bot]{% endif %}")


def llm_toml(cache: Path, name: str, tokenizer: str) -> str:
    return f"""
[[models]]
name = "{name}"
kind = "llm"
path = "builtin:llm"
max_new_tokens = 6
max_positions = 512
max_batch = 8
tokenizer = "{tokenizer}"
"""


@pytest.fixture(scope="module")
def server(heddle_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """An LLM gateway: `chat` (token ids in, generated ids out) on the byte tokenizer, `llm_t` with a
    tokenizer.json and a chat template beside it, and a gated python chain holding admission."""
    tok = tmp_path_factory.mktemp("tokenizer")
    (tok / "tokenizer.json").write_text(byte_tokenizer_json())
    (tok / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    toml = f"""
[server]
cache_dir = "{heddle_cache_dir}"

[admission]
max_in_flight = 4

[[devices]]
id = "cpu0"
backend = "onnxruntime"

[[devices]]
id = "py0"
backend = "python"
slots = 2
{llm_toml(heddle_cache_dir, "llm", "byte")}
{llm_toml(heddle_cache_dir, "llm_t", str(tok))}
{py_model_toml("gate", "stage_fns:gate", devices=["py0"])}
{chain_toml("gated", ["gate"])}
[[pipelines]]
name = "chat"
inputs = [{{ name = "input_ids", datatype = "INT64", shape = [1, -1] }}]
outputs = {{ output_ids = "llm.output_ids" }}
stages = [{{ name = "llm", model = "llm", inputs = {{ input_ids = "input:input_ids" }} }}]
"""
    with serve_toml(toml) as running:
        yield running


@pytest.fixture()
def client(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"http://127.0.0.1:{server.server.http_port}/v1", api_key="unused",
                       max_retries=0, timeout=60) as c:
        yield c


def grpc_tokens(server: RunningServer, prompt: list[int], n: int) -> list[int]:
    with HeddleClient(server.target) as c:
        result = c.infer("chat", {"input_ids": np.array([prompt], np.int64)}, generation={"max_new_tokens": n})
    return result.outputs["output_ids"].reshape(-1).tolist()


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello heddle"}]


def test_models_lists_the_llm_pipelines_and_models(client) -> None:
    """/v1/models lists every LLM that takes token ids (the pipeline and the models), nothing else."""
    assert sorted(m.id for m in client.models.list()) == ["chat", "llm", "llm_t"]
    assert client.models.retrieve("chat").owned_by == "heddle"


def test_chat_completion_is_the_pipelines_greedy_tokens_with_usage(client, server) -> None:
    """A chat completion renders the default template, runs the pipeline and returns its tokens as text;
    usage counts the prompt (BOS + template bytes) and the generated tokens; max_tokens is honoured."""
    reply = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=5)
    prompt = [BOS_ID, *default_template(MESSAGES).encode()]
    tokens = grpc_tokens(server, prompt, 5)
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and choice.message.content == ByteTokenizer().decode(tokens)
    assert choice.finish_reason == "length" and reply.object == "chat.completion" and reply.model == "chat"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(prompt), 5)
    assert reply.usage.total_tokens == len(prompt) + 5


def test_completion_of_text_and_of_token_ids(client, server) -> None:
    """/v1/completions takes a text prompt (BOS + bytes) or token ids; text and usage as heddle.v1 gives."""
    reply = client.completions.create(model="llm", prompt="once upon", max_tokens=4)
    assert reply.choices[0].text == ByteTokenizer().decode(grpc_tokens(server, [BOS_ID, *b"once upon"], 4))
    assert reply.usage.prompt_tokens == 10 and reply.usage.completion_tokens == 4
    ids = client.completions.create(model="chat", prompt=[3, 1, 4, 1, 5], max_tokens=3)
    assert ids.choices[0].text == ByteTokenizer().decode(grpc_tokens(server, [3, 1, 4, 1, 5], 3))
    assert ids.usage.prompt_tokens == 5


def test_streamed_chat_is_the_same_text_in_chunks_then_usage(client) -> None:
    """stream=True sends chunks whose deltas make the non-streamed answer, the finish reason on the
    last choice chunk, then usage (stream_options.include_usage)."""
    whole = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=6)
    chunks = list(client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=6, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert len({c.id for c in chunks}) == 1


def test_streamed_completion(client) -> None:
    """Completions stream too, and their text is the non-streamed text."""
    whole = client.completions.create(model="llm", prompt="abc", max_tokens=5)
    chunks = list(client.completions.create(model="llm", prompt="abc", max_tokens=5, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.slow
def test_tokenizer_config_chat_template_is_used(client) -> None:
    """A model whose tokenizer.json has a tokenizer_config.json chat template renders messages with it."""
    reply = client.chat.completions.create(model="llm_t", messages=MESSAGES, max_tokens=2)
    rendered = "[system]be brief[user]hello heddle[bot]"
    assert reply.usage.prompt_tokens == len(rendered.encode())  # the byte-level tokenizer.json: one id a byte


def test_priority_from_body_or_header_and_deadline_header(client, server) -> None:
    """`priority` in the body or x-heddle-priority runs at that level; a bad one is 400 in OpenAI's shape;
    x-heddle-deadline-ms is the request's deadline (one already passed is 504), and a malformed one is 400."""
    assert client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1,
                                          extra_body={"priority": 4}).choices
    assert client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1,
                                          extra_headers={"x-heddle-priority": "1",
                                                         "x-heddle-deadline-ms": "60000"}).choices
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="chat", messages=MESSAGES, extra_body={"priority": 9})
    assert err.value.status_code == 400 and "priority 9 is outside 1..4" in err.value.message
    assert err.value.body["type"] == "invalid_request_error" and err.value.body["code"] == "invalid_argument"
    with pytest.raises(openai.BadRequestError, match="x-heddle-priority"):
        client.chat.completions.create(model="chat", messages=MESSAGES, extra_headers={"x-heddle-priority": "hi"})
    with pytest.raises(openai.BadRequestError, match="deadline"):
        client.chat.completions.create(model="chat", messages=MESSAGES,
                                       extra_headers={"x-heddle-deadline-ms": "-5"})
    # 1 us has passed by the time the scheduler could start the stage: shed, 504.
    reply = http_json(server, "/v1/chat/completions", {"model": "chat", "messages": MESSAGES},
                      {"x-heddle-deadline-ms": "0.001"})
    assert reply.status == 504 and reply.json()["error"]["type"] == "timeout_error", reply.body
    assert reply.json()["error"]["code"] == "deadline_exceeded"


def test_unknown_model_unsupported_fields_and_bad_bodies_are_errors_in_openais_shape(client, server) -> None:
    """An unknown model is 404 (model_not_found); n=2 or stop is a 400 naming the field; raw junk is a
    400 with {"error": {"message", "type", "param", "code"}}; request ids come back in the id."""
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert err.value.body["code"] == "model_not_found" and "gpt-9" in err.value.message
    with pytest.raises(openai.BadRequestError, match="'n'"):
        client.chat.completions.create(model="chat", messages=MESSAGES, n=2)
    with pytest.raises(openai.BadRequestError, match="'stop'"):
        client.completions.create(model="chat", prompt="x", stop=["\n"])
    reply = http_call(server, "POST", "/v1/chat/completions", b"{oops", {"content-type": "application/json"})
    assert reply.status == 400 and set(reply.json()["error"]) == {"message", "type", "param", "code"}
    reply = http_json(server, "/v1/completions", {"model": "chat", "prompt": "x", "max_tokens": 1},
                      {"x-request-id": "abc-1"})
    assert reply.status == 200 and reply.json()["id"] == "cmpl-abc-1" and reply.headers["x-request-id"] == "abc-1"


@pytest.mark.slow
def test_admission_refusal_is_429_with_retry_after(client, server) -> None:
    """With the one slot priority 1 may take held by a gated request, an OpenAI request at priority 1 is
    429 (openai.RateLimitError) with Retry-After, streamed or not; once the slot frees, it runs."""
    stage_fns.reset()
    with HeddleClient(server.target) as grpc_client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(grpc_client.infer, "gated", {"x": stage_fns.tagged(1)}, priority=1, timeout_s=60)
        try:
            assert stage_fns.wait_for_call("gate", 1), "the held request never started"
            for stream in (False, True):
                with pytest.raises(openai.RateLimitError) as err:
                    client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1, stream=stream,
                                                   extra_body={"priority": 1})
                assert int(err.value.response.headers["retry-after"]) >= 1
                assert err.value.body["type"] == "rate_limit_error"
        finally:
            stage_fns.open_gate()
        held.result(timeout=60)
    assert client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1,
                                          extra_body={"priority": 1}).choices
