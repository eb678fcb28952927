"""Hypothesis strategies for scheduler tests, in one place: DAGs, device sets, profiles, workloads."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from heddle.scheduler import DeviceSpec, ModelSpec, Pipeline, PipelineSpec, StageSpec, TensorSpec, validate_pipeline
from heddle.scheduler.profiles import ProfileEntry, ProfileTable

__all__ = ["Workload", "dags", "device_sets", "map_dags", "workloads"]

VEC = TensorSpec("x", "FP32", (-1, 8))
# Models are named by kind and fan-in: "cnn2" takes two inputs; "tfm" models hold an op a DLA
# cannot run, so device sets with a DLA exercise op-type compatibility.
KINDS = ("cnn", "tfm")
OPS = {"cnn": frozenset({"Conv", "Relu"}), "tfm": frozenset({"MatMul", "LayerNormalization"})}


def model_spec(name: str, fan_in: int) -> ModelSpec:
    return ModelSpec(name, "sim", name, tuple(TensorSpec(f"x{i}", "FP32", (-1, 8)) for i in range(fan_in)),
                     (TensorSpec("y", "FP32", (-1, 8)),))


@st.composite
def dags(draw, max_stages: int = 5) -> tuple[Pipeline, dict[str, ModelSpec]]:
    """A random validated DAG: stage i reads from a random subset of earlier stages."""
    n = draw(st.integers(1, max_stages))
    stages, models = [], {}
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 3)))) if i else []
        kind = draw(st.sampled_from(KINDS))
        fan_in = max(1, len(deps))
        name = f"{kind}{fan_in}"
        models[name] = model_spec(name, fan_in)
        sources = [f"s{d}.y" for d in deps] or ["input:x"]
        stages.append(StageSpec(f"s{i}", name, {f"x{k}": src for k, src in enumerate(sources)}))
    spec = PipelineSpec(f"dag{n}", (VEC,), tuple(stages), {"y": f"s{n - 1}.y"})
    return validate_pipeline(spec, models), models


@st.composite
def map_dags(draw) -> tuple[Pipeline, dict[str, ModelSpec]]:
    """A random pipeline that fans out: a stage making a list ("cnnL"), one or two map stages in a
    chain over it (each its own map_batch), a gather ("cnnG", a list input), and maybe a plain
    stage beside them reading the request's input; maybe a `when` on the list, on the first map
    stage or the gather (the pipeline's output then optional)."""
    cond = draw(st.sampled_from([None, "s1", "gather"]))
    vec, listed = TensorSpec("y", "FP32", (-1, 8)), TensorSpec("y", "FP32", (-1, 8), is_list=True)
    models = {"cnnL": ModelSpec("cnnL", "sim", "cnnL", (TensorSpec("x0", "FP32", (-1, 8)),), (listed,)),
              "cnnG": ModelSpec("cnnG", "sim", "cnnG", (TensorSpec("x0", "FP32", (-1, 8), is_list=True),), (vec,))}
    stages = [StageSpec("s0", "cnnL", {"x0": "input:x"})]
    for i in range(1, 1 + draw(st.integers(1, 2))):
        name = f"{draw(st.sampled_from(KINDS))}1"
        models[name] = model_spec(name, 1)
        stages.append(StageSpec(f"s{i}", name, {"x0": f"s{i - 1}.y"}, map=f"s{i - 1}.y",
                                map_batch=draw(st.integers(1, 3)), when="s0.y" if cond == f"s{i}" else ""))
    gather = f"s{len(stages)}"
    stages.append(StageSpec(gather, "cnnG", {"x0": f"s{len(stages) - 1}.y"}, when="s0.y" if cond == "gather" else ""))
    if draw(st.booleans()):  # a branch beside the fan-out, joined at the end
        models["cnn2"] = model_spec("cnn2", 2)
        models["tfm1"] = model_spec("tfm1", 1)
        stages += [StageSpec("side", "tfm1", {"x0": "input:x"}),
                   StageSpec("end", "cnn2", {"x0": f"{gather}.y", "x1": "side.y"})]
    spec = PipelineSpec(f"map{len(stages)}", (VEC,), tuple(stages), {"y": f"{stages[-1].name}.y"},
                        optional_outputs=("y",) if cond else ())
    return validate_pipeline(spec, models), models


@st.composite
def device_sets(draw) -> list[DeviceSpec]:
    """1-4 devices of mixed kinds and slots; DLAs refuse LayerNormalization. At least one
    device is not a DLA, so some device can run every model."""
    n = draw(st.integers(1, 4))
    kinds = ["cpu"] + [draw(st.sampled_from(["cpu", "gpu", "dla"])) for _ in range(n - 1)]
    devices = []
    for i, kind in enumerate(kinds):
        options = {"unsupported_ops": ("LayerNormalization",)} if kind == "dla" else {}
        devices.append(DeviceSpec(f"{kind}{i}", kind, "sim", draw(st.integers(1, 2)), options))
    return devices


@dataclass(frozen=True)
class Workload:
    devices: list[DeviceSpec]
    pipelines: list[Pipeline]
    models: dict[str, ModelSpec]
    table: dict[tuple[str, str, int], ProfileEntry]
    arrivals: list[tuple[float, str, int, int, float | None]]  # time, id, pipeline index, priority, deadline
    lengths: dict[str, int] | None = None  # request id -> its lists' element count (map pipelines)
    flags: dict[str, bool] | None = None  # request id -> whether its outputs are true (for `when`)

    def profiles(self) -> ProfileTable:
        return ProfileTable(table=self.table, ops={m: OPS[m[:3]] for m in self.models})

    def run_time_s(self, model: str, device: str) -> float:
        return self.table[(model, device, 0)].latency_s

    def list_length(self, run) -> int:
        """The element count of the lists a run of this request makes."""
        return self.list_length_of(run.request_id)

    def list_length_of(self, request_id: str) -> int:
        return (self.lengths or {}).get(request_id, 0)

    def flag(self, run) -> bool:
        """Whether the outputs of a run of this request are true (what a `when` on them reads)."""
        return (self.flags or {}).get(run.request_id, True)


@st.composite
def workloads(draw, max_requests: int = 10, maps: bool = False) -> Workload:
    """Random DAGs on a random device set, random per-(model, device) latencies, and random
    arrivals with priorities and optional deadlines. maps: some pipelines fan out (map_dags),
    each request's lists 0-5 elements long."""
    devices = draw(device_sets())
    pipelines, models = [], {}
    for _ in range(draw(st.integers(1, 3))):
        pipeline, used = draw(map_dags() if maps and draw(st.booleans()) else dags())
        pipelines.append(pipeline)
        models.update(used)
    latency = st.sampled_from([0.1, 0.25, 0.5, 1.0, 2.0])
    table = {(m, d.id, 0): ProfileEntry(draw(latency), power_w=draw(st.sampled_from([1.0, 5.0])))
             for m in sorted(models) for d in devices}
    arrivals = []
    for i in range(draw(st.integers(1, max_requests))):
        t = draw(st.floats(0, 5, allow_nan=False).map(lambda x: round(x, 2)))
        deadline = draw(st.one_of(st.none(), st.floats(0.2, 8).map(lambda x: round(x, 2))))
        arrivals.append((t, f"r{i}", draw(st.integers(0, len(pipelines) - 1)), draw(st.sampled_from([1, 3, 9])),
                         None if deadline is None else t + deadline))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    lengths = {a[1]: draw(st.integers(0, 5)) for a in arrivals} if maps else None
    flags = {a[1]: draw(st.booleans()) for a in arrivals} if maps else None
    return Workload(devices, pipelines, models, table, arrivals, lengths, flags)
