"""What the OpenAI-compatible API calls models: heddle's LLM pipelines (and LLM models, wrapped as
the KServe frontend wraps them) that take token ids straight into an LLM stage and give its
generated ids back, with the model's tokenizer and a chat template to turn messages into a prompt.

The chat template is the `chat_template` of the `tokenizer_config.json` beside the model's
`tokenizer.json` (rendered with Jinja2 in a sandbox, as Hugging Face's transformers does); a model
without one uses DEFAULT_CHAT_TEMPLATE.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heddle.backends.llm import GenerationConfig
from heddle.backends.tokenizer import BOS_ID, ByteTokenizer, Tokenizer, load_tokenizer
from heddle.scheduler import ModelSpec, Pipeline
from heddle.server.frontends.kserve_catalog import CatalogEntry
from heddle.server.observe.logs import get_logger

__all__ = ["DEFAULT_CHAT_TEMPLATE", "ChatModel", "chat_models", "default_template"]

log = get_logger("heddle.openai")

# Used when the tokenizer has no chat template: one block per message, then the assistant's turn.
DEFAULT_CHAT_TEMPLATE = "<|{role}|>\n{content}\n"
_ASSISTANT_TURN = "<|assistant|>\n"

Messages = Sequence[Mapping[str, str]]


def default_template(messages: Messages) -> str:
    """DEFAULT_CHAT_TEMPLATE over the messages, ending with the assistant's turn."""
    return "".join(DEFAULT_CHAT_TEMPLATE.format(role=m["role"], content=m["content"]) for m in messages) \
        + _ASSISTANT_TURN


@dataclass(frozen=True, slots=True)
class ChatModel:
    """One OpenAI model: the pipeline to run, its token-id input and output, the LLM stage whose
    tokens stream, how to tokenize, and how to render a chat."""

    name: str
    pipeline: Pipeline
    input_name: str
    output_name: str
    llm_stage: str
    tokenizer: Tokenizer
    bos_ids: tuple[int, ...]  # put before every prompt (the byte tokenizer's BOS, as its text stage does)
    max_new_tokens: int  # the model's default, to tell "length" from "stop"
    render_chat: Callable[[Messages], str]
    template_source: str  # "tokenizer_config.json" or "default"


def _llm_wiring(entry: CatalogEntry, models: Mapping[str, ModelSpec]) -> tuple[str, str, str] | None:
    """(input, output, LLM stage) when the pipeline's one INT64 input goes straight into an LLM
    stage's input_ids and that stage's output_ids is a pipeline output; else None."""
    p = entry.pipeline
    if len(p.inputs) != 1 or p.inputs[0].datatype != "INT64":
        return None
    for stage in p.stages:
        if models[stage.model].kind != "llm":
            continue
        wire = p.wires[stage.name].get("input_ids")
        if wire is None or wire.stage is not None or wire.tensor != p.inputs[0].name:
            continue
        outs = [n for n, w in p.output_wires.items() if w.stage == stage.name and w.tensor == "output_ids"]
        if outs:
            return p.inputs[0].name, outs[0], stage.name
    return None


def _template(ref: str) -> tuple[Callable[[Messages], str], str]:
    """The tokenizer config's chat template beside a tokenizer.json, else the default."""
    path = Path(ref).expanduser()
    config_file = (path if path.is_dir() else path.parent) / "tokenizer_config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return default_template, "default"
    source = config.get("chat_template")
    if isinstance(source, list):  # named templates: the "default" one
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    if not isinstance(source, str):
        return default_template, "default"
    return _jinja(source, config), "tokenizer_config.json"


def _token_text(value: Any) -> str:
    return value.get("content", "") if isinstance(value, dict) else (value or "")


def _jinja(source: str, config: Mapping[str, Any]) -> Callable[[Messages], str]:
    """A Hugging Face chat template, compiled once in Jinja2's sandbox (it comes from a model file)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(source)
    specials = {"bos_token": _token_text(config.get("bos_token")), "eos_token": _token_text(config.get("eos_token"))}

    def render(messages: Messages) -> str:
        return template.render(messages=list(messages), add_generation_prompt=True, **specials)
    return render


def _chat_model(entry: CatalogEntry, models: Mapping[str, ModelSpec]) -> ChatModel | None:
    wiring = _llm_wiring(entry, models)
    if wiring is None:
        return None
    input_name, output_name, stage = wiring
    spec = models[entry.pipeline.stage(stage).model]
    ref = spec.options.get("tokenizer")
    if not ref:
        log.info("LLM without a tokenizer is not an OpenAI model", name=entry.name)
        return None
    tokenizer = load_tokenizer(ref)
    render, source = (default_template, "default") if ref == "byte" else _template(str(ref))
    return ChatModel(
        name=entry.name, pipeline=entry.pipeline, input_name=input_name, output_name=output_name,
        llm_stage=stage, tokenizer=tokenizer,
        bos_ids=(BOS_ID,) if isinstance(tokenizer, ByteTokenizer) else (),
        max_new_tokens=GenerationConfig.from_options(spec.options).max_new_tokens,
        render_chat=render, template_source=source,
    )


def chat_models(catalog: Mapping[str, CatalogEntry], models: Mapping[str, ModelSpec]) -> dict[str, ChatModel]:
    """Every catalog entry that is an LLM taking token ids, by name."""
    found = {}
    for name, entry in sorted(catalog.items()):
        model = _chat_model(entry, models)
        if model is not None:
            found[name] = model
    return found
