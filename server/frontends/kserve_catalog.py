"""What the KServe v2 frontend calls models: every heddle model and pipeline, with metadata and config."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as kpb

from heddle.scheduler import ModelSpec, Pipeline, PipelineSpec, StageSpec, TensorSpec, validate_pipeline
from heddle.scheduler.dag import Wire
from heddle.server.config.load import Config
from heddle.server.observe.logs import get_logger

__all__ = ["MODEL_VERSION", "CatalogEntry", "build_catalog", "model_config", "model_metadata", "model_pipeline"]

log = get_logger("heddle.kserve")

# heddle has no model versions: every model is served as version "1" (and "" means "1").
MODEL_VERSION = "1"
PIPELINE_PLATFORM = "heddle_pipeline"
# backend -> (Triton platform, Triton backend) as Triton would report a model of that kind.
_PLATFORMS: Mapping[str, tuple[str, str]] = {
    "onnxruntime": ("onnxruntime_onnx", "onnxruntime"),
    "python": ("python", "python"),
    "triton": ("triton", "triton"),
}


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One KServe model: a heddle pipeline, or a model wrapped in a one-stage pipeline (`model` set)."""

    name: str
    pipeline: Pipeline
    model: ModelSpec | None
    platform: str
    backend: str

    @property
    def is_pipeline(self) -> bool:
        return self.model is None


def model_pipeline(model: ModelSpec, models: Mapping[str, ModelSpec]) -> Pipeline:
    """A one-stage pipeline named after the model: every input from the request, every output out."""
    stage = model.name.replace(".", "_")  # "STAGE.OUTPUT" sources split on the first dot
    spec = PipelineSpec(
        name=model.name,
        inputs=model.inputs,
        stages=(StageSpec(stage, model.name, {t.name: f"input:{t.name}" for t in model.inputs}),),
        outputs={t.name: f"{stage}.{t.name}" for t in model.outputs},
        description=f"model {model.name} ({model.backend})",
    )
    return validate_pipeline(spec, models)


def build_catalog(config: Config) -> dict[str, CatalogEntry]:
    """Every model (but those with list inputs or outputs), then every pipeline; a pipeline that
    shares a model's name replaces it."""
    catalog: dict[str, CatalogEntry] = {}
    for model in config.models.values():
        if any(t.is_list for t in (*model.inputs, *model.outputs)):
            continue  # a stage taking or making lists (fan-out, #14) runs only inside a pipeline
        platform, backend = _PLATFORMS.get(model.backend, (model.backend, model.backend))
        catalog[model.name] = CatalogEntry(model.name, model_pipeline(model, config.models), model,
                                           platform, backend)
    for pipeline in config.pipelines.values():
        if pipeline.name in catalog:
            log.warning("pipeline hides the model of the same name on the KServe frontend",
                        name=pipeline.name)
        catalog[pipeline.name] = CatalogEntry(pipeline.name, pipeline, None, PIPELINE_PLATFORM, "")
    return catalog


def _tensor_metadata(t: TensorSpec) -> kpb.ModelMetadataResponse.TensorMetadata:
    return kpb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=list(t.shape))


def model_metadata(entry: CatalogEntry) -> kpb.ModelMetadataResponse:
    return kpb.ModelMetadataResponse(
        name=entry.name, versions=[MODEL_VERSION], platform=entry.platform,
        inputs=[_tensor_metadata(t) for t in entry.pipeline.inputs],
        outputs=[_tensor_metadata(t) for t in entry.pipeline.outputs],
    )


def _data_type(datatype: str) -> int:
    """KServe datatype name -> model_config DataType (BYTES is TYPE_STRING in Triton configs)."""
    return mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def model_config(entry: CatalogEntry, devices_of: Callable[[str], list[str]]) -> mc.ModelConfig:
    """A faithful subset of a Triton ModelConfig.

    A model that batches requests (max_batch > 1, scheduler/batching.py) reports Triton's way:
    max_batch_size = max_batch, dims without the batch (first) dimension, and dynamic_batching
    with its preferred sizes and queue delay. Every other entry (pipelines included) reports
    max_batch_size 0 and the full shapes, a dynamic first dimension included (-1), exactly as
    declared. `parameters` carry heddle facts Triton has no field for (kind, devices, description).
    """
    p = entry.pipeline
    batching = entry.model.batching if entry.model is not None and entry.model.kind != "llm" else None
    batched = batching is not None and batching.enabled
    skip = 1 if batched else 0
    config = mc.ModelConfig(
        name=entry.name, platform=entry.platform, backend=entry.backend,
        max_batch_size=batching.max_batch if batching is not None and batched else 0,
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
        input=[mc.ModelInput(name=t.name, data_type=_data_type(t.datatype), dims=list(t.shape[skip:]))
               for t in p.inputs],
        output=[mc.ModelOutput(name=t.name, data_type=_data_type(t.datatype), dims=list(t.shape[skip:]))
                for t in p.outputs],
    )
    if batching is not None and batched:
        config.dynamic_batching.CopyFrom(mc.ModelDynamicBatching(
            preferred_batch_size=list(batching.preferred_batch_sizes),
            max_queue_delay_microseconds=round(batching.max_queue_delay_s * 1e6)))
    if entry.model is not None:
        config.parameters["heddle_kind"].string_value = entry.model.kind
        config.parameters["heddle_devices"].string_value = ",".join(devices_of(entry.model.name))
    else:
        config.ensemble_scheduling.CopyFrom(_ensemble(p))
    if p.description:
        config.parameters["heddle_description"].string_value = p.description
    return config


def _ensemble(p: Pipeline) -> mc.ModelEnsembling:
    """The pipeline's stages as ensemble steps over one flat tensor namespace, as Triton needs:
    request inputs keep their names, a stage output that is a pipeline output takes that name,
    any other stage output is called "STAGE.OUTPUT"."""
    names: dict[Wire, str] = {}
    for out_name, wire in p.output_wires.items():
        names.setdefault(wire, out_name)

    def tensor(wire: Wire) -> str:
        if wire.stage is None:
            return wire.tensor
        return names.get(wire, f"{wire.stage}.{wire.tensor}")

    steps = []
    for stage in p.stages:
        produced = sorted({w.tensor for w in names if w.stage == stage.name} |
                          {w.tensor for ws in p.wires.values() for w in ws.values() if w.stage == stage.name})
        steps.append(mc.ModelEnsembling.Step(
            model_name=stage.model, model_version=-1,
            input_map={name: tensor(w) for name, w in p.wires[stage.name].items()},
            output_map={t: tensor(Wire(stage.name, t)) for t in produced},
        ))
    return mc.ModelEnsembling(step=steps)
