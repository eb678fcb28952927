"""The 3-stage chain of bench/triton_vs_heddle.py as a Triton repository and as a heddle config, and its answer.

Triton: 3 python-backend models and an `ensemble` over them. heddle: the chain on its own devices, and
the chain with every stage on that Triton. The answer: the chain run directly, which every target must give.

The chain: image FP32 [N,3,64,64] -> backbone (ONNX) -> head_cls (ONNX) -> postprocess (numpy) ->
probs FP32 [N,10], label INT64 [N]. Every side runs the same zoo ONNX files with onnxruntime (one
intra-op thread per session) and the same `heddle.backends.zoo.ops.postprocess` function.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as tgrpc

from bench.harness import detected_devices, onnx_ids
from heddle.backends.onnxruntime import read_io_spec
from heddle.backends.triton.repo import model_config_text, write_onnx_python_model, write_python_model
from heddle.backends.zoo.build import build_model
from heddle.backends.zoo.ops import OP_IO, postprocess
from heddle.scheduler.specs import TensorSpec
from heddle.server.config.builder import (
    document,
    onnx_model,
    pipeline,
    python_model,
    stage,
    tensor,
    to_toml,
    triton_device,
    triton_model,
)

__all__ = [
    "ENSEMBLE", "HEDDLE_LOCAL", "HEDDLE_LOCAL_BATCHED", "HEDDLE_TRITON", "OUTPUTS", "POSTPROCESS_MODEL_PY",
    "ChainModels", "build_chain", "check_answer", "ensemble_config_text", "heddle_config_text", "reference_outputs",
    "write_triton_repository",
]

ENSEMBLE = "chain"                # the Triton ensemble
HEDDLE_LOCAL = "chain_local"      # heddle pipeline on its own ONNX Runtime / python devices
HEDDLE_TRITON = "chain_triton"    # heddle pipeline with every stage on the Triton server
HEDDLE_LOCAL_BATCHED = "chain_local_batched"  # chain_local with heddle's dynamic batching on its ONNX stages
# heddle's batching for chain_local_batched: as the embedded default's demo models (no wait when idle).
HEDDLE_BATCHING = {"max_batch": 8}
OUTPUTS = ("probs", "label")

# The python-backend model.py of the postprocess stage: the very function heddle's python device
# calls, imported from the heddle install the stub's interpreter (the venv's) sees.
POSTPROCESS_MODEL_PY = '''\
"""heddle.backends.zoo.ops.postprocess (softmax + argmax in numpy) as a Triton python model."""
import json

import triton_python_backend_utils as pb_utils
from heddle.backends.zoo.ops import postprocess


class TritonPythonModel:
    def initialize(self, args):
        self.outputs = [o["name"] for o in json.loads(args["model_config"])["output"]]

    def _run(self, request):
        try:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
            out = postprocess(logits)
            return pb_utils.InferenceResponse([pb_utils.Tensor(n, out[n]) for n in self.outputs])
        except Exception as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))

    def execute(self, requests):
        return [self._run(r) for r in requests]
'''


@dataclass(frozen=True, slots=True)
class ChainModels:
    """The two zoo ONNX files of the chain (built into a cache dir) and every stage's IO."""

    backbone: Path
    head_cls: Path

    def io(self, stage: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        if stage == "postprocess":
            return OP_IO["postprocess"]
        return read_io_spec(getattr(self, stage))


def build_chain(cache_dir: str | os.PathLike) -> ChainModels:
    """Build (or reuse) the chain's ONNX files in cache_dir/models, where heddle's `builtin:` looks."""
    models = Path(cache_dir) / "models"
    # head_cls's default feature width is the backbone's default output width (64).
    return ChainModels(build_model("backbone", models), build_model("head_cls", models))


def _config_tensors(kind: str, specs: Sequence[TensorSpec], batching: bool) -> str:
    items = []
    for spec in specs:
        dims = ", ".join(str(d) for d in (spec.shape[1:] if batching else spec.shape))
        dtype = "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}"
        items.append(f'  {{ name: "{spec.name}" data_type: {dtype} dims: [ {dims} ] }}')
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _step(model: str, inputs: Sequence[str], outputs: Sequence[str]) -> str:
    # One flat tensor namespace: every tensor keeps its own name between steps.
    maps = [f'input_map {{ key: "{n}" value: "{n}" }}' for n in inputs]
    maps += [f'output_map {{ key: "{n}" value: "{n}" }}' for n in outputs]
    return f'    {{ model_name: "{model}" model_version: -1 ' + " ".join(maps) + " }"


def ensemble_config_text(chain: ChainModels, *, max_batch_size: int = 0) -> str:
    """config.pbtxt of the `chain` ensemble: backbone -> head_cls -> postprocess."""
    batching = max_batch_size > 0
    steps = []
    for name in ("backbone", "head_cls", "postprocess"):
        ins, outs = chain.io(name)
        steps.append(_step(name, [t.name for t in ins], [t.name for t in outs]))
    text = f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
    text += _config_tensors("input", chain.io("backbone")[0], batching)
    text += _config_tensors("output", chain.io("postprocess")[1], batching)
    return text + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"


def write_triton_repository(repo: str | os.PathLike, chain: ChainModels, *, max_batch_size: int = 0,
                            instances: int = 1) -> Path:
    """backbone, head_cls (python backend running the ONNX file), postprocess and the ensemble.

    No priority levels and no queue timeouts: on Triton 2.51 either one makes the dynamic batcher
    sometimes sleep its 500 ms idle wait with requests queued (see backends/triton/repo.py).
    """
    repo = Path(repo)
    for name in ("backbone", "head_cls"):
        ins, outs = chain.io(name)
        write_onnx_python_model(repo, name, getattr(chain, name), ins, outs,
                                max_batch_size=max_batch_size, instances=instances)
    ins, outs = chain.io("postprocess")
    write_python_model(repo, "postprocess", POSTPROCESS_MODEL_PY,
                       model_config_text("postprocess", ins, outs, max_batch_size=max_batch_size,
                                         instances=instances))
    (repo / ENSEMBLE / "1").mkdir(parents=True, exist_ok=True)  # an ensemble still needs a version dir
    (repo / ENSEMBLE / "config.pbtxt").write_text(ensemble_config_text(chain, max_batch_size=max_batch_size))
    return repo


def _tensors(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
    return [tensor(t.name, t.datatype, t.shape) for t in specs]


def _pipeline(name: str, suffix: str, description: str, post_suffix: str | None = None) -> dict[str, Any]:
    post = suffix if post_suffix is None else post_suffix
    return pipeline(name, [tensor("image", "FP32", (-1, 3, 64, 64))], {"probs": "post.probs", "label": "post.label"}, [
        stage("backbone", f"backbone{suffix}", image="input:image"),
        stage("cls", f"head_cls{suffix}", features="backbone.features"),
        stage("post", f"postprocess{post}", logits="cls.logits")], description=description)


def heddle_config_text(cache_dir: str | os.PathLike, chain: ChainModels, triton_url: str, *,
                       triton_slots: int = 8) -> str:
    """heddle's config: the embedded default's devices (pinned CPU devices, py0) plus `triton0`,
    the chain's models once on those devices and once on Triton, and the two pipelines."""
    devices = detected_devices()
    cpu_ids = onnx_ids(devices)
    models = [onnx_model(name, str(getattr(chain, name)), devices=cpu_ids) for name in ("backbone", "head_cls")]
    models += [onnx_model(f"{name}_batched", str(getattr(chain, name)), devices=cpu_ids, **HEDDLE_BATCHING)
               for name in ("backbone", "head_cls")]
    ins, outs = chain.io("postprocess")
    models.append(python_model("postprocess", "heddle.backends.zoo.ops:postprocess", _tensors(ins), _tensors(outs),
                               devices=["py0"]))
    for name in ("backbone", "head_cls", "postprocess"):
        ins, outs = chain.io(name)
        models.append(triton_model(f"{name}_triton", triton_model=name, devices=["triton0"], inputs=_tensors(ins),
                                   outputs=_tensors(outs)))
    triton = triton_device("triton0", triton_url, slots=triton_slots, client_timeout_s=30)
    return to_toml(document(server={"cache_dir": str(Path(cache_dir).resolve())}, devices=[*devices, triton],
                            models=models, pipelines=[
        _pipeline(HEDDLE_LOCAL, "", "backbone, head_cls on heddle's ONNX Runtime, postprocess on py0"),
        _pipeline(HEDDLE_TRITON, "_triton", "every stage on the Triton server"),
        _pipeline(HEDDLE_LOCAL_BATCHED, "_batched", "chain_local with dynamic batching on its ONNX stages", "")]))


def reference_outputs(chain: ChainModels, image: np.ndarray) -> dict[str, np.ndarray]:
    """The chain run directly with onnxruntime and numpy, to check every target's answer against."""
    import onnxruntime as ort

    def run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, feed)[0]

    features = run(chain.backbone, {"image": image})
    return postprocess(run(chain.head_cls, {"features": features}))


def check_answer(url: str, model: str, image: np.ndarray, expected: dict[str, np.ndarray]) -> None:
    """Fail the run unless the target answers what the chain computes directly."""
    with tgrpc.InferenceServerClient(url) as client:
        x = tgrpc.InferInput("image", list(image.shape), "FP32")
        x.set_data_from_numpy(image)
        result = client.infer(model, [x], outputs=[tgrpc.InferRequestedOutput(n) for n in OUTPUTS])
    if not np.allclose(result.as_numpy("probs"), expected["probs"], rtol=1e-4, atol=1e-6) or \
            not np.array_equal(result.as_numpy("label"), expected["label"]):
        raise RuntimeError(f"{model} at {url} does not answer what the chain computes directly")
