"""An OpenAI request body, checked: the prompt (text, token ids, or chat messages), generation
settings, stream flags, and heddle's priority and deadline (body `priority` or `x-heddle-priority`,
header `x-heddle-deadline-ms`). Anything heddle cannot honour is refused, never silently dropped."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from heddle.clients.tensors import clipped
from heddle.server.config.load import ServerSettings
from heddle.server.frontends.openai_catalog import ChatModel
from heddle.server.frontends.validation import check_generation, effective_deadline_s, resolve_priority
from heddle.server.runtime.status import RequestError

__all__ = ["PRIORITY_HEADER", "DEADLINE_HEADER", "OpenAIRequest", "deadline_s_of", "parse_body", "parse_request",
           "priority_of"]

PRIORITY_HEADER = "x-heddle-priority"
DEADLINE_HEADER = "x-heddle-deadline-ms"
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
# Fields heddle cannot honour, refused when set to anything but their "off" value.
_UNSUPPORTED_OFF: Mapping[str, tuple[Any, ...]] = {
    "n": (None, 1), "best_of": (None, 1), "echo": (None, False), "logprobs": (None, False, 0),
    "top_logprobs": (None, 0), "logit_bias": (None, {}), "tools": (None, []), "functions": (None, []),
    "stop": (None, [], ""), "suffix": (None, ""), "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
}


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    prompt_ids: list[int]
    generation: Mapping[str, object] | None
    stream: bool
    include_usage: bool
    priority: int
    deadline_s: float | None


def _bad(message: str, param: str | None = None) -> RequestError:
    return RequestError(_INVALID, message if param is None else f"{param}: {message}")


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise _bad(f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad("the body must be a JSON object")
    return doc


def _int(doc: Mapping[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise _bad(f"must be an integer, got {clipped(json.dumps(value))}", key)
    return value


def _number(doc: Mapping[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        raise _bad(f"must be a number, got {clipped(json.dumps(value))}", key)
    return value


def _generation(doc: Mapping[str, Any]) -> Mapping[str, object] | None:
    max_tokens = _int(doc, "max_completion_tokens")
    max_tokens = _int(doc, "max_tokens") if max_tokens is None else max_tokens
    found = {"max_new_tokens": max_tokens, "temperature": _number(doc, "temperature"),
             "top_p": _number(doc, "top_p"), "top_k": _int(doc, "top_k"), "seed": _int(doc, "seed")}
    found = {k: v for k, v in found.items() if v is not None}
    return check_generation(found, "") if found else None


def _message_text(i: int, message: Any) -> dict[str, str]:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise _bad(f"messages[{i}] must be an object with a string 'role'")
    content = message.get("content")
    if isinstance(content, list):  # content parts: text only
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise _bad(f"messages[{i}].content: only text parts are supported")
        content = "".join(p["text"] for p in content)
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise _bad(f"messages[{i}].content must be a string or a list of text parts")
    return {"role": message["role"], "content": content}


def _prompt_ids(doc: Mapping[str, Any], model: ChatModel, chat: bool) -> list[int]:
    """The prompt's token ids: chat messages through the model's template, a completion prompt as
    text or as token ids; the byte tokenizer's BOS first."""
    if chat:
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _bad("must be a non-empty list of messages", "messages")
        text = model.render_chat([_message_text(i, m) for i, m in enumerate(messages)])
        return [*model.bos_ids, *model.tokenizer.encode(text)]
    prompt = doc.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return [*model.bos_ids, *model.tokenizer.encode(prompt)]
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return list(prompt)
    raise _bad("must be a string, or a non-empty list of token ids (one prompt per request)", "prompt")


def priority_of(doc: Mapping[str, Any], headers: Mapping[str, str], settings: ServerSettings) -> int:
    """Body `priority`, else the x-heddle-priority header; heddle's scale (1..levels, higher is more
    urgent, 0 = default)."""
    value: Any = doc.get("priority")
    if value is None and PRIORITY_HEADER in headers:
        raw = headers[PRIORITY_HEADER].strip()
        try:
            value = int(raw)
        except ValueError:
            raise _bad(f"must be an integer, got {clipped(raw)!r}", PRIORITY_HEADER) from None
    if value is None:
        return settings.default_priority
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"must be an integer, got {clipped(json.dumps(value))}", "priority")
    return resolve_priority(value, settings)


def deadline_s_of(headers: Mapping[str, str]) -> float | None:
    raw = headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise _bad(f"must be a number of milliseconds, got {clipped(raw)!r}", DEADLINE_HEADER) from None
    return effective_deadline_s(ms, None)  # 0 = none; NaN, inf, negative or over 24 h refused there


def parse_request(doc: Mapping[str, Any], headers: Mapping[str, str], model: ChatModel, settings: ServerSettings,
                  *, chat: bool) -> OpenAIRequest:
    """The checked request; RequestError (INVALID_ARGUMENT) naming the first field that is wrong."""
    for key, off in _UNSUPPORTED_OFF.items():
        if key in doc and doc[key] not in off:
            raise _bad(f"heddle does not support {key!r} (got {clipped(json.dumps(doc[key]))})", key)
    stream = doc.get("stream", False)
    options = doc.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise _bad("'stream' must be a boolean and 'stream_options' an object")
    return OpenAIRequest(
        prompt_ids=_prompt_ids(doc, model, chat), generation=_generation(doc), stream=stream,
        include_usage=bool(options.get("include_usage", False)), priority=priority_of(doc, headers, settings),
        deadline_s=deadline_s_of(headers),
    )
