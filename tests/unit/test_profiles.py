"""Profiles: the graph prior, op-type compatibility, online refinement, and the ONNX reader."""

from __future__ import annotations

import math
import random
from pathlib import Path

import onnx
import pytest
from sched_fixtures import chain, model, validated

from heddle.backends.graph_summary import summarize_file
from heddle.backends.zoo import build_default_models, build_model
from heddle.scheduler import Core, DeviceSpec, Request
from heddle.scheduler.profiles import (
    ConstantProfiles,
    DeviceSpeed,
    GraphSummary,
    ProfileEntry,
    ProfileTable,
    batch_scale,
    compatible,
    device_speed,
    prior_latency_s,
)

CPU = DeviceSpec("cpu0", "cpu", "onnxruntime")
GPU = DeviceSpec("gpu0", "gpu", "onnxruntime", options={"speed": {"flops_per_s": 1e12, "level_clock": [1.0, 0.5]}})
DLA = DeviceSpec("dla0", "dla", "onnxruntime", options={"unsupported_ops": ["LayerNormalization", "Erf"]})
SPEED = DeviceSpeed(flops_per_s=1e9, bytes_per_s=1e9, overhead_s=0.0, per_layer_s=0.0, level_clock=(1.0, 0.5))


def summary(flops=1e9, bytes_moved=1e6, ops=("Conv",), layers=0) -> GraphSummary:
    return GraphSummary(params=0, layers=layers, op_counts={o: 1 for o in ops}, flops=flops, bytes_moved=bytes_moved)


# ---- the prior and compatibility --------------------------------------------------------------

def test_prior_is_a_roofline_bounded_by_compute_or_memory():
    """1 GFLOP at 1 GFLOP/s takes 1 s; 2 GB at 1 GB/s takes 2 s whatever the FLOPs; half the
    clock doubles compute time but not memory time."""
    assert prior_latency_s(summary(1e9, 1e6), SPEED) == pytest.approx(1.0)
    assert prior_latency_s(summary(1e6, 2e9), SPEED) == pytest.approx(2.0)
    assert prior_latency_s(summary(1e9, 1e6), SPEED, level=1) == pytest.approx(2.0)
    assert prior_latency_s(summary(1e6, 2e9), SPEED, level=1) == pytest.approx(2.0)


def test_devices_refuse_models_with_unsupported_ops_by_deny_or_allow_list():
    """A DLA refuses LayerNormalization; a device with an allow list refuses anything outside it."""
    assert compatible({"Conv", "Relu"}, DLA)
    assert not compatible({"MatMul", "LayerNormalization"}, DLA)
    npu = DeviceSpec("npu0", "npu", "onnxruntime", options={"supported_ops": ["Conv", "Relu"]})
    assert compatible({"Conv"}, npu) and not compatible({"Conv", "Softmax"}, npu)
    assert compatible({"anything"}, CPU)


# ---- the table ----------------------------------------------------------------------------------

def test_estimates_come_from_measurements_then_table_then_graph_then_default():
    """Each source is used only when the better ones have nothing for that (model, device)."""
    profiles = ProfileTable(table={("m", "cpu0", 0): ProfileEntry(0.5, power_w=3.0)},
                            summaries={"g": summary(2e9)}, default_s=0.01)
    assert profiles.estimate("m", CPU).source == "table" and profiles.estimate("m", CPU).mean_s == 0.5
    assert profiles.power_w("m", CPU) == 3.0
    assert profiles.estimate("g", GPU).source == "graph"
    assert profiles.estimate("g", GPU).mean_s == pytest.approx(prior_latency_s(summary(2e9), device_speed(GPU)))
    assert profiles.estimate("unknown", CPU).mean_s == 0.01
    profiles.observe("m", CPU, 0, 0.2)
    assert profiles.estimate("m", CPU).source == "measured" and profiles.estimate("m", CPU).mean_s == 0.2


