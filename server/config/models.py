"""The config file's [[models]] (one table per backend, LLMs apart) and [[pipelines]] tables.

A model table is chosen by its `backend` (default "onnxruntime") and, for onnxruntime and
triton, whether `kind = "llm"`: generation keys belong to LLMs only, `isolation` to python
stages only, so each of those keys is unknown elsewhere and a misplaced one is said at start.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, Discriminator, Field, Tag, model_validator

from heddle.backends.python import ISOLATIONS
from heddle.server.config.tables import StageTensorTable, Table, TensorTable

__all__ = [
    "LLM_KEYS_WHY", "MAX_TIMEOUT_MS", "MODEL_TABLES", "PARAMETER_TYPES", "PYTHON_KEYS_WHY", "ModelTable",
    "OnnxLlmTable", "OnnxModelTable", "OutputTable", "ParameterTable", "PipelineTable", "PythonModelTable",
    "StageTable", "TritonLlmTable", "TritonModelTable", "model_tag",
]

NonLlmKind = Literal["dnn", "transformer", "python"]
MAX_TIMEOUT_MS = 24 * 3600 * 1000.0  # as long as the longest deadline a request may ask for

# Why a key is not a key of some model tables: said after "unknown key" when one is found there.
LLM_KEYS_WHY = {
    "timeout_ms": "timeout_ms does not apply to LLM stages: each token step is scheduled on its own, "
                  "and the request's deadline bounds the generation",
    "max_batch": "max_batch is for LLMs heddle runs itself; a Triton-hosted LLM is batched by its "
                 "Triton server",
}


# Why python stages take no batching key: said after "unknown key" when one is found there.
PYTHON_KEYS_WHY = dict.fromkeys(
    ("max_batch", "preferred_batch_sizes", "max_queue_delay_us"),
    "a python stage is called once per request; dynamic batching is for onnxruntime and triton models")


def _module_function(value: str) -> str:
    module, _, function = value.partition(":")
    if not (module and function):
        raise ValueError(f"function must be 'module:function' (a python model's callable), got {value!r}")
    return value


def _no_at(value: str) -> str:
    if "@" in value:
        raise ValueError(f"a model name cannot contain '@' (it separates a name from a version), got {value!r}")
    return value


def _version_text(value: str | int | None) -> str | None:
    return None if value is None else str(value)


class _ModelBase(Table):
    name: Annotated[str, AfterValidator(_no_at)]
    version: Annotated[str | int | None, AfterValidator(_version_text)] = Field(
        None, description='a version label ("2"); tables sharing a name are its versions (docs/CONFIG.md)')
    weight: float | None = Field(None, ge=0, allow_inf_nan=False, description=(
        "share of the name's unpinned requests this version gets (default: all to the highest version)"))
    devices: list[str] = Field(default_factory=list, description="default: every device of its backend")
    max_batch_size: int | None = Field(None, ge=1, description="most items (first dim) per input a request "
                                       "may send it; default derived (server/runtime/limits.py)")
    max_input_elements: int | None = Field(None, ge=1, description="most elements in any one of its inputs; "
                                           "default derived")


class _Timeout(Table):
    timeout_ms: float | None = Field(None, gt=0, le=MAX_TIMEOUT_MS, allow_inf_nan=False,
                                     description="a run's limit in milliseconds")


class _Inline(Table):
    inline: bool | Literal["auto"] = Field("auto", description=(
        "true: run on the event loop, not a worker thread (stages of tens of microseconds, where the "
        'hand-over costs more than the run); "auto" (default): on the loop while its measured compute '
        "CPU time stays under 100 us (server/runtime/auto_inline.py); false: always on a worker"))


class _Generation(Table):
    """Generation defaults of an LLM; a request's GenerationOptions override them (docs/LLM.md)."""

    kind: Literal["llm"]
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    max_positions: int | None = Field(None, ge=1, description="prompt + max_new_tokens beyond it: INVALID_ARGUMENT")
    tokenizer: str | None = Field(None, description='"byte" or a tokenizer.json (or its folder)')


MAX_QUEUE_DELAY_US = 10_000_000.0  # 10 s: past this a wait for company is a misconfiguration


