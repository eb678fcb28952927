"""Power budget end to end: a real gateway (ONNX Runtime and Python stages) whose estimated power
the controller keeps under a budget set through the admin RPC; refusals carry a retry hint."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from server_fixtures import (  # noqa: F401  (fixtures are found by name)
    RunningServer,
    heddle_cache_dir,
    parse_test_document,
    running_server,
    scrape_metrics,
    wait_until,
)

from heddle.clients.tensors import to_tensor
from heddle.server.config.builder import document, onnx_device, onnx_model, pipeline, python_device, stage, tensor
from heddle.server.config.default import PREPROCESS
from heddle.server.config.load import ConfigError
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
TOP = 4

CPU0 = onnx_device("cpu0", kind="cpu", providers=["CPUExecutionProvider"], intra_op_threads=1,
                   power={"idle_w": 1.0, "active_w": [6.0, 4.0, 2.5]}, dvfs={"kind": "virtual"})
PY0 = python_device("py0", kind="cpu", slots=2, power={"idle_w": 0.5, "active_w": [2.0]})
CLASSIFY = pipeline("classify", [tensor("image", "UINT8", (-1, 64, 64, 3))], {"logits": "cnn.logits"}, [
    stage("pre", "preprocess", image="input:image"), stage("cnn", "cnn", image="pre.image")])


def config_doc(power: dict[str, Any] | None, cpu0: dict[str, Any] = CPU0, py0: dict[str, Any] = PY0) -> dict[str, Any]:
    """The config as data; its cache_dir comes as a value (parse_cached)."""
    return document(server={"admin_token": TOKEN, "priority_levels": TOP, "default_priority": 2}, power=power,
                    devices=[cpu0, py0], models=[onnx_model("cnn", "builtin:cnn"), PREPROCESS], pipelines=[CLASSIFY])


def parse_cached(doc: dict[str, Any], cache_dir: Path):
    return parse_test_document(doc, cache_dir=str(cache_dir))


@pytest.fixture(scope="module")
def power_server(heddle_cache_dir: Path) -> Iterator[RunningServer]:
    """One gateway whose budget (0.1 W) is below its idle power, ticking every 20 ms."""
    power = {"budget_w": 0.1, "period_s": 0.02, "relax_periods": 1, "peak_window_s": 0.0}
    with running_server(parse_cached(config_doc(power), heddle_cache_dir)) as running:
        yield running


@pytest.fixture()
def stubs(power_server: RunningServer):
    with grpc.insecure_channel(power_server.target) as channel:
        yield pb_grpc.GatewayStub(channel), pb_grpc.AdminStub(channel)


def image_request(priority: int) -> pb.InferRequest:
    image = np.random.default_rng(priority).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    return pb.InferRequest(pipeline="classify", inputs=[to_tensor("image", image)], priority=priority)


def set_budget(admin, box_w: float) -> pb.PowerStatus:
    return admin.SetPowerBudget(pb.PowerBudget(box_w=box_w), metadata=AUTH, timeout=10)


def wait_for_state(admin, state: str) -> None:
    """The controller steps once per period; no event announces it, so GetPower is polled."""
    wait_until(lambda: admin.GetPower(pb.GetPowerRequest(), metadata=AUTH, timeout=10).controller_state == state,
               f"controller state {state!r}")


def test_get_power_reports_estimated_power_per_device(stubs):
    """GetPower says the power is estimated, from the estimate sensor, with the budget in force."""
    _, admin = stubs
    status = admin.GetPower(pb.GetPowerRequest(), metadata=AUTH, timeout=10)
    assert status.source == "estimated"
    assert {d.device: (d.source, d.sensor) for d in status.devices} == {
        "cpu0": ("estimated", "estimate"), "py0": ("estimated", "estimate")}
    assert status.box_power_w >= 1.5  # both idle powers at least
    assert status.budget.box_w == pytest.approx(0.1)


def test_tiny_budget_refuses_low_priority_with_a_retry_hint(stubs):
    """Under a budget below idle power, low priority is refused RESOURCE_EXHAUSTED with
    retry-after-ms in the trailing metadata, while the top class is served, its energy
    reported > 0 and labelled estimated, per stage and in total."""
    gateway, admin = stubs
    set_budget(admin, 0.1)
    wait_for_state(admin, "refuse_low")
    with pytest.raises(grpc.RpcError) as refused:
        gateway.Infer(image_request(1), timeout=10)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "power budget" in refused.value.details()
    hint = dict(refused.value.trailing_metadata())["retry-after-ms"]
    assert int(hint) > 0
    response = gateway.Infer(image_request(TOP), timeout=10)
    assert response.energy_j > 0 and response.energy_source == "estimated"
    stages = {s.stage: s for s in response.stages}
    assert stages["cnn"].energy_j > 0 and stages["cnn"].energy_source == "estimated"
    assert response.energy_j == pytest.approx(sum(s.energy_j for s in response.stages))


def test_raising_the_budget_readmits_low_priority(stubs):
    """After SetPowerBudget raises the budget, the controller undoes its steps and a
    low-priority request is served again."""
    gateway, admin = stubs
    set_budget(admin, 0.1)
    wait_for_state(admin, "refuse_low")
    status = set_budget(admin, 1000.0)
    assert status.budget.box_w == 1000.0
    wait_for_state(admin, "ok")
    assert gateway.Infer(image_request(1), timeout=10).energy_source == "estimated"


def test_set_power_budget_needs_the_admin_token(stubs):
    """Without the token the admin RPC is refused; with it, bad budgets are INVALID_ARGUMENT."""
    _, admin = stubs
    with pytest.raises(grpc.RpcError) as missing:
        admin.SetPowerBudget(pb.PowerBudget(box_w=5.0), timeout=10)
    assert missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as wrong:
        admin.SetPowerBudget(pb.PowerBudget(box_w=5.0), metadata=(("authorization", "Bearer nope"),), timeout=10)
    assert wrong.value.code() is grpc.StatusCode.PERMISSION_DENIED
    for bad in (pb.PowerBudget(box_w=-1.0), pb.PowerBudget(device_w={"gpu9": 3.0})):
        with pytest.raises(grpc.RpcError) as invalid:
            admin.SetPowerBudget(bad, metadata=AUTH, timeout=10)
        assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = admin.SetPowerBudget(pb.PowerBudget(box_w=7.0, device_w={"cpu0": 3.0}), metadata=AUTH, timeout=10)
    assert status.budget.box_w == 7.0 and dict(status.budget.device_w) == {"cpu0": 3.0}


def test_power_metrics_are_exported(stubs, power_server: RunningServer):
    """The scrape has power per device labelled estimated, the budgets, energy per pipeline and
    class, DVFS levels, frozen tasks, and refusals by reason and class."""
    gateway, admin = stubs
    set_budget(admin, 0.1)
    wait_for_state(admin, "refuse_low")
    with pytest.raises(grpc.RpcError):
        gateway.Infer(image_request(1), timeout=10)
    gateway.Infer(image_request(TOP), timeout=10)
    samples = scrape_metrics(power_server.metrics_url)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, frozenset(labels.items())))

    assert value("heddle_power_watts", device="cpu0", source="estimated") >= 1.0
    assert value("heddle_power_budget_watts", device="box") == pytest.approx(0.1)
    assert value("heddle_energy_joules_total", pipeline="classify", priority_class=str(TOP)) > 0
    assert value("heddle_admission_rejected_total", reason="power", priority_class="1") >= 1
    assert value("heddle_dvfs_level", device="cpu0") is not None
    assert value("heddle_frozen_tasks") is not None


@pytest.mark.parametrize("power, message", [
    ({"budget_w": 5, "budgett": 3}, "[power]: unknown key 'budgett' (did you mean 'budget_w'?)"),
    ({"budget_w": -5}, "positive number of watts"),
    ({"devices": {"gpu9": 3.0}}, "unknown device"),
])
def test_bad_power_table_is_a_config_error(heddle_cache_dir: Path, power: dict[str, Any], message: str):
    """A malformed [power] table stops the start with a ConfigError naming the problem."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_cached(config_doc(power), heddle_cache_dir)


