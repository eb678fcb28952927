"""The embedded default config: detected devices plus built-in models and demo pipelines, built as
data (server/config/builder.py), so no value from the environment is ever pasted into TOML text."""

from __future__ import annotations

import os
from typing import Any

from heddle.server.config.builder import (
    document,
    map_stage,
    onnx_model,
    pipeline,
    python_model,
    stage,
    tensor,
    to_toml,
)
from heddle.server.config.tables import DEFAULT_CACHE_DIR

__all__ = [
    "FRAME_OPS", "FRAME_OPS_TOML", "POSTPROCESS", "POSTPROCESS_TOML", "PREPROCESS", "PREPROCESS_TOML", "REGION_OPS",
    "TOKENIZER_MODELS", "TOKENIZER_MODELS_TOML", "default_config_document", "default_config_text",
    "detect_device_tables", "detect_devices",
]

IMAGE_U8, IMAGE = tensor("image", "UINT8", (-1, 64, 64, 3)), tensor("image", "FP32", (-1, 3, 64, 64))
LOGITS, LABEL = tensor("logits", "FP32", (-1, 10)), tensor("label", "INT64", (-1,))
PROBS, EMBEDDING = tensor("probs", "FP32", (-1, 10)), tensor("embedding", "FP32", (-1, 32))
TEXT, IDS = tensor("text", "BYTES", (1,)), (1, -1)

# The python stages around the demo CNNs (64x64 UINT8 NHWC image in, 10-class probs and label
# out); benchmarks and tests that build their own configs reuse them.
PREPROCESS = python_model("preprocess", "heddle.backends.zoo.ops:preprocess", [IMAGE_U8], [IMAGE])
POSTPROCESS = python_model("postprocess", "heddle.backends.zoo.ops:postprocess", [LOGITS], [PROBS, LABEL])
FRAME_OPS = [PREPROCESS, POSTPROCESS]
# The detect -> crop -> classify demo's python stages (backends/zoo/regions.py): crops are a list,
# one classifier-sized image per region the detector found (docs/CONFIG.md, "Fan-out"); the
# threshold and region cap are per-request parameters.
SCORES, BOXES = tensor("scores", "FP32", (-1, 8, 8)), tensor("boxes", "FP32", (-1, 6))
REGION_OPS = [
    python_model("crop_regions", "heddle.backends.zoo.regions:crop_regions", [IMAGE, SCORES],
                 [{**tensor("crops", "FP32", (-1, 3, 64, 64)), "list": True}, BOXES],
                 parameters={"threshold": {"type": "float", "default": 0.5},
                             "max_regions": {"type": "int", "default": 8}}),
    python_model("gather_regions", "heddle.backends.zoo.regions:gather_regions",
                 [{**LOGITS, "name": "logits", "list": True}, BOXES], [BOXES, PROBS, LABEL]),
]
# The byte tokenizer's python stages around an LLM (text in, text out); tests reuse them.
TOKENIZER_MODELS = [
    python_model("tokenize", "heddle.backends.tokenizer:encode_text", [TEXT], [tensor("input_ids", "INT64", IDS)]),
    python_model("detokenize", "heddle.backends.tokenizer:decode_ids", [tensor("output_ids", "INT64", IDS)], [TEXT]),
]
# The same as TOML text, for configs still written as text.
PREPROCESS_TOML, POSTPROCESS_TOML = to_toml({"models": [PREPROCESS]}), to_toml({"models": [POSTPROCESS]})
FRAME_OPS_TOML = to_toml({"models": FRAME_OPS})
TOKENIZER_MODELS_TOML = to_toml({"models": TOKENIZER_MODELS})

