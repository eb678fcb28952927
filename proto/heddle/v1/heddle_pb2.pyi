from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StageStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_STATUS_UNSPECIFIED: _ClassVar[StageStatus]
    STAGE_STATUS_OK: _ClassVar[StageStatus]
    STAGE_STATUS_FAILED: _ClassVar[StageStatus]
    STAGE_STATUS_CANCELLED: _ClassVar[StageStatus]
    STAGE_STATUS_SKIPPED: _ClassVar[StageStatus]
STAGE_STATUS_UNSPECIFIED: StageStatus
STAGE_STATUS_OK: StageStatus
STAGE_STATUS_FAILED: StageStatus
STAGE_STATUS_CANCELLED: StageStatus
STAGE_STATUS_SKIPPED: StageStatus

class Tensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "raw_data", "shared_memory")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    RAW_DATA_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    raw_data: bytes
    shared_memory: SharedMemoryRef
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., raw_data: _Optional[bytes] = ..., shared_memory: _Optional[_Union[SharedMemoryRef, _Mapping]] = ...) -> None: ...

class SharedMemoryRef(_message.Message):
    __slots__ = ("region", "offset", "byte_size")
    REGION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    region: str
    offset: int
    byte_size: int
    def __init__(self, region: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("pipeline", "inputs", "priority", "deadline_ms", "request_id", "outputs", "generation", "model_versions", "parameters", "output_shared_memory")
    class ModelVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class OutputSharedMemoryEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: SharedMemoryRef
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[SharedMemoryRef, _Mapping]] = ...) -> None: ...
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    pipeline: str
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    priority: int
    deadline_ms: float
    request_id: str
    outputs: _containers.RepeatedScalarFieldContainer[str]
    generation: GenerationOptions
    model_versions: _containers.ScalarMap[str, str]
    parameters: _containers.ScalarMap[str, str]
    output_shared_memory: _containers.MessageMap[str, SharedMemoryRef]
    def __init__(self, pipeline: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., priority: _Optional[int] = ..., deadline_ms: _Optional[float] = ..., request_id: _Optional[str] = ..., outputs: _Optional[_Iterable[str]] = ..., generation: _Optional[_Union[GenerationOptions, _Mapping]] = ..., model_versions: _Optional[_Mapping[str, str]] = ..., parameters: _Optional[_Mapping[str, str]] = ..., output_shared_memory: _Optional[_Mapping[str, SharedMemoryRef]] = ...) -> None: ...