def test_bad_device_power_tables_are_config_errors(heddle_cache_dir: Path):
    """Device power/sensor/dvfs tables are checked by the backends' parsers at load."""
    no_dvfs = {k: v for k, v in CPU0.items() if k != "dvfs"}
    for cpu0, py0, message in [
        ({**CPU0, "dvfs": {"kind": "turbo"}}, PY0, "unknown dvfs kind"),
        (CPU0, {**PY0, "power": {"idle_w": 3.0, "active_w": [2.0]}}, "below idle_w"),
        ({**no_dvfs, "sensor": {"kind": "psychic"}}, PY0, "unknown sensor kind"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_cached(config_doc(None, cpu0, py0), heddle_cache_dir)


# ---- energy accounting (server/power/energy.py), on a fake clock -----------------------------------

def test_ledger_charges_busy_power_shared_among_concurrent_stages():
    """A stage alone on a domain is charged its busy power x its run time; two at once split it;
    a rate change applies from its time on; idle time is charged to no one."""
    from heddle.server.power.energy import EnergyLedger

    ledger = EnergyLedger()
    ledger.assign("cpu0", "cpu0")
    ledger.set_rate("cpu0", 6.0, "estimated", 0.0)
    ledger.started("cpu0", ("a", "s"), 1.0)
    assert ledger.finished(("a", "s"), 2.0) == (pytest.approx(6.0), "estimated")
    ledger.started("cpu0", ("b", "s"), 3.0)
    ledger.started("cpu0", ("c", "s"), 3.0)
    ledger.set_rate("cpu0", 2.0, "estimated", 4.0)  # 6 W shared for 1 s, then 2 W shared for 1 s
    assert ledger.finished(("b", "s"), 5.0)[0] == pytest.approx(3.0 + 1.0)
    assert ledger.finished(("c", "s"), 6.0)[0] == pytest.approx(3.0 + 1.0 + 2.0)


def test_ledger_adds_up_the_steps_of_a_multi_step_stage_and_skips_unmetered_devices():
    """Steps of one stage (LLM decode) add up; a device with no power domain reports nothing."""
    from heddle.server.power.energy import EnergyLedger, combine_sources

    ledger = EnergyLedger()
    ledger.assign("gpu0", "gpu0")
    ledger.set_rate("gpu0", 10.0, "measured", 0.0)
    key = ("r", "llm")
    ledger.started("gpu0", key, 0.0)
    ledger.stopped(key, 0.5)
    ledger.started("gpu0", key, 2.0)  # the gap between steps is not charged
    assert ledger.finished(key, 2.5) == (pytest.approx(10.0), "measured")
    ledger.started("remote0", ("r", "t"), 0.0)
    assert ledger.finished(("r", "t"), 1.0) == (0.0, "")
    assert combine_sources(["estimated", "measured", ""]) == "mixed"
    assert combine_sources(["estimated", ""]) == "estimated" and combine_sources([""]) == ""