class _Batching(Table):
    """Dynamic batching across requests (docs/CONFIG.md, "Dynamic batching"): the core starts
    ready runs of the model with equal shapes past the first dim as one pass (scheduler/batching.py)."""

    max_batch: int | None = Field(None, ge=1, description="rows (first dim, summed over requests) one pass "
                                  "may take; default 1: no batching")
    preferred_batch_sizes: list[int] | None = Field(None, description="batch sizes that start at once, "
                                                    "without waiting for more")
    max_queue_delay_us: float | None = Field(None, ge=0, le=MAX_QUEUE_DELAY_US, allow_inf_nan=False,
                                             description="longest a run waits for a fuller batch; default 0")

    @model_validator(mode="after")
    def _batch_limits(self) -> _Batching:
        """A batch fits what the model takes from one call: preferred sizes within max_batch,
        max_batch within the model's max_batch_size (the #11 limit a pass must keep too)."""
        max_batch = self.max_batch or 1
        bad = [p for p in self.preferred_batch_sizes or () if not 1 <= p <= max_batch]
        if bad:
            raise ValueError(f"preferred_batch_sizes {bad} must lie in [1, max_batch = {max_batch}]")
        limit = getattr(self, "max_batch_size", None)
        if limit is not None and max_batch > limit:
            raise ValueError(f"max_batch {max_batch} is over max_batch_size {limit}: one pass may not take "
                             "more rows than the model accepts")
        return self


class OnnxModelTable(_ModelBase, _Timeout, _Inline, _Batching):
    """An ONNX model heddle runs with ONNX Runtime; its inputs and outputs are read from the file."""

    backend: Literal["onnxruntime"] = "onnxruntime"
    kind: NonLlmKind = "dnn"
    path: str = Field(min_length=1, description='a .onnx file, relative to the config file, or "builtin:NAME"')


class OnnxLlmTable(_ModelBase, _Generation):
    """A KV-cache decoder ONNX model heddle runs token by token (docs/LLM.md)."""

    backend: Literal["onnxruntime"] = "onnxruntime"
    path: str = Field(min_length=1, description='a .onnx file, relative to the config file, or "builtin:NAME"')
    max_batch: int | None = Field(None, ge=1, description="decode steps of up to this many sequences share a pass")
    step_scheduling: bool | None = Field(None, description="false: a whole generation is one dispatch")
    num_heads: int | None = Field(None, description="KV heads, when the graph's KV dims are dynamic")
    head_dim: int | None = Field(None, description="KV head size, when the graph's KV dims are dynamic")


PARAMETER_TYPES = {"float": (float, int), "int": (int,), "bool": (bool,), "string": (str,)}


class ParameterTable(Table):
    """A per-request parameter a python stage takes: its type, and its default when a request
    gives none (no default: every request must give it)."""

    type: Literal["float", "int", "bool", "string"]
    default: bool | int | float | str | None = None

    @model_validator(mode="after")
    def _default_has_the_type(self) -> ParameterTable:
        d = self.default
        if d is not None and (not isinstance(d, PARAMETER_TYPES[self.type])
                              or (isinstance(d, bool) and self.type != "bool")):
            raise ValueError(f"default {d!r} is no {self.type}")
        return self


class PythonModelTable(_ModelBase, _Timeout, _Inline):
    """An operator-registered python function, called as fn(**inputs) -> {name: ndarray}."""

    backend: Literal["python"]
    kind: NonLlmKind = "python"
    function: Annotated[str, AfterValidator(_module_function)] | None = Field(
        None, description='"module:function", called per run (or give class)')
    class_: Annotated[str, AfterValidator(_module_function)] | None = Field(
        None, alias="class", description='"module:Class": constructed once per worker slot with **options, '
                                         "its instance called per run (or give function)")
    options: dict[str, Any] | None = Field(None, description="the stage class's constructor keyword arguments")
    parameters: dict[str, ParameterTable] | None = Field(None, description=(
        "per-request parameters passed to the stage as keyword arguments (a request's `parameters`)"))
    inputs: list[StageTensorTable] = Field(min_length=1)
    outputs: list[StageTensorTable] = Field(min_length=1)
    isolation: Literal[ISOLATIONS] | None = Field(  # type: ignore[valid-type]
        None, description='"thread" (default) or "process": a killable worker process per slot')

    @model_validator(mode="after")
    def _function_or_class(self) -> PythonModelTable:
        if (self.function is None) == (self.class_ is None):
            raise ValueError("give function (a function called per run) or class (a class constructed once "
                             "per worker slot), exactly one")
        if self.options is not None and self.class_ is None:
            raise ValueError("options are a stage class's constructor arguments: give class, not function")
        return self

    @model_validator(mode="after")
    def _inline_runs_in_this_process(self) -> PythonModelTable:
        if self.inline is True and self.isolation == "process":
            raise ValueError('inline = true runs the stage on the event loop; it cannot also have '
                             'isolation = "process" (a worker process): choose one')
        return self


