"""Writes Triton model repositories: config.pbtxt text and python-backend models that run ONNX files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

from heddle.scheduler.specs import TensorSpec

__all__ = [
    "LLM_MODEL_PY", "ONNX_MODEL_PY", "model_config_text", "write_llm_python_model", "write_onnx_python_model",
    "write_python_model",
]

# Triton config names of the KServe datatypes (BYTES is TYPE_STRING in config.pbtxt).
_CONFIG_TYPE = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "BF16": "TYPE_BF16", "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64", "BYTES": "TYPE_STRING",
}

# Triton lets a request's `timeout` only shorten the queue policy's default, and a default of 0
# means "no timeout" (so nothing could shorten it): the default is an hour instead.
_QUEUE_TIMEOUT_US = 3600 * 1_000_000

# The model.py of every ONNX-running python-backend model. Requests that arrive in one dynamic
# batch are concatenated along the batch axis when their other dims agree, so Triton's batching
# does real work; otherwise (or with max_batch_size 0) each request runs on its own.
ONNX_MODEL_PY = '''\
"""Runs one ONNX file with onnxruntime (1 intra-op and 1 inter-op thread) as a Triton python model."""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, config["parameters"]["onnx_file"]["string_value"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.batching = config.get("max_batch_size", 0) > 0

    def _feed(self, request):
        return {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.inputs}

    def _response(self, arrays):
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in zip(self.outputs, arrays)])

    def _error(self, e):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))

    def _run_one(self, request):
        try:
            return self._response(self.session.run(self.outputs, self._feed(request)))
        except Exception as e:
            return self._error(e)

    def execute(self, requests):
        if len(requests) == 1 or not self.batching:
            return [self._run_one(r) for r in requests]
        try:
            feeds = [self._feed(r) for r in requests]
        except Exception:
            return [self._run_one(r) for r in requests]
        if any({f[n].shape[1:] for f in feeds} != {feeds[0][n].shape[1:]} for n in self.inputs):
            return [self._run_one(r) for r in requests]
        sizes = [f[self.inputs[0]].shape[0] for f in feeds]
        merged = {n: np.concatenate([f[n] for f in feeds]) for n in self.inputs}
        try:
            arrays = self.session.run(self.outputs, merged)
        except Exception:
            return [self._run_one(r) for r in requests]
        bounds = np.cumsum([0] + sizes)
        return [self._response([a[lo:hi] for a in arrays]) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def finalize(self):
        self.session = None
'''

# The model.py of a decoupled LLM: a KV-cache decoder ONNX file (the common export convention, as
# backends/llm.py) run token by token, one response per token. Each request runs on a thread of its
# own so generations overlap; a cancelled one stops before its next token. Request parameters:
# max_new_tokens, temperature (0: greedy), seed, stop_token_ids ("1,2"). A request with parameter
# probe = true answers [[generations running, generations stopped by a cancel, the last
# generation's timeout in us]] instead.
LLM_MODEL_PY = '''\
"""A decoupled Triton python model that generates with a KV-cache decoder ONNX file, token by token."""
import json
import os
import threading
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        path = os.path.join(args["model_repository"], args["model_version"], params["onnx_file"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.pasts = [(i.name, i.shape) for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.token_delay_s = float(params.get("token_delay_s", "0"))
        self.lock = threading.Lock()
        self.running = 0
        self.cancelled = 0
        self.last_timeout_us = 0

    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self._serve, args=(request,), daemon=True).start()
        return None

    def _send(self, sender, ids):
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("output_ids", np.array([ids], np.int64))]))

    def _serve(self, request):
        sender = request.get_response_sender()
        try:
            params = json.loads(request.parameters() or "{}")
            if params.get("probe"):
                with self.lock:
                    self._send(sender, [self.running, self.cancelled, self.last_timeout_us])
                return
            prompt = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
            with self.lock:
                self.running += 1
                self.last_timeout_us = request.timeout()
            try:
                self._generate(request, sender, [int(i) for i in prompt], params)
            finally:
                with self.lock:
                    self.running -= 1
        except Exception as e:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}")))
        finally:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _pick(self, logits, temperature, rng):
        if temperature == 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / temperature
        probs = np.exp(scaled - scaled.max())
        return int(rng.choice(probs.size, p=probs / probs.sum()))

    def _generate(self, request, sender, ids, params):
        max_new_tokens = int(params.get("max_new_tokens", 16))
        temperature = float(params.get("temperature", 0.0))
        rng = np.random.default_rng(params.get("seed"))
        stops = {int(s) for s in str(params.get("stop_token_ids", "")).split(",") if s.strip()}
        past = {n: np.zeros((1, s[1], 0, s[3]), np.float32) for n, s in self.pasts}
        feed_ids, positions = np.array([ids], np.int64), np.arange(len(ids), dtype=np.int64)[None]
        for _ in range(max_new_tokens):
            if request.is_cancelled():
                with self.lock:
                    self.cancelled += 1
                return
            feed = {"input_ids": feed_ids, "position_ids": positions,
                    "attention_mask": np.ones((1, len(ids)), np.int64), **past}
            result = dict(zip(self.outputs, self.session.run(self.outputs, feed)))
            token = self._pick(result["logits"][0, -1], temperature, rng)
            self._send(sender, [token])
            if token in stops:
                return
            ids.append(token)
            past = {n: result[n.replace("past_key_values", "present")] for n, _ in self.pasts}
            feed_ids, positions = np.array([[token]], np.int64), np.array([[len(ids) - 1]], np.int64)
            if self.token_delay_s:
                time.sleep(self.token_delay_s)

    def finalize(self):
        self.session = None
'''


def _dims(spec: TensorSpec, batching: bool) -> list[int]:
    if not batching:
        return list(spec.shape)
    if not spec.shape or spec.shape[0] != -1:
        raise ValueError(f"tensor {spec.name}: with max_batch_size > 0 its first dim must be the "
                         f"dynamic batch dim (-1), got shape {list(spec.shape)}")
    # Triton's config leaves the batch dim out; ModelMetadata puts it back as -1.
    return list(spec.shape[1:])


def _tensors(kind: str, specs: Sequence[TensorSpec], batching: bool) -> str:
    items = []
    for spec in specs:
        if spec.datatype not in _CONFIG_TYPE:
            raise ValueError(f"tensor {spec.name}: unknown datatype {spec.datatype!r}")
        dims = ", ".join(str(d) for d in _dims(spec, batching))
        items.append(f'  {{ name: "{spec.name}" data_type: {_CONFIG_TYPE[spec.datatype]} dims: [ {dims} ] }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _batcher(priority_levels: int, request_timeouts: bool, max_queue_delay_us: int) -> str:
    fields = []
    if max_queue_delay_us > 0:
        fields.append(f"max_queue_delay_microseconds: {max_queue_delay_us}")
    if priority_levels > 0:
        fields.append(f"priority_levels: {priority_levels} default_priority_level: {priority_levels}")
    if request_timeouts:
        fields.append("default_queue_policy { timeout_action: REJECT allow_timeout_override: true "
                      f"default_timeout_microseconds: {_QUEUE_TIMEOUT_US} }}")
    return "dynamic_batching { " + " ".join(fields) + " }\n"


def model_config_text(name: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                      max_batch_size: int = 0, priority_levels: int = 0, request_timeouts: bool = False,
                      decoupled: bool = False, instances: int = 1,
                      parameters: Mapping[str, str] | None = None, max_queue_delay_us: int = 0) -> str:
    """config.pbtxt for a python-backend model. Shapes in `inputs`/`outputs` include the batch dim
    (-1) when max_batch_size > 0, as in heddle's TensorSpecs and Triton's ModelMetadata.

    Batching models get a dynamic batcher. priority_levels > 0 gives it priority queues
    (default: the lowest level); request_timeouts makes it reject a request that waited in its
    queue longer than the request's `timeout` parameter. Both are off by default because, measured
    on Triton 2.51 with one python-backend instance, either one makes the batcher sometimes sleep
    its full 500 ms idle wait while requests are queued (p99 ~0.5 s at 4-8 concurrent clients).
    """
    batching = max_batch_size > 0
    text = f'name: "{name}"\nbackend: "python"\nmax_batch_size: {max_batch_size}\n'
    text += _tensors("input", inputs, batching) + _tensors("output", outputs, batching)
    text += f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n"
    if decoupled:
        text += "model_transaction_policy { decoupled: true }\n"
    elif batching or priority_levels > 0 or request_timeouts:
        # Without batching the batcher is only a queue: worth having for priorities and timeouts.
        text += _batcher(priority_levels, request_timeouts, max_queue_delay_us)
    for key, value in (parameters or {}).items():
        text += f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}\n'
    return text


def write_python_model(repository: str | os.PathLike, name: str, model_py: str, config_text: str,
                       files: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Write repository/name/{config.pbtxt, 1/model.py} (+ files copied into 1/); returns the model dir."""
    folder = Path(repository) / name
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(config_text)
    (version / "model.py").write_text(model_py)
    for dest, src in (files or {}).items():
        shutil.copy2(src, version / dest)
    return folder


