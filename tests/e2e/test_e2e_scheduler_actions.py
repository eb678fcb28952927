"""The scheduler's freezes of queued stage runs are counted in heddle_scheduler_actions (a live run's
figure, as the simulator reports it): a real gateway whose power budget freezes queued low-priority work."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import stage_fns
from server_fixtures import chain_toml, parse_test_config, py_model_toml, running_server, scrape_metrics, wait_until

from heddle.clients.tensors import to_tensor
from heddle.v1 import heddle_pb2 as pb
from heddle.v1 import heddle_pb2_grpc as pb_grpc

TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)

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
id = "d0"
kind = "cpu"
backend = "python"
slots = 1
power = {{ idle_w = 1.0, active_w = 5.0 }}

""" + py_model_toml("gate", "stage_fns:gate", devices=["d0"]) + chain_toml("gated", ["gate"])


@pytest.fixture(autouse=True)
def fresh_gate():
    stage_fns.reset()
    yield
    stage_fns.open_gate()  # never leave a worker blocked


def _request(tag: int, priority: int) -> pb.InferRequest:
    return pb.InferRequest(pipeline="gated", inputs=[to_tensor("x", stage_fns.tagged(np.float32(tag)))],
                           priority=priority)


def _sample(url: str, name: str, **labels: str) -> float | None:
    return scrape_metrics(url).get((name, frozenset(labels.items())))


def test_freezes_of_queued_runs_are_counted():
    """With a top-class run holding d0 and two low-priority runs queued behind it, a budget below idle power
    freezes the queued ones (no DVFS to lower first): heddle_scheduler_actions_total{action="freeze"} counts
    them; lifting the budget lets all three finish."""
    with running_server(parse_test_config(CONFIG)) as running, grpc.insecure_channel(running.target) as channel:
        gateway, admin = pb_grpc.GatewayStub(channel), pb_grpc.AdminStub(channel)
        calls = [gateway.Infer.future(_request(1, 4), timeout=30)]
        assert stage_fns.wait_for_call("gate", 1)
        calls += [gateway.Infer.future(_request(tag, 1), timeout=30) for tag in (2, 3)]
        wait_until(lambda: _sample(running.metrics_url, "heddle_device_queue_length", device="d0") == 2,
                   "two queued runs")
        admin.SetPowerBudget(pb.PowerBudget(box_w=0.1), metadata=AUTH, timeout=10)
        wait_until(lambda: _sample(running.metrics_url, "heddle_frozen_tasks") == 2, "two frozen runs")
        assert _sample(running.metrics_url, "heddle_scheduler_actions_total", action="freeze") == 2
        admin.SetPowerBudget(pb.PowerBudget(box_w=0.0), metadata=AUTH, timeout=10)
        stage_fns.open_gate()
        assert [c.result().outputs[0].name for c in calls] == ["y", "y", "y"]