def test_measurements_give_an_ewma_and_a_high_percentile_over_a_bounded_window():
    """The mean follows recent runs; the tail is the window's p95 and forgets runs that left it."""
    profiles = ProfileTable(alpha=0.5, window=20, percentile=95.0)
    for run_s in [3.0, 3.0] + [1.0] * 18:
        profiles.observe("m", CPU, 0, run_s)
    est = profiles.estimate("m", CPU)
    assert est.samples == 20 and est.mean_s == pytest.approx(1.0, abs=1e-4) and est.tail_s == 3.0
    for _ in range(2):
        profiles.observe("m", CPU, 0, 1.0)  # the two slow runs leave the 20-run window
    assert profiles.estimate("m", CPU).tail_s == pytest.approx(1.0, abs=1e-4)
    profiles.observe("m", CPU, 0, 5.0)
    assert profiles.estimate("m", CPU).mean_s == pytest.approx(3.0, abs=1e-3)
    assert profiles.rows()[0][:3] == ("m", "cpu0", 0)


@pytest.mark.parametrize("seed", range(5))
def test_the_tail_is_the_nearest_rank_percentile_of_the_last_window_of_runs(seed):
    """The window is kept sorted as runs come and go (not sorted at each read): after every
    observation the tail equals the percentile of the last `window` runs sorted from scratch,
    repeated values (which leave one at a time) included; and a (model, device)'s estimates are
    dropped at each observation, another device's kept."""
    rng = random.Random(seed)
    profiles = ProfileTable(alpha=0.3, window=7, percentile=90.0)
    runs: list[float] = []
    other = profiles.estimate("m", GPU)
    for _ in range(60):
        run_s = rng.choice([0.5, 1.0, 2.0]) if rng.random() < 0.4 else rng.uniform(0.1, 3.0)
        runs.append(run_s)
        profiles.observe("m", CPU, 0, run_s)
        last = sorted(runs[-7:])
        expected = last[max(1, math.ceil(0.9 * len(last))) - 1]
        est = profiles.estimate("m", CPU)
        assert est.tail_s == max(est.mean_s, expected)
        assert profiles.estimate("m", GPU) is other


def test_a_level_without_data_scales_level_zero_by_the_clock():
    """At half clock a run measured at level 0 is estimated twice as long, until measured."""
    profiles = ProfileTable(table={("m", "gpu0", 0): ProfileEntry(0.1)})
    assert profiles.estimate("m", GPU, 1).mean_s == pytest.approx(0.2)
    profiles.observe("m", GPU, 1, 0.15)
    assert profiles.estimate("m", GPU, 1).mean_s == pytest.approx(0.15)


def test_batch_axis_defaults_to_a_fixed_share_plus_a_share_per_row():
    """Unmeasured, a pass of b rows takes the one-row figure times a + (1 - a) * b (a = 0.5)."""
    table = ProfileTable(table={("m", "cpu0", 0): ProfileEntry(0.01)})
    assert batch_scale(1) == 1.0 and batch_scale(4) == pytest.approx(2.5)
    assert table.estimate("m", CPU, 0, 4).mean_s == pytest.approx(0.025)
    assert table.estimate("m", CPU).mean_s == pytest.approx(0.01)


def test_batch_axis_keeps_an_ewma_per_size_and_scales_the_nearest_measured_one():
    """Passes of 4 rows measured: batch 4 reads its own EWMA, other sizes scale it (a measurement
    beats the table's one-row figure) until one-row runs are measured too, which then serve
    the sizes nearer to 1 and leave batch 4's own figure alone."""
    table = ProfileTable(table={("m", "cpu0", 0): ProfileEntry(0.01)}, alpha=0.5)
    table.observe("m", CPU, 0, 0.02, batch=4)
    table.observe("m", CPU, 0, 0.04, batch=4)
    four = table.estimate("m", CPU, 0, 4)
    assert (four.mean_s, four.samples, four.source) == (pytest.approx(0.03), 2, "measured")
    assert table.estimate("m", CPU, 0, 8).mean_s == pytest.approx(0.03 * batch_scale(8) / batch_scale(4))
    assert table.estimate("m", CPU, 0, 2).mean_s == pytest.approx(0.03 * batch_scale(2) / batch_scale(4))
    assert table.estimate("m", CPU).mean_s == pytest.approx(0.03 / batch_scale(4))
    table.observe("m", CPU, 0, 0.005)
    assert table.estimate("m", CPU).mean_s == pytest.approx(0.005)
    assert table.estimate("m", CPU, 0, 4).mean_s == pytest.approx(0.03)
    assert table.estimate("m", CPU, 0, 2).mean_s == pytest.approx(0.005 * batch_scale(2))  # 1 is nearer than 4
    assert [r[:3] for r in table.rows()] == [("m", "cpu0", 0)]  # the one-row report is unchanged


