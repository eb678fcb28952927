"""The config file's tables for the process and its devices: [server], [server.tls], [admission],
[power] and [[devices]] (one table per backend), as pydantic models that refuse unknown keys.

Parsing only: types, ranges and which keys a table takes. Checks across tables (a [power]
device exists, default_priority fits priority_levels) are config.py's; turning a table into the
settings the process runs with is config.py's and config_resolve.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from heddle.backends.power.dvfs import DVFS_KINDS
from heddle.backends.power.sensors import SENSOR_KINDS
from heddle.scheduler.admission_settings import AdmissionSettings
from heddle.scheduler.policies import POLICIES
from heddle.scheduler.power_settings import PowerSettings
from heddle.scheduler.specs import DATATYPES
from heddle.server.observe.tracing import TracingSettings

__all__ = [
    "AdmissionTable", "DEVICE_KINDS", "DeviceTable", "OnnxDeviceTable", "PowerTable", "PythonDeviceTable",
    "ServerSettings", "ServerTable", "StageTensorTable", "Table", "TensorTable", "TlsTable", "TracingTable",
    "TritonDeviceTable",
]

DEFAULT_CACHE_DIR = "~/.cache/heddle"
DEVICE_KINDS = ("cpu", "gpu", "dla", "npu", "remote")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class Table(BaseModel):
    """A config table: unknown keys are errors, and values are not coerced (no "2" for 2, no
    2.0 for an integer): a TOML value of the wrong type is a mistake worth saying."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The [server] table as the process runs with it (command-line overrides applied, TLS paths
    resolved, the admin token taken from the environment when the file gives none)."""

    grpc_host: str = "127.0.0.1"
    grpc_port: int = 8001
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8002
    # HTTP (KServe v2 REST, OpenAI-compatible) on its own port, Triton's default (docs/HTTP.md).
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    max_message_bytes: int = 64 * 1024 * 1024
    grace_period_s: float = 10.0
    policy: str = "priority"
    # Priority levels 1..priority_levels, higher is more urgent; 0 in a request means default.
    priority_levels: int = 4
    default_priority: int = 2
    cache_dir: str = DEFAULT_CACHE_DIR
    admin_token: str = ""
    # Inference RPCs (heddle.v1 Gateway, KServe, HTTP) need `authorization: Bearer <it>`; "" = env
    # HEDDLE_INFER_TOKEN, else open. Health checks stay open.
    infer_token: str = ""
    # Serve the Admin RPCs beyond loopback with no token and no mutual TLS (refused otherwise).
    insecure_admin: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    log_level: str = "info"
    # JSON-lines arrival trace for `heddle simulate --trace` (server/runtime/trace.py); "" = off.
    trace_file: str = ""
    # Request memory (server/runtime/limits.py): 0 = derived from the machine's memory (docs/CONFIG.md).
    max_inflight_bytes: int = 0
    max_request_bytes: int = 0
    inflight_top_reserve_fraction: float = 0.2


_S = ServerSettings()
_P = PowerSettings()
_A = AdmissionSettings()
_T = TracingSettings()
Port = Annotated[int, Field(ge=0, le=65535)]


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class TlsTable(Table):
    """[server.tls]: PEM files, relative to the config file."""

    cert: str = Field("", description="server certificate chain (PEM)")
    key: str = Field("", description="server private key (PEM)")
    client_ca: str = Field("", description="set: mutual TLS, clients need a certificate signed by this CA")


class ServerTable(Table):
    """[server]: ports, limits, policy, priorities, security."""

    grpc_host: str = _S.grpc_host
    grpc_port: Port = _S.grpc_port
    metrics_host: str = _S.metrics_host
    metrics_port: Port = _S.metrics_port
    http_host: str = Field(_S.http_host, description="HTTP (KServe v2 REST, OpenAI) listen address")
    http_port: Port = Field(_S.http_port, description="HTTP port; 0 = a free one")
    max_message_bytes: int = Field(_S.max_message_bytes, gt=0, description="larger requests: RESOURCE_EXHAUSTED")
    grace_period_s: float = Field(_S.grace_period_s, ge=0, description="drain time on SIGTERM/SIGINT")
    policy: Literal[tuple(sorted(POLICIES))] = Field(_S.policy, description="scheduling policy")  # type: ignore[valid-type]
    priority_levels: int = Field(_S.priority_levels, ge=1, description="request priorities are 1..priority_levels")
    default_priority: int = Field(_S.default_priority, ge=1, description="what priority 0 in a request means")
    cache_dir: str = Field(_S.cache_dir, description="built-in models are built here")
    admin_token: str = Field(_S.admin_token, description='Admin RPCs need it; "" = env HEDDLE_ADMIN_TOKEN')
    infer_token: str = Field(_S.infer_token, description=(
        'inference calls (gRPC and HTTP) need it; "" = env HEDDLE_INFER_TOKEN, else none'))
    insecure_admin: bool = Field(_S.insecure_admin, description="Admin RPCs beyond loopback with no token")
    tls: TlsTable = TlsTable()
    log_level: Annotated[Literal[LOG_LEVELS], BeforeValidator(_lower)] = _S.log_level  # type: ignore[valid-type]
    trace_file: str = Field(_S.trace_file, description="JSON-lines arrival trace; empty = off")
    max_inflight_bytes: int = Field(_S.max_inflight_bytes, ge=0, description="memory budget of all requests "
                                    "in flight; 0 = a quarter of the machine's")
    max_request_bytes: int = Field(_S.max_request_bytes, ge=0, description="most memory one request may be "
                                   "estimated at; 0 = a quarter of max_inflight_bytes")
    inflight_top_reserve_fraction: float = Field(_S.inflight_top_reserve_fraction, ge=0, lt=1, description=(
        "share of max_inflight_bytes only the top priority class may use"))


class AdmissionTable(Table):
    """[admission]: overload admission (docs/POWER.md#admission)."""

    enabled: bool = Field(_A.enabled, description="refuse lower classes first under overload")
    max_in_flight: int = Field(_A.max_in_flight, ge=0, description="admitted requests at once; 0 = no bound")


class TracingTable(Table):
    """[tracing]: OpenTelemetry spans of requests and their stage runs (docs/TRACING.md); off by default."""

    enabled: bool = Field(_T.enabled, description="export a span per request and a child per stage run")
    exporter: Literal["otlp", "console"] = Field(_T.exporter, description="otlp: OTLP over gRPC to endpoint")
    endpoint: str = Field(_T.endpoint, description="the OTLP collector's gRPC address")
    sampling_ratio: float = Field(_T.sampling_ratio, ge=0, le=1, description=(
        "share of requests traced when the caller sent no sampled traceparent"))
    service_name: str = Field(_T.service_name, min_length=1, description="the service.name resource attribute")


class PowerTable(Table):
    """[power]: the power budget and its controller (docs/POWER.md); values checked by PowerSettings."""

    budget_w: float | None = Field(None, description="the whole box's budget in watts")
    devices: dict[str, float] = Field(default_factory=dict, description="per-device budgets in watts")
    period_s: float = _P.period_s
    smoothing: float = _P.smoothing
    high: float = _P.high
    low: float = _P.low
    relax_periods: int = _P.relax_periods
    peak_window_s: float = _P.peak_window_s
    admission: bool = _P.admission
    queue_bound: int = _P.queue_bound


class TensorTable(Table):
    """A tensor of a model or pipeline: -1 in shape is a dimension of any size."""

    name: str
    datatype: Literal[DATATYPES]  # type: ignore[valid-type]
    shape: list[int]


class StageTensorTable(TensorTable):
    """A python stage's input or output, which may be a list of such tensors (docs/CONFIG.md, "Fan-out")."""

    list_: bool = Field(False, alias="list", description=(
        "a list of tensors of this dtype and rank (ragged: shapes free where -1): an output a map stage "
        "fans out over, or an input that gathers a map stage's outputs"))


class PowerModelTable(Table):
    """A device's `power = { idle_w, active_w }`: watts idle and busy per DVFS level, fastest first."""

    idle_w: float
    active_w: float | list[float]


class SensorTable(Table):
    """A device's `sensor` table: where its power reading comes from (docs/POWER.md)."""

    kind: Literal[SENSOR_KINDS] = "auto"  # type: ignore[valid-type]
    index: int | None = Field(None, description="NVML GPU index")
    rail: str | None = Field(None, description="INA3221 rail this device owns")
    zone: str | None = Field(None, description="RAPL zone this device owns")


class DvfsTable(Table):
    """A device's `dvfs` table: the clock knob the power controller turns (docs/POWER.md)."""

    kind: Literal[DVFS_KINDS] = "auto"  # type: ignore[valid-type]
    levels: int | None = Field(None, ge=1, description="how many levels (default: len(power.active_w))")
    values: list[int] | None = Field(
        None, description="exact knob values per level, fastest first (cgroup: percent of CPU time)")
    node: str | None = Field(None, description="devfreq node")
    period_us: int | None = Field(None, ge=1000, le=1_000_000, description="cgroup: CFS period (default 10000)")


class SpeedTable(Table):
    """A device's declared `speed`, the scheduler's prior before runs are measured (docs/SCHEDULING.md)."""

    flops_per_s: float | None = None
    bytes_per_s: float | None = None
    overhead_s: float | None = None
    per_layer_s: float | None = None
    level_clock: list[float] | None = Field(None, description="clock relative to level 0, per DVFS level")


class _DeviceBase(Table):
    id: str
    kind: Literal[DEVICE_KINDS] = "cpu"  # type: ignore[valid-type]
    slots: int = Field(1, ge=1, description="stages it runs at once")
    power: PowerModelTable | None = None
    sensor: SensorTable | None = None
    dvfs: DvfsTable | None = None
    speed: SpeedTable | None = None
    unsupported_ops: list[str] | None = Field(None, description="ONNX op types it cannot run")
    supported_ops: list[str] | None = Field(None, description="the only ONNX op types it can run")


class OnnxDeviceTable(_DeviceBase):
    """A [[devices]] table with backend = "onnxruntime": one execution provider on one device."""

    backend: Literal["onnxruntime"]
    providers: list[str] | None = Field(None, description="execution providers, most preferred first")
    provider_options: list[dict[str, str | int | float | bool]] | None = Field(
        None, description="one table per provider")
    intra_op_threads: int | None = Field(None, ge=1)
    cpu_affinity: list[int] | None = Field(None, description="worker threads pinned to these cores")
    cpu_mem_arena: bool | None = Field(None, description="ONNX Runtime's CPU arena (default off)")


class PythonDeviceTable(_DeviceBase):
    """A [[devices]] table with backend = "python": a pool for python stages."""

    backend: Literal["python"]


class TritonDeviceTable(_DeviceBase):
    """A [[devices]] table with backend = "triton": one Triton Inference Server (docs/MULTIBOX.md)."""

    backend: Literal["triton"]
    url: str = Field(description="host:port of its gRPC endpoint")
    client_timeout_s: float | None = Field(None, gt=0, description="a call's deadline when the request has none")


DeviceTable = Annotated[OnnxDeviceTable | PythonDeviceTable | TritonDeviceTable, Field(discriminator="backend")]
