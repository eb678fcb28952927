"""The model.py sources of heddle's python-backend Triton models: ONNX runners and a decoupled LLM."""

from __future__ import annotations

__all__ = ["HOLD_PY", "LLM_MODEL_PY", "ONNX_MODEL_PY"]

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

# A module-level function for python-backend model code: holds the calling request until a test
# releases it. The test listens on folder/started.fifo, then writes folder/release.fifo (the Gate
# of tests/triton_fixtures.py); with no FIFOs or no listener it does not hold. The release end is
# opened first, so a test that hears "started" can release at once; bounded, so a failed test
# cannot wedge the server.
HOLD_PY = '''

def hold(folder):
    import select
    path = os.path.join(folder, "release.fifo")
    if not os.path.exists(path):
        return
    release = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        started = os.open(os.path.join(folder, "started.fifo"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        os.close(release)
        return
    os.write(started, b"s")
    os.close(started)
    select.select([release], [], [], 60)
    os.close(release)
'''

# The model.py of a decoupled LLM: a KV-cache decoder ONNX file (the common export convention, as
# backends/llm.py) run token by token, one response per token. Each request runs on a thread of its
# own so generations overlap; a cancelled one stops before its next token. Request parameters:
# max_new_tokens, temperature (0: greedy), seed, stop_token_ids ("1,2"). A request with parameter
# probe = true answers [[generations running, generations stopped by a cancel, the last
# generation's timeout in us]] instead. When the model dir has started.fifo and release.fifo and
# a test listens on the first, a generation holds before its first token until released (the
# gate protocol of tests/triton_fixtures.py), so a test can act while no token has gone out.
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
        self.dir = args["model_repository"]

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
                hold(self.dir)
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
''' + HOLD_PY
