"""Shipped simulation data: a Jetson Orin NX-like platform and the default mixed scenario.

Figures marked READ come straight from the cited public source; DERIVED ones were computed
from a cited figure by the rule written next to them (scaling, unit conversion, an assumed
efficiency); ASSUMED ones have no public source and are order-of-magnitude choices.

Sources:
[MLPerf3] MLCommons inference_results_v3.0, closed/NVIDIA/results/Orin_NX_TRT/<model>/
          SingleStream/performance/run_1/mlperf_log_summary.txt (Jetson Orin NX 16GB, TensorRT).
[DLA-SW]  github.com/NVIDIA/Deep-Learning-Accelerator-SW README, "Orin DLA Performance":
          2x DLA images/s on AGX Orin 64GB at 15 W, which the README says matches the maximum
          DLA TOPs of Orin NX 16GB; and operators/README.md (ONNX ops supported on Orin DLA).
[Roboflow] docs.roboflow.com/reference/inference/inference-python/benchmarks, Jetson Orin NX
          object detection, TensorRT inferences/s.
[YOLO-CPU] github.com/the0807/YOLOv8-ONNX-TensorRT README, ONNX on the CPU of an Orin Nano
          (6x Cortex-A78AE at 1.5 GHz).
[NX-DS]   NVIDIA Jetson Orin NX series datasheet: 8x Cortex-A78AE (2 clusters) at 2.0 GHz,
          1024-core Ampere GPU at 918 MHz, 2x NVDLA v2, 102.4 GB/s LPDDR5, 10-25 W.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from heddle.scheduler.profiles import ProfileEntry
from heddle.scheduler.sim.workload import LlmSource, Periodic, Poisson, Scenario, chain
from heddle.scheduler.specs import DeviceSpec

__all__ = ["DEFAULT_PLATFORM", "DEFAULT_SCENARIO", "PLATFORMS", "SCENARIOS", "ModelFigures", "Platform"]

# Ops with no Orin DLA support through TensorRT ([DLA-SW] operators/README.md: Div, Erf, Exp,
# Pow, Sqrt are "None"; LayerNormalization, Gelu and attention are not in the matrix at all).
DLA_UNSUPPORTED_OPS = ("Attention", "Div", "Einsum", "Erf", "Exp", "Gelu", "LayerNormalization",
                       "MultiHeadAttention", "Pow", "Sqrt")
CNN_OPS = frozenset({"Conv", "Relu", "Add", "MaxPool", "GlobalAveragePool", "Gemm", "Concat", "Resize", "Sigmoid"})
TRANSFORMER_OPS = frozenset({"MatMul", "Add", "Mul", "Softmax", "LayerNormalization", "Erf", "Div", "Gather"})


@dataclass(frozen=True, slots=True)
class ModelFigures:
    """Level-0 latency and active power per device kind, plus run-to-run variation."""

    op_types: frozenset[str]
    latency_ms: Mapping[str, float]  # device kind -> ms
    power_w: Mapping[str, float]  # device kind -> W while running it
    cv: float = 0.05  # coefficient of variation of run time


@dataclass(frozen=True, slots=True)
class Platform:
    name: str
    description: str
    devices: tuple[DeviceSpec, ...]
    models: Mapping[str, ModelFigures]
    level_power: Mapping[str, tuple[float, ...]]  # device kind -> power factor per DVFS level

    def table(self) -> dict[tuple[str, str, int], ProfileEntry]:
        """(model, device id, level) -> latency and power, for every device that can run it.
        Lower levels: latency / clock and power x level_power (DERIVED: compute-bound runs
        slow down with the clock; dynamic power falls roughly with f x V^2)."""
        rows = {}
        for name, fig in self.models.items():
            for device in self.devices:
                if device.kind not in fig.latency_ms:
                    continue
                clocks = device.options["speed"]["level_clock"]
                for level, clock in enumerate(clocks):
                    rows[(name, device.id, level)] = ProfileEntry(
                        fig.latency_ms[device.kind] / 1000.0 / clock,
                        fig.power_w[device.kind] * self.level_power[device.kind][level])
        return rows

    def devices_of(self, model: str) -> tuple[str, ...]:
        kinds = self.models[model].latency_ms
        return tuple(d.id for d in self.devices if d.kind in kinds)


def _device(id_: str, kind: str, clocks: tuple[float, ...], **options: Any) -> DeviceSpec:
    return DeviceSpec(id_, kind, "sim", 1, {"speed": {"level_clock": clocks}, **options})


ORIN_NX = Platform(
    name="orin-nx",
    description="Jetson Orin NX 16GB-like: 2 CPU clusters, Ampere GPU, 2 DLAs (figures cited in platforms.py)",
    devices=(
        # DVFS clocks relative to the maximum. CPU 2.0/1.5/1.0 GHz, GPU 918/612/306 MHz: the
        # maxima are READ [NX-DS], the lower steps ASSUMED.
        _device("cpu0", "cpu", (1.0, 0.75, 0.5)),
        _device("cpu1", "cpu", (1.0, 0.75, 0.5)),
        _device("gpu0", "gpu", (1.0, 0.667, 0.333)),
        _device("dla0", "dla", (1.0, 0.5), unsupported_ops=DLA_UNSUPPORTED_OPS),
        _device("dla1", "dla", (1.0, 0.5), unsupported_ops=DLA_UNSUPPORTED_OPS),
    ),
    models={
        # GPU 1.08 ms READ [MLPerf3] resnet50 mean latency 1,084,580 ns. DLA 1.87 ms DERIVED
        # [DLA-SW] 1072 img/s on 2 DLAs (bs 2) -> 536/s per DLA. CPU 110 ms DERIVED: 8.2 GFLOP
        # at an ASSUMED 75 GFLOP/s sustained on one 4-core A78AE cluster.
        "resnet50": ModelFigures(CNN_OPS, {"gpu": 1.08, "dla": 1.87, "cpu": 110.0},
                                 {"gpu": 8.0, "dla": 1.8, "cpu": 3.0}, cv=0.03),
        # GPU 14.4 ms DERIVED [Roboflow] yolov8s-640 TRT 69.5 inferences/s. DLA 28.8 ms DERIVED
        # as 2x GPU (one DLA has about half the GPU's INT8 TOPs on Orin NX, [DLA-SW]). CPU
        # 261 ms DERIVED [YOLO-CPU] yolov8s 347.6 ms at 1.5 GHz scaled to 2.0 GHz.
        "yolov8s": ModelFigures(CNN_OPS, {"gpu": 14.4, "dla": 28.8, "cpu": 261.0},
                                {"gpu": 9.0, "dla": 2.2, "cpu": 3.0}, cv=0.05),
        # RetinaNet ResNeXt-50 800x800: GPU 34.0 ms READ [MLPerf3] retinanet mean 34,047,049 ns.
        # DLA 55.6 ms DERIVED [DLA-SW] 36 img/s on 2 DLAs -> 18/s per DLA. CPU 4 s DERIVED:
        # about 300 GFLOP at the CPU rate above.
        "retinanet": ModelFigures(CNN_OPS, {"gpu": 34.0, "dla": 55.6, "cpu": 4000.0},
                                  {"gpu": 10.0, "dla": 2.5, "cpu": 3.0}, cv=0.02),
        # BERT-Large, seq 384: GPU 9.97 ms READ [MLPerf3] bert-99 mean 9,968,356 ns; cv 0.25
        # DERIVED from its p50 8.9 ms / p90 14.4 ms (variable sequence lengths). No DLA: it
        # needs LayerNormalization and Erf. CPU 5 s DERIVED: ~340 GFLOP at the CPU rate above.
        "bert_large": ModelFigures(TRANSFORMER_OPS, {"gpu": 9.97, "cpu": 5000.0},
                                   {"gpu": 9.0, "cpu": 3.0}, cv=0.25),
        # A 3B-parameter LLM in INT4 (~1.7 GB of weights), 256-token prompt, one token per
        # decode step. Decode is memory bound: 1.7 GB / 102.4 GB/s [NX-DS] = 17 ms/token at
        # best; ASSUMED 50% efficiency -> 35 ms/token on the GPU; the CPU clusters reach an
        # ASSUMED third of that bandwidth -> 105 ms/token.
        # Prefill is compute bound: 2 x 3e9 x 256 FLOP at an ASSUMED 4.5 TFLOP/s (GPU) -> 350 ms,
        # 0.2 TFLOP/s (CPU) -> 7.7 s. All DERIVED.
        "llm_prefill": ModelFigures(TRANSFORMER_OPS, {"gpu": 350.0, "cpu": 7700.0},
                                    {"gpu": 10.0, "cpu": 3.5}, cv=0.05),
        "llm_decode": ModelFigures(TRANSFORMER_OPS, {"gpu": 35.0, "cpu": 105.0},
                                   {"gpu": 6.0, "cpu": 3.0}, cv=0.05),
    },
    # Active power per level relative to level 0, DERIVED as clock^2 (P ~ f V^2, V falling
    # less than f). Active powers above are ASSUMED within the 25 W module budget [NX-DS],
    # with the DLA about 4x more efficient per inference than the GPU [DLA-SW].
    level_power={"cpu": (1.0, 0.56, 0.25), "gpu": (1.0, 0.44, 0.11), "dla": (1.0, 0.25)},
)


# RTGen-style mixed scenario: real-time camera pipelines with frame deadlines, a voice NLU
# model, best-effort photo tagging, and LLM assistant requests, all on one SoC.
MIXED = Scenario(
    name="mixed",
    description="stereo cameras (2 x 30 FPS detect+classify), a 10 FPS wide detector, BERT voice "
                "intents, photo tagging, LLM assistant",
    sources=(
        Periodic("left_cam", chain("detect_classify", "yolov8s", "resnet50"), fps=30.0,
                 deadline_s=1 / 30, priority=9, jitter_s=0.002),
        Periodic("right_cam", chain("detect_classify", "yolov8s", "resnet50"), fps=30.0,
                 deadline_s=1 / 30, priority=9, jitter_s=0.002, phase_s=0.016),
        Periodic("rear_cam", chain("detect_wide", "retinanet"), fps=10.0, deadline_s=0.1,
                 priority=3, jitter_s=0.002, phase_s=0.005),
        Poisson("voice", chain("intent", "bert_large"), rate_hz=4.0, priority=3, deadline_s=0.05),
        # Sparse-DySta style: deadline = isolated latency x 5, priority 1.
        Poisson("photos", chain("tag", "resnet50"), rate_hz=30.0, priority=1, deadline_factor=5.0),
        LlmSource("assistant", rate_hz=0.15, steps=64, priority=1, deadline_factor=4.0),
    ),
    duration_s=20.0,
)

PLATFORMS = {ORIN_NX.name: ORIN_NX}
SCENARIOS = {MIXED.name: MIXED}
DEFAULT_PLATFORM = ORIN_NX.name
DEFAULT_SCENARIO = MIXED.name
