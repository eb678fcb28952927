"""twill's forecast (scheduler/twill_forecast.py): the keys it computes with each model's estimates
read once, and the order it sorts from the last forecast's, are those of TwillPolicy.key and a sort
from scratch, at every step of a run with deep queues on a platform of several devices."""

from __future__ import annotations

import random

import pytest

from heddle.scheduler.core import Core
from heddle.scheduler.plan import Plan
from heddle.scheduler.sim.driver import Driver
from heddle.scheduler.sim.platforms import MIXED, ORIN_NX
from heddle.scheduler.sim.run_times import NoisyTable
from heddle.scheduler.sim.simulator import scenario_setup
from heddle.scheduler.state import Request, RunState
from heddle.scheduler.twill import TwillPolicy


def _from_scratch(policy: TwillPolicy, core: Core, device: str, now: float) -> tuple[list, list, list]:
    ready = [q for q in core.queued(device) if q.state is RunState.READY]
    entries = sorted(zip((TwillPolicy.key(policy, q, now, core) for q in ready),
                         core.queued_work_s(device, ready), ready, strict=True))
    prefix = [0.0]
    for _, est, _ in entries:
        prefix.append(prefix[-1] + est)
    return [k for k, _, _ in entries], prefix, [q for _, _, q in entries]


@pytest.mark.slow
def test_forecast_is_the_sorted_ranking_at_every_step() -> None:
    setup = scenario_setup(ORIN_NX, MIXED)
    names = [n for n in sorted(setup.pipelines) if "llm" not in n and "assistant" not in n]
    policy = TwillPolicy()
    core = Core(ORIN_NX.devices, setup.models, policy, setup.profiles)
    rng = random.Random(3)
    made = 0
    checked = {"steps": 0, "deepest": 0}

    def make(_: None, now: float) -> Request:
        nonlocal made
        made += 1
        deadline = None if rng.random() < 0.2 else now + rng.uniform(0.05, 3.0)  # some turn hopeless
        return Request(f"r{made}", setup.pipelines[rng.choice(names)], rng.choice((9, 3, 1)), now, deadline)

    driver = Driver(core, NoisyTable(setup.truth, setup.cv, 3), make_request=make)

    def check(now: float, plan: Plan) -> None:
        for device in core.devices:
            assert policy.forecast(core, device, now) == _from_scratch(policy, core, device, now)
            checked["deepest"] = max(checked["deepest"], len(core.queued(device)))
        checked["steps"] += 1
        if made < 240:
            for _ in range(3):
                driver.arrive(now + rng.uniform(0.0, 0.01), None)

    driver.after_step = check
    driver.arrive(0.0, None)
    driver.run()
    assert checked["steps"] > 300 and checked["deepest"] > 100  # deep queues were compared
