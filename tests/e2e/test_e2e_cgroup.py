"""The CPU-bandwidth actuator in a real gateway (skipped where cgroups are not writable): the power
controller's level (or a throttling governor's, the power bench's baseline) lands in the device's
cgroup, shows in heddle_dvfs_level, and slows its stages."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from server_fixtures import chain_toml, parse_test_config, py_model_toml, running_server, scrape_metrics, wait_until
from test_dvfs_cgroup_live import favour

from heddle.backends.power.cgroup import CgroupError, find_hierarchy, group_name
from heddle.clients.tensors import to_tensor
from heddle.scheduler.sim.governor import ThrottlingGovernor
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
DEVICE = "cgtest-e2e"


def _parent() -> Path | None:
    try:
        parent = find_hierarchy(Path("/")).parent
        probe = parent / group_name("cgtest-probe")
        probe.mkdir()
        probe.rmdir()
    except (CgroupError, OSError):
        return None
    return parent


PARENT = _parent()
pytestmark = pytest.mark.skipif(PARENT is None, reason="no writable cgroup cpu controller here (needs root "
                                                       "or a delegated cgroup)")

CONFIG = f"""
[server]
admin_token = "{TOKEN}"
priority_levels = 4
default_priority = 4

[power]
period_s = 0.02
relax_periods = 1
peak_window_s = 0.0

[[devices]]
id = "{DEVICE}"
kind = "cpu"
backend = "python"
power = {{ idle_w = 1.0, active_w = 5.0 }}
dvfs = {{ kind = "cgroup", values = [100, 10] }}

""" + py_model_toml("burn", "stage_fns:burn_cpu", devices=[DEVICE]) + chain_toml("burn", ["burn"])


def _compute_ms(gateway, runs: int = 3) -> list[float]:
    request = pb.InferRequest(pipeline="burn", inputs=[to_tensor("x", np.ones(1, np.float32))], priority=4)
    return [gateway.Infer(request, timeout=30).stages[0].compute_ms for _ in range(runs)]


def _level(metrics_url: str) -> float | None:
    return scrape_metrics(metrics_url).get(("heddle_dvfs_level", frozenset({("device", DEVICE)})))


@pytest.mark.slow
def test_the_controller_level_throttles_the_device_and_shows_in_the_metric():
    """A budget below idle power takes the device to 10% bandwidth (quota file, heddle_dvfs_level 1) and its
    CPU-bound stage takes at least twice as long; lifting the budget brings level 0 back; stopping removes
    the group."""
    group = PARENT / group_name(DEVICE)
    with running_server(parse_test_config(CONFIG)) as running, grpc.insecure_channel(running.target) as channel:
        gateway, admin = pb_grpc.GatewayStub(channel), pb_grpc.AdminStub(channel)
        favour(group)
        full_ms = _compute_ms(gateway)
        assert group.is_dir() and (group / "tasks").read_text().split()  # the worker thread is inside
        assert _level(running.metrics_url) == 0

        admin.SetPowerBudget(pb.PowerBudget(box_w=0.1), metadata=AUTH, timeout=10)
        # A level is lowered where it saves power: on a busy device. Its work is all top class, so
        # this is the ladder's last rung, after refusing the classes below.
        wait_until(lambda: bool(_compute_ms(gateway, 1)) and _level(running.metrics_url) == 1, "heddle_dvfs_level 1")
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "1000"  # 10% of one CPU over 10 ms
        throttled_ms = _compute_ms(gateway)
        assert min(throttled_ms) >= 2 * min(full_ms), (full_ms, throttled_ms)

        admin.SetPowerBudget(pb.PowerBudget(box_w=0.0), metadata=AUTH, timeout=10)
        wait_until(lambda: _level(running.metrics_url) == 0, "heddle_dvfs_level 0")
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "-1"
    assert not group.exists()


def _on_loop(running, fn, *args):
    """fn(*args) on the server's loop thread (the power loop is the loop's alone)."""
    async def call():
        return fn(*args)
    return asyncio.run_coroutine_threadsafe(call(), running.loop).result(10)


@pytest.mark.slow
def test_a_throttling_governor_given_the_levels_moves_the_cgroup_and_the_metric():
    """The live power bench's baseline (PowerLoop.use_governor): a governor whose budget the box is over
    lowers the device to its last level (quota file, heddle_dvfs_level 1, the stage at least twice as slow);
    taking the levels back returns level 0."""
    with running_server(parse_test_config(CONFIG)) as running, grpc.insecure_channel(running.target) as channel:
        gateway = pb_grpc.GatewayStub(channel)
        group = PARENT / group_name(DEVICE)
        favour(group)
        full_ms = _compute_ms(gateway)
        _on_loop(running, running.server.power.use_governor, ThrottlingGovernor(0.1, {DEVICE: 2}))
        wait_until(lambda: _level(running.metrics_url) == 1, "heddle_dvfs_level 1")
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "1000"
        assert min(_compute_ms(gateway)) >= 2 * min(full_ms)
        _on_loop(running, running.server.power.use_governor, None)
        wait_until(lambda: _level(running.metrics_url) == 0, "heddle_dvfs_level 0")
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "-1"