def test_constant_profiles_keep_every_device_and_every_estimate_equal():
    """The default source: one run time for all, every device compatible, nothing learned."""
    profiles = ConstantProfiles(0.3)
    profiles.observe("m", CPU, 0, 9.0)
    assert profiles.estimate("m", DLA).mean_s == profiles.estimate("x", CPU).tail_s == 0.3
    assert profiles.op_types("m") == frozenset()


def test_core_learns_run_times_from_completed_stages():
    """on_stage_done feeds the measured run time into the profiles the core estimates from."""
    profiles = ProfileTable(default_s=1.0)
    core = Core([CPU], {"m": model("m")}, "sjf", profiles)
    core.submit(Request("r", validated(chain("c", ["m"]), {"m": model("m")}), 1, 0.0), 0.0)
    core.schedule(0.0)
    core.on_stage_done("r", "s0", 0.25)
    assert core.estimate_s("m", "cpu0") == 0.25


# ---- reading ONNX graphs ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, Path]:
    return build_default_models(tmp_path_factory.mktemp("zoo"))


def test_graph_summary_of_zoo_models_counts_params_ops_and_work(zoo):
    """The CNN is convolutions with real FLOPs; the encoder carries LayerNormalization and Erf;
    params are the initializers' element counts."""
    cnn = summarize_file(zoo["cnn"])
    raw = onnx.load(str(zoo["cnn"]))
    assert cnn.params == sum(int(math.prod(i.dims)) for i in raw.graph.initializer)
    assert cnn.op_counts["Conv"] == 15 and cnn.flops > 1e7 and cnn.bytes_moved > 4 * cnn.params
    assert 0 < cnn.layers < len(raw.graph.node)  # plumbing (Identity, Flatten) is not a layer
    encoder = summarize_file(zoo["encoder"], {"sequence": 32})
    assert {"LayerNormalization", "Erf", "MatMul"} <= encoder.op_types
    assert summarize_file(zoo["encoder"], {"sequence": 64}).flops > encoder.flops


def test_bigger_graphs_get_bigger_priors_and_transformers_never_reach_the_dla(zoo, tmp_path):
    """Wider convolutions mean more FLOPs and a longer prior; the encoder is not DLA-compatible."""
    small = summarize_file(build_model("cnn", tmp_path, widths=[8, 16, 16]))
    big = summarize_file(zoo["cnn"])
    assert big.flops > small.flops and prior_latency_s(big, SPEED) > prior_latency_s(small, SPEED)
    encoder = summarize_file(zoo["encoder"])
    profiles = ProfileTable(summaries={"cnn": big, "encoder": encoder})
    models = {"cnn": model("cnn"), "encoder": model("encoder")}
    core = Core([CPU, DLA], models, "fcfs", profiles)
    assert core.eligible_devices("cnn") == ["cpu0", "dla0"]
    assert core.eligible_devices("encoder") == ["cpu0"]


def test_curve_scale_reads_a_measured_batch_curve():
    from heddle.scheduler.profiles import batch_scale, curve_scale

    curve = {4: 2.0, 8: 3.0}
    assert curve_scale(curve, 4) == 2.0 and curve_scale(curve, 1) == 1.0
    assert curve_scale(curve, 2) == pytest.approx(1 + (2.0 - 1.0) / 3 * 1)  # between 1 and 4
    assert curve_scale(curve, 6) == pytest.approx(2.5)
    assert curve_scale(curve, 16) == pytest.approx(5.0)  # the line through 4 and 8, extended
    assert curve_scale(None, 8) == batch_scale(8) and curve_scale({}, 3) == batch_scale(3)
    assert curve_scale({1: 1.0}, 5) == batch_scale(5)  # one point is no curve