class _TritonBase(Table):
    backend: Literal["triton"]
    triton_model: str | None = Field(None, description="its name on the Triton server (default: name)")
    triton_version: str | int | None = Field(None, description="default: the server's choice")


class TritonModelTable(_ModelBase, _TritonBase, _Timeout, _Batching):
    """A model hosted on Triton servers; undeclared inputs and outputs are asked of a server."""

    kind: NonLlmKind = "dnn"
    inputs: list[TensorTable] = Field(default_factory=list, description="default: asked of a server")
    outputs: list[TensorTable] = Field(default_factory=list, description="default: asked of a server")


class TritonLlmTable(_ModelBase, _TritonBase, _Generation):
    """An LLM hosted on Triton as a decoupled model that streams its tokens (docs/LLM.md)."""

    vocab_size: int | None = Field(None, ge=1, description="prompt ids outside [0, vocab_size): INVALID_ARGUMENT")


MODEL_TABLES: dict[str, type[Table]] = {
    "onnxruntime": OnnxModelTable, "onnxruntime llm": OnnxLlmTable, "python": PythonModelTable,
    "triton": TritonModelTable, "triton llm": TritonLlmTable,
}


def model_tag(raw: Any) -> str | None:
    """Which model table a [[models]] entry is: its backend, and " llm" for LLMs of a backend that
    has them; a backend that is no string or unknown is returned as is, for the error to name."""
    if not isinstance(raw, dict):
        return None
    backend = raw.get("backend", "onnxruntime")
    if not isinstance(backend, str) or backend not in ("onnxruntime", "triton"):
        return backend if isinstance(backend, str) else repr(backend)
    return f"{backend} llm" if raw.get("kind") == "llm" else backend


ModelTable = Annotated[
    # A Union over a computed tuple has no `X | Y` spelling, hence the noqa.
    Union[tuple(Annotated[cls, Tag(tag)] for tag, cls in MODEL_TABLES.items())],  # type: ignore[misc]  # noqa: UP007
    Discriminator(model_tag),
]


class StageTable(Table):
    """A pipeline stage: runs `model`, each input wired from "input:NAME" or "STAGE.OUTPUT"."""

    name: str
    model: str
    inputs: dict[str, str] = Field(default_factory=dict)
    map: str = Field("", description='"STAGE.OUTPUT" of a list: the stage runs once per map_batch of its '
                                     "elements, its outputs gathered into lists in order (docs/CONFIG.md)")
    map_batch: int = Field(1, ge=1, description="elements per run of a map stage, joined on the first dim")
    map_sort: str = Field("", description='"STAGE.OUTPUT": a tensor of one key per element; a map stage\'s '
                                          "runs take the elements in key order (similar ones share a run)")
    when: str = Field("", description='"STAGE.OUTPUT": run only if it is non-empty / true, else skip this '
                                      "stage and every stage after it (docs/CONFIG.md)")


class OutputTable(Table):
    """A pipeline output given as a table: where it comes from, and whether a response may lack it."""

    from_: str = Field(alias="from", description='"STAGE.OUTPUT"')
    optional: bool = Field(False, description="left out of the response when its stage was skipped (`when`)")
    gather: Literal["concat", "stack"] | None = Field(None, description=(
        "a list made one tensor: its elements joined on their first dim (concat) or on a new one (stack)"))
    pad: float = Field(0.0, allow_inf_nan=False, description="fills elements smaller than the largest, when gathered")

    @model_validator(mode="after")
    def _pad_needs_gather(self) -> OutputTable:
        if self.pad and self.gather is None:
            raise ValueError("pad is for a gathered output: give gather = \"concat\" or \"stack\" too")
        return self


class PipelineTable(Table):
    """A named DAG of stages; `outputs` maps names to "STAGE.OUTPUT" (or { from, optional })."""

    name: str
    description: str = ""
    inputs: list[TensorTable] = Field(default_factory=list)
    outputs: dict[str, str | OutputTable] = Field(default_factory=dict)
    stages: list[StageTable] = Field(default_factory=list)
