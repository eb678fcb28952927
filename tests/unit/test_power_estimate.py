"""The estimated power sensor: the power-model math, config parsing, and a live run on real busy time."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest

from heddle.backends.power.estimate import (
    DEFAULT_POWER_MODELS,
    EstimateSensor,
    PowerModel,
    detect_estimate,
    estimate_power_w,
    parse_power_model,
    power_model_of,
)
from heddle.backends.power.sensors import ESTIMATED, PowerSample
from heddle.backends.zoo.build import build_model
from heddle.scheduler.specs import DeviceSpec
from heddle.server.runtime.metrics import Metrics

MODEL = PowerModel(idle_w=2.0, active_w=(10.0, 6.0, 4.0))


def test_power_is_idle_plus_busy_share_of_the_level():
    """power = idle + busy x (active[level] - idle), at every level."""
    assert estimate_power_w(MODEL, 0.0, 0) == 2.0
    assert estimate_power_w(MODEL, 1.0, 0) == 10.0
    assert estimate_power_w(MODEL, 0.5, 1) == 4.0
    assert estimate_power_w(MODEL, 0.25, 2) == 2.5


def test_busy_is_clamped_and_levels_past_the_end_use_the_last():
    """A busy fraction outside [0, 1] is clamped, a level past the table is the slowest, a negative one is an error."""
    assert estimate_power_w(MODEL, 1.7, 0) == 10.0
    assert estimate_power_w(MODEL, -0.2, 0) == 2.0
    assert estimate_power_w(MODEL, 1.0, 9) == 4.0
    with pytest.raises(ValueError, match="level must be >= 0"):
        estimate_power_w(MODEL, 1.0, -1)


def test_power_model_is_validated():
    """active_w must be non-empty and never below idle_w."""
    with pytest.raises(ValueError, match="below idle_w"):
        PowerModel(5.0, (10.0, 4.0))
    with pytest.raises(ValueError, match="one value per DVFS level"):
        PowerModel(1.0, ())


def test_power_model_from_config():
    """The device's power table becomes its model; errors name the device; no table means the kind's default."""
    device = DeviceSpec("cpu0", "cpu", "onnxruntime", 1, {"power": {"idle_w": 1.5, "active_w": [7, 5]}})
    assert power_model_of(device) == (PowerModel(1.5, (7.0, 5.0)), "")
    with pytest.raises(ValueError, match="device cpu9: unknown power keys \\['max_w'\\]"):
        parse_power_model({"idle_w": 1, "active_w": [2], "max_w": 3}, "device cpu9")
    with pytest.raises(ValueError, match="device cpu9: power needs active_w"):
        parse_power_model({"idle_w": 1}, "device cpu9")
    model, note = power_model_of(DeviceSpec("gpu0", "gpu", "onnxruntime"))
    assert model == DEFAULT_POWER_MODELS["gpu"] and "assumed default" in note
    assert power_model_of(DeviceSpec("r0", "remote", "triton")) == (
        None, "no power model configured and no default for kind 'remote'")


def test_energy_integrates_power_over_read_intervals():
    """Each read charges its power for the time since the previous read; the level callable is honoured."""
    busy = {"cpu0": 0.5}
    level = {"cpu0": 0}
    sensor = EstimateSensor({"cpu0": MODEL}, busy.__getitem__, level.__getitem__)
    assert sensor.read(10.0) == [PowerSample("cpu0", 6.0, 0.0, ESTIMATED, "estimate", 10.0)]
    level["cpu0"] = 1
    [sample] = sensor.read(12.0)
    assert (sample.power_w, sample.energy_j) == (4.0, 8.0)
    busy["cpu0"] = 1.0
    [sample] = sensor.read(12.5)
    assert (sample.power_w, sample.energy_j) == (6.0, 11.0)


def test_detect_without_busy_source_says_the_estimate_is_idle():
    """Without a busy_fraction callable the estimate still runs, reports idle power, and says so."""
    device = DeviceSpec("cpu0", "cpu", "onnxruntime", 1, {"power": {"idle_w": 3.0, "active_w": [9.0]}})
    [sensor], notes = detect_estimate([device], None, None)
    assert sensor.read(0.0)[0].power_w == 3.0
    assert [n.what for n in notes] == ["estimate"]


def test_estimate_live_from_real_busy_time(tmp_path):
    """Real ONNX Runtime runs tracked by the server's busy window give a busy fraction, and the estimate
    reports exactly idle + fraction x (active - idle), with energy = power x elapsed time."""
    session = ort.InferenceSession(str(build_model("head_cls", tmp_path)), providers=["CPUExecutionProvider"])
    features = np.random.default_rng(0).standard_normal((64, 64), dtype=np.float32)
    metrics = Metrics(busy_window_s=1.0)
    seen: list[float] = []

    def busy_fraction(device: str) -> float:
        seen.append(metrics.busy_fractions().get(device, 0.0))
        return seen[-1]

    model = PowerModel(2.0, (12.0, 7.0))
    sensor = EstimateSensor({"cpu0": model}, busy_fraction)
    start_s = time.monotonic()
    [idle] = sensor.read(start_s)
    assert (idle.power_w, idle.energy_j) == (2.0, 0.0)  # nothing ran yet
    for _ in range(200):
        metrics.device_started("cpu0")
        run_start = time.perf_counter()
        session.run(None, {"features": features})
        metrics.device_finished("cpu0", time.perf_counter() - run_start)
    end_s = time.monotonic()
    [busy] = sensor.read(end_s)
    fraction = seen[-1]
    assert 0.0 < fraction <= 1.0
    assert busy.power_w == pytest.approx(2.0 + fraction * 10.0)
    assert 2.0 < busy.power_w <= 12.0
    assert busy.energy_j == pytest.approx(busy.power_w * (end_s - start_s))
    assert (busy.source, busy.sensor) == (ESTIMATED, "estimate")