def write_onnx_python_model(repository: str | os.PathLike, name: str, onnx_path: str | os.PathLike,
                            inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], *,
                            max_batch_size: int = 64, priority_levels: int = 0, request_timeouts: bool = False,
                            instances: int = 1) -> Path:
    """A python-backend model `name` that runs the ONNX file with onnxruntime; returns its dir.

    `inputs`/`outputs` are the ONNX graph's specs (e.g. from backends.onnxruntime.read_io_spec).
    """
    config = model_config_text(name, inputs, outputs, max_batch_size=max_batch_size,
                               priority_levels=priority_levels, request_timeouts=request_timeouts,
                               instances=instances,
                               parameters={"onnx_file": "model.onnx"})
    return write_python_model(repository, name, ONNX_MODEL_PY, config, {"model.onnx": onnx_path})


def write_llm_python_model(repository: str | os.PathLike, name: str, onnx_path: str | os.PathLike, *,
                           token_delay_s: float = 0.0) -> Path:
    """A decoupled python-backend model `name` that generates from a KV-cache decoder ONNX file
    (LLM_MODEL_PY): input_ids INT64 [1, -1] in, one output_ids INT64 [1, 1] response per token.
    token_delay_s sleeps after each token (a slow model, for tests that act mid-generation)."""
    t = TensorSpec
    config = model_config_text(name, [t("input_ids", "INT64", (1, -1))], [t("output_ids", "INT64", (1, -1))],
                               decoupled=True,
                               parameters={"onnx_file": "model.onnx", "token_delay_s": str(token_delay_s)})
    return write_python_model(repository, name, LLM_MODEL_PY, config, {"model.onnx": onnx_path})