# Built-in models come from the builder (backends/zoo) into the cache dir on first run.
# The DNN demo models batch requests that queue behind a busy device, up to 8 rows a pass (dynamic
# batching, docs/CONFIG.md); max_queue_delay_us stays 0, so an idle device never waits for company
# and a lone request pays nothing. On a 2-core box the backbone -> head_cls -> postprocess chain
# served 1.29x the requests at 16 clients with it (p99 108 vs 174 ms), the same at 1 and 4
# (bench/results/2026-12-03/chain_batching.json, heddle_local_batched vs heddle_local).
_BATCH = {"max_batch": 8}
_MODELS = [
    *(onnx_model(name, f"builtin:{name}", **_BATCH) for name in ("cnn", "backbone", "head_cls", "head_emb")),
    onnx_model("detector", "builtin:detector", **_BATCH),
    onnx_model("encoder", "builtin:encoder", kind="transformer", **_BATCH),
    onnx_model("text_cls", "builtin:text_cls", **_BATCH),
    # Generation defaults; requests override them with GenerationOptions. Decode steps of up to
    # 8 sequences share one forward pass (and one device slot).
    onnx_model("llm", "builtin:llm", kind="llm", max_new_tokens=32, max_positions=512, max_batch=8, tokenizer="byte"),
    *TOKENIZER_MODELS,
    *FRAME_OPS,
    *REGION_OPS,
    python_model("join", "heddle.backends.zoo.ops:join", [LOGITS, EMBEDDING], [PROBS, LABEL, EMBEDDING]),
]

_RANDOM = "the demo LLM has random weights: its {} is random {}, not language"
_PIPELINES = [
    pipeline("classify", [IMAGE_U8], {"probs": "post.probs", "label": "post.label"}, [
        stage("pre", "preprocess", image="input:image"),
        stage("cnn", "cnn", image="pre.image"),
        stage("post", "postprocess", logits="cnn.logits"),
    ], "image (uint8 NHWC) -> preprocess (python) -> CNN -> postprocess (python)"),
    pipeline("multihead", [IMAGE], {"probs": "join.probs", "label": "join.label", "embedding": "join.embedding"}, [
        stage("backbone", "backbone", image="input:image"),
        stage("cls", "head_cls", features="backbone.features"),
        stage("emb", "head_emb", features="backbone.features"),
        stage("join", "join", logits="cls.logits", embedding="emb.embedding"),
    ], "image -> CNN backbone -> two heads in parallel -> join (python)"),
    pipeline("detect_classify", [IMAGE_U8], {"boxes": "gather.boxes", "probs": "gather.probs",
                                             "label": "gather.label"}, [
        stage("pre", "preprocess", image="input:image"),
        stage("detect", "detector", image="pre.image"),
        stage("crop", "crop_regions", image="pre.image", scores="detect.scores"),
        map_stage("classify", "cnn", "crop.crops", image="crop.crops"),  # one run per region
        stage("gather", "gather_regions", logits="classify.logits", boxes="crop.boxes"),
    ], "image (uint8 NHWC) -> preprocess -> detector -> crop each confident cell (python, a list) -> CNN per "
       "region (a map stage: regions run on any device, batched) -> gather (python); parameters threshold, "
       "max_regions"),
    pipeline("text_classify", [tensor("input_ids", "INT64", (-1, -1)), tensor("attention_mask", "INT64", (-1, -1))],
             {"logits": "cls.logits"}, [
        stage("encoder", "encoder", input_ids="input:input_ids", attention_mask="input:attention_mask"),
        stage("cls", "text_cls", pooled="encoder.pooled"),
    ], "token ids -> transformer encoder -> classifier"),
    pipeline("chat", [tensor("input_ids", "INT64", IDS)], {"output_ids": "llm.output_ids"}, [
        stage("llm", "llm", input_ids="input:input_ids"),
    ], "token ids -> decoder LLM with KV cache (tokens stream with InferStream) -> generated ids; "
       + _RANDOM.format("output", "tokens")),
    pipeline("chat_text", [TEXT], {"text": "detok.text", "output_ids": "llm.output_ids"}, [
        stage("tok", "tokenize", text="input:text"),
        stage("llm", "llm", input_ids="tok.input_ids"),
        stage("detok", "detokenize", output_ids="llm.output_ids"),
    ], "text -> byte tokenizer (python) -> LLM -> detokenizer (python) -> text; " + _RANDOM.format("text", "bytes")),
]


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
    return to_toml({"devices": detect_devices(cpu_count, gpu_count)})


def default_config_document() -> dict[str, Any]:
    """The whole embedded default config as a document (what TOML would parse to). Built as data,
    so an environment value (HEDDLE_CACHE_DIR) is a value, never TOML text to escape."""
    server = {"policy": "priority", "cache_dir": os.environ.get("HEDDLE_CACHE_DIR", DEFAULT_CACHE_DIR)}
    return document(server=server, devices=detect_devices(), models=_MODELS, pipelines=_PIPELINES)


def default_config_text() -> str:
    """The embedded default config as TOML: every value escaped (config_builder.to_toml)."""
    return to_toml(default_config_document())