class GenerationOptions(_message.Message):
    __slots__ = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop_token_ids")
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class StageResult(_message.Message):
    __slots__ = ("stage", "model", "device", "status", "queue_ms", "compute_ms", "start_offset_ms", "end_offset_ms", "error", "energy_j", "energy_source", "tokens", "ttft_ms", "tpot_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    START_OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    END_OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TPOT_MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    model: str
    device: str
    status: StageStatus
    queue_ms: float
    compute_ms: float
    start_offset_ms: float
    end_offset_ms: float
    error: str
    energy_j: float
    energy_source: str
    tokens: int
    ttft_ms: float
    tpot_ms: float
    def __init__(self, stage: _Optional[str] = ..., model: _Optional[str] = ..., device: _Optional[str] = ..., status: _Optional[_Union[StageStatus, str]] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., start_offset_ms: _Optional[float] = ..., end_offset_ms: _Optional[float] = ..., error: _Optional[str] = ..., energy_j: _Optional[float] = ..., energy_source: _Optional[str] = ..., tokens: _Optional[int] = ..., ttft_ms: _Optional[float] = ..., tpot_ms: _Optional[float] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("request_id", "pipeline", "outputs", "stages", "total_ms", "priority", "deadline_missed", "energy_j", "energy_source")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MISSED_FIELD_NUMBER: _ClassVar[int]
    ENERGY_J_FIELD_NUMBER: _ClassVar[int]
    ENERGY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    pipeline: str
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    stages: _containers.RepeatedCompositeFieldContainer[StageResult]
    total_ms: float
    priority: int
    deadline_missed: bool
    energy_j: float
    energy_source: str
    def __init__(self, request_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., stages: _Optional[_Iterable[_Union[StageResult, _Mapping]]] = ..., total_ms: _Optional[float] = ..., priority: _Optional[int] = ..., deadline_missed: _Optional[bool] = ..., energy_j: _Optional[float] = ..., energy_source: _Optional[str] = ...) -> None: ...

class TokenEvent(_message.Message):
    __slots__ = ("stage", "token_ids", "text", "index", "offset_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    index: int
    offset_ms: float
    def __init__(self, stage: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., index: _Optional[int] = ..., offset_ms: _Optional[float] = ...) -> None: ...

class InferEvent(_message.Message):
    __slots__ = ("stage_done", "result", "tokens")
    STAGE_DONE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    stage_done: StageResult
    result: InferResponse
    tokens: TokenEvent
    def __init__(self, stage_done: _Optional[_Union[StageResult, _Mapping]] = ..., result: _Optional[_Union[InferResponse, _Mapping]] = ..., tokens: _Optional[_Union[TokenEvent, _Mapping]] = ...) -> None: ...

class SharedMemoryRegion(_message.Message):
    __slots__ = ("name", "key", "offset", "byte_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    key: str
    offset: int
    byte_size: int
    def __init__(self, name: _Optional[str] = ..., key: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ...) -> None: ...

class SharedMemoryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class SharedMemoryStatus(_message.Message):
    __slots__ = ("regions",)
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedCompositeFieldContainer[SharedMemoryRegion]
    def __init__(self, regions: _Optional[_Iterable[_Union[SharedMemoryRegion, _Mapping]]] = ...) -> None: ...

class ListPipelinesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PipelineInfo(_message.Message):
    __slots__ = ("name", "description", "inputs", "outputs", "stages")
    class Stage(_message.Message):
        __slots__ = ("name", "model", "depends_on")
        NAME_FIELD_NUMBER: _ClassVar[int]
        MODEL_FIELD_NUMBER: _ClassVar[int]
        DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
        name: str
        model: str
        depends_on: _containers.RepeatedScalarFieldContainer[str]
        def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., depends_on: _Optional[_Iterable[str]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    stages: _containers.RepeatedCompositeFieldContainer[PipelineInfo.Stage]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., stages: _Optional[_Iterable[_Union[PipelineInfo.Stage, _Mapping]]] = ...) -> None: ...

class ListPipelinesResponse(_message.Message):
    __slots__ = ("pipelines",)
    PIPELINES_FIELD_NUMBER: _ClassVar[int]
    pipelines: _containers.RepeatedCompositeFieldContainer[PipelineInfo]
    def __init__(self, pipelines: _Optional[_Iterable[_Union[PipelineInfo, _Mapping]]] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "backend", "kind", "inputs", "outputs", "devices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend: str
    kind: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    devices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., backend: _Optional[str] = ..., kind: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., devices: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("id", "kind", "backend", "providers", "slots", "running", "queued", "healthy")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    backend: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    running: int
    queued: int
    healthy: bool
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., backend: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ..., running: _Optional[int] = ..., queued: _Optional[int] = ..., healthy: _Optional[bool] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[DeviceInfo]
    def __init__(self, devices: _Optional[_Iterable[_Union[DeviceInfo, _Mapping]]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("policy", "available")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    policy: str
    available: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, policy: _Optional[str] = ..., available: _Optional[_Iterable[str]] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: str
    def __init__(self, policy: _Optional[str] = ...) -> None: ...

class GetPowerRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PowerBudget(_message.Message):
    __slots__ = ("box_w", "device_w")
    class DeviceWEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BOX_W_FIELD_NUMBER: _ClassVar[int]
    DEVICE_W_FIELD_NUMBER: _ClassVar[int]
    box_w: float
    device_w: _containers.ScalarMap[str, float]
    def __init__(self, box_w: _Optional[float] = ..., device_w: _Optional[_Mapping[str, float]] = ...) -> None: ...

class DevicePower(_message.Message):
    __slots__ = ("device", "power_w", "source", "sensor", "dvfs_level", "frozen_tasks")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SENSOR_FIELD_NUMBER: _ClassVar[int]
    DVFS_LEVEL_FIELD_NUMBER: _ClassVar[int]
    FROZEN_TASKS_FIELD_NUMBER: _ClassVar[int]
    device: str
    power_w: float
    source: str
    sensor: str
    dvfs_level: int
    frozen_tasks: int
    def __init__(self, device: _Optional[str] = ..., power_w: _Optional[float] = ..., source: _Optional[str] = ..., sensor: _Optional[str] = ..., dvfs_level: _Optional[int] = ..., frozen_tasks: _Optional[int] = ...) -> None: ...

class PowerStatus(_message.Message):
    __slots__ = ("budget", "box_power_w", "source", "devices", "controller_state")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    BOX_POWER_W_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_STATE_FIELD_NUMBER: _ClassVar[int]
    budget: PowerBudget
    box_power_w: float
    source: str
    devices: _containers.RepeatedCompositeFieldContainer[DevicePower]
    controller_state: str
    def __init__(self, budget: _Optional[_Union[PowerBudget, _Mapping]] = ..., box_power_w: _Optional[float] = ..., source: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[DevicePower, _Mapping]]] = ..., controller_state: _Optional[str] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("config_path",)
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    config_path: str
    def __init__(self, config_path: _Optional[str] = ...) -> None: ...

class ReloadStatus(_message.Message):
    __slots__ = ("models_added", "models_changed", "models_removed", "pipelines_added", "pipelines_changed", "pipelines_removed", "config_path", "load_ms")
    MODELS_ADDED_FIELD_NUMBER: _ClassVar[int]
    MODELS_CHANGED_FIELD_NUMBER: _ClassVar[int]
    MODELS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    PIPELINES_ADDED_FIELD_NUMBER: _ClassVar[int]
    PIPELINES_CHANGED_FIELD_NUMBER: _ClassVar[int]
    PIPELINES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_PATH_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    models_added: _containers.RepeatedScalarFieldContainer[str]
    models_changed: _containers.RepeatedScalarFieldContainer[str]
    models_removed: _containers.RepeatedScalarFieldContainer[str]
    pipelines_added: _containers.RepeatedScalarFieldContainer[str]
    pipelines_changed: _containers.RepeatedScalarFieldContainer[str]
    pipelines_removed: _containers.RepeatedScalarFieldContainer[str]
    config_path: str
    load_ms: float
    def __init__(self, models_added: _Optional[_Iterable[str]] = ..., models_changed: _Optional[_Iterable[str]] = ..., models_removed: _Optional[_Iterable[str]] = ..., pipelines_added: _Optional[_Iterable[str]] = ..., pipelines_changed: _Optional[_Iterable[str]] = ..., pipelines_removed: _Optional[_Iterable[str]] = ..., config_path: _Optional[str] = ..., load_ms: _Optional[float] = ...) -> None: ...
