"""The embedded default config: detected devices plus built-in models and demo pipelines."""

from __future__ import annotations

import os
try:  # tomllib is new in 3.11; on 3.10 the tomli package is the same parser
    import tomllib
except ModuleNotFoundError:
    import tomli as tomllib
from typing import Any

from heddle.server.config_tables import DEFAULT_CACHE_DIR

__all__ = [
    "FRAME_OPS_TOML", "POSTPROCESS_TOML", "PREPROCESS_TOML", "TOKENIZER_MODELS_TOML", "default_config_document",
    "default_config_text", "detect_device_tables", "detect_devices",
]

# Models come from the builder (backends/zoo) into the cache dir on first run.
# The python stages around the demo CNNs (64x64 UINT8 NHWC image in, 10-class probs and label
# out); benchmarks and tests that build their own configs reuse them.
PREPROCESS_TOML = """\
[[models]]
name = "preprocess"
backend = "python"
function = "heddle.backends.zoo.ops:preprocess"
inputs = [{ name = "image", datatype = "UINT8", shape = [-1, 64, 64, 3] }]
outputs = [{ name = "image", datatype = "FP32", shape = [-1, 3, 64, 64] }]
"""
POSTPROCESS_TOML = """\
[[models]]
name = "postprocess"
backend = "python"
function = "heddle.backends.zoo.ops:postprocess"
inputs = [{ name = "logits", datatype = "FP32", shape = [-1, 10] }]
outputs = [
  { name = "probs", datatype = "FP32", shape = [-1, 10] },
  { name = "label", datatype = "INT64", shape = [-1] },
]
"""
FRAME_OPS_TOML = PREPROCESS_TOML + "\n" + POSTPROCESS_TOML

# The byte tokenizer's python stages around an LLM (text in, text out); tests reuse them.
TOKENIZER_MODELS_TOML = """\
[[models]]
name = "tokenize"
backend = "python"
function = "heddle.backends.tokenizer:encode_text"
inputs = [{ name = "text", datatype = "BYTES", shape = [1] }]
outputs = [{ name = "input_ids", datatype = "INT64", shape = [1, -1] }]

[[models]]
name = "detokenize"
backend = "python"
function = "heddle.backends.tokenizer:decode_ids"
inputs = [{ name = "output_ids", datatype = "INT64", shape = [1, -1] }]
outputs = [{ name = "text", datatype = "BYTES", shape = [1] }]
"""

_MODELS = """
[[models]]
name = "cnn"
path = "builtin:cnn"

[[models]]
name = "backbone"
path = "builtin:backbone"

[[models]]
name = "head_cls"
path = "builtin:head_cls"

[[models]]
name = "head_emb"
path = "builtin:head_emb"

[[models]]
name = "encoder"
kind = "transformer"
path = "builtin:encoder"

[[models]]
name = "text_cls"
path = "builtin:text_cls"

[[models]]
name = "llm"
kind = "llm"
path = "builtin:llm"
# Generation defaults; requests override them with GenerationOptions.
max_new_tokens = 32
max_positions = 512
max_batch = 8  # decode steps of up to 8 sequences share one forward pass (and one device slot)
tokenizer = "byte"

""" + TOKENIZER_MODELS_TOML + """
""" + FRAME_OPS_TOML + """
[[models]]
name = "join"
backend = "python"
function = "heddle.backends.zoo.ops:join"
inputs = [
  { name = "logits", datatype = "FP32", shape = [-1, 10] },
  { name = "embedding", datatype = "FP32", shape = [-1, 32] },
]
outputs = [
  { name = "probs", datatype = "FP32", shape = [-1, 10] },
  { name = "label", datatype = "INT64", shape = [-1] },
  { name = "embedding", datatype = "FP32", shape = [-1, 32] },
]
"""

_PIPELINES = """
[[pipelines]]
name = "classify"
description = "image (uint8 NHWC) -> preprocess (python) -> CNN -> postprocess (python)"
inputs = [{ name = "image", datatype = "UINT8", shape = [-1, 64, 64, 3] }]
outputs = { probs = "post.probs", label = "post.label" }
stages = [
  { name = "pre", model = "preprocess", inputs = { image = "input:image" } },
  { name = "cnn", model = "cnn", inputs = { image = "pre.image" } },
  { name = "post", model = "postprocess", inputs = { logits = "cnn.logits" } },
]

[[pipelines]]
name = "multihead"
description = "image -> CNN backbone -> two heads in parallel -> join (python)"
inputs = [{ name = "image", datatype = "FP32", shape = [-1, 3, 64, 64] }]
outputs = { probs = "join.probs", label = "join.label", embedding = "join.embedding" }
stages = [
  { name = "backbone", model = "backbone", inputs = { image = "input:image" } },
  { name = "cls", model = "head_cls", inputs = { features = "backbone.features" } },
  { name = "emb", model = "head_emb", inputs = { features = "backbone.features" } },
  { name = "join", model = "join", inputs = { logits = "cls.logits", embedding = "emb.embedding" } },
]

[[pipelines]]
name = "text_classify"
description = "token ids -> transformer encoder -> classifier"
inputs = [
  { name = "input_ids", datatype = "INT64", shape = [-1, -1] },
  { name = "attention_mask", datatype = "INT64", shape = [-1, -1] },
]
outputs = { logits = "cls.logits" }
stages = [
  { name = "encoder", model = "encoder", inputs = { input_ids = "input:input_ids", attention_mask = "input:attention_mask" } },
  { name = "cls", model = "text_cls", inputs = { pooled = "encoder.pooled" } },
]

[[pipelines]]
name = "chat"
description = "token ids -> decoder LLM with KV cache (tokens stream with InferStream) -> generated ids; the demo LLM has random weights: its output is random tokens, not language"
inputs = [{ name = "input_ids", datatype = "INT64", shape = [1, -1] }]
outputs = { output_ids = "llm.output_ids" }
stages = [
  { name = "llm", model = "llm", inputs = { input_ids = "input:input_ids" } },
]

[[pipelines]]
name = "chat_text"
description = "text -> byte tokenizer (python) -> LLM -> detokenizer (python) -> text; the demo LLM has random weights: its text is random bytes, not language"
inputs = [{ name = "text", datatype = "BYTES", shape = [1] }]
outputs = { text = "detok.text", output_ids = "llm.output_ids" }
stages = [
  { name = "tok", model = "tokenize", inputs = { text = "input:text" } },
  { name = "llm", model = "llm", inputs = { input_ids = "tok.input_ids" } },
  { name = "detok", model = "detokenize", inputs = { output_ids = "llm.output_ids" } },
]
"""


def _cuda_gpu_count() -> int:
    """GPUs usable through ONNX Runtime's CUDA EP: the EP must be built in and NVML must see GPUs."""
    try:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return 0
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: a CPU box
        return 0


def detect_devices(cpu_count: int | None = None, gpu_count: int | None = None) -> list[dict[str, Any]]:
    """[[devices]] tables for this machine: CPU cores split into pinned devices, one per GPU, a python pool."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if cpu_count is not None:
        cores = list(range(cpu_count))
    # Up to 4 CPU devices, each pinned to its own slice of cores: independent DAG branches
    # then really run in parallel, and one busy model cannot steal another device's cores.
    n_dev = max(1, min(4, len(cores)))
    per = max(1, len(cores) // n_dev)
    devices: list[dict[str, Any]] = []
    for i in range(n_dev):
        mine = cores[i * per:(i + 1) * per] or cores[:1]
        devices.append({"id": f"cpu{i}", "kind": "cpu", "backend": "onnxruntime", "slots": 1,
                        "providers": ["CPUExecutionProvider"], "intra_op_threads": len(mine),
                        "cpu_affinity": mine})
    for g in range(_cuda_gpu_count() if gpu_count is None else gpu_count):
        devices.append({"id": f"gpu{g}", "kind": "gpu", "backend": "onnxruntime", "slots": 1,
                        "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                        "provider_options": [{"device_id": g}, {}]})
    # Python pre/post-processing is light; two slots so it never serialises two pipelines.
    devices.append({"id": "py0", "kind": "cpu", "backend": "python", "slots": 2})
    return devices


def detect_device_tables(cpu_count: int | None = None, gpu_count: int | None = None) -> str:
    """detect_devices() as TOML text, for configs written as text."""
    from heddle.server.config_builder import to_toml

    return to_toml({"devices": detect_devices(cpu_count, gpu_count)})


def default_config_document() -> dict[str, Any]:
    """The whole embedded default config as a document (what TOML would parse to). Built as data,
    so an environment value (HEDDLE_CACHE_DIR) is a value, never TOML text to escape."""
    doc = tomllib.loads(_MODELS + _PIPELINES)
    server = {"policy": "priority", "cache_dir": os.environ.get("HEDDLE_CACHE_DIR", DEFAULT_CACHE_DIR)}
    return {"server": server, "devices": detect_devices(), **doc}


def default_config_text() -> str:
    """The embedded default config as TOML: every value escaped (config_builder.to_toml)."""
    from heddle.server.config_builder import to_toml

    return to_toml(default_config_document())
