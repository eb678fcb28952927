"""The core's decisions, step by step, equal the ones recorded from the code before its data
structures were made faster (issue 13): seeded workloads under every policy, each plan hashed.

The fixture (data/core_decisions.json) holds, per workload and policy, the number of steps and
dispatches and a hash of every 100 plans (with the step's time), so a change says where the
sequences part. Record it again only for a change meant to alter decisions, and say so:
    .venv/bin/python tests/unit/test_core_decisions.py --record
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from heddle.scheduler.admission import Admission
from heddle.scheduler.core import Core
from heddle.scheduler.plan import Plan
from heddle.scheduler.policies import POLICIES, make_policy
from heddle.scheduler.power import PowerController, PowerSettings
from heddle.scheduler.profiles import ProfileTable
from heddle.scheduler.sim.driver import Driver, RunTimeModel
from heddle.scheduler.sim.plant import PowerPlant, device_power_models
from heddle.scheduler.sim.platforms import MIXED, ORIN_NX
from heddle.scheduler.sim.run_times import NoisyTable
from heddle.scheduler.sim.simulator import scenario_setup
from heddle.scheduler.state import Request, RunState

FIXTURE = Path(__file__).parent / "data" / "core_decisions.json"
CHUNK = 100
ALL_POLICIES = sorted(POLICIES)
_SETUP = scenario_setup(ORIN_NX, MIXED)  # pipelines and truth; profiles are per core (they learn)


def _arrivals(seed: int, burst_s: float, rate_hz: float) -> list[tuple[float, str, str, int, float | None]]:
    """Poisson arrivals over every mixed-scenario pipeline, faster than the platform serves them
    (so queues grow to hundreds of runs), priorities 9/3/1, deadlines from already hopeless to
    generous (a fifth without one): expiry, hopeless ordering and aging all happen."""
    rng = random.Random(seed)
    names = sorted(_SETUP.pipelines)
    weights = [0.2 if n == "assistant" else 1.0 for n in names]
    out, t = [], 0.0
    while t < burst_s:
        t += rng.expovariate(rate_hz)
        name = rng.choices(names, weights)[0]
        deadline = None if rng.random() < 0.2 else rng.choice((0.05, 0.5, 3.0, 20.0, 60.0)) * rng.uniform(0.5, 1.5)
        out.append((t, f"r{len(out)}", name, rng.choice((9, 3, 1)), deadline))
    return out


def _reference_next_deadline_s(core: Core) -> float | None:
    """next_deadline_s as first written: a scan of every request (the core's now walks a heap)."""
    return min((r.deadline_s for r in core.active_requests() if r.deadline_s is not None
                and any(run.state < RunState.RUNNING for run in r.runs.values())), default=None)


def _drive(core: Core, run_times: RunTimeModel, seed: int, flap: bool) -> dict[str, Any]:
    """Every arrival through `core`; each step's plan hashed with its time, and the deadline the
    driver would wake for checked against a plain scan after each event and each step."""
    def make(item: tuple[float, str, str, int, float | None], now: float) -> Request:
        _, rid, name, priority, deadline = item
        return Request(rid, _SETUP.pipelines[name], priority, now, None if deadline is None else now + deadline)

    digest, chunks, steps, dispatches = hashlib.sha256(), [], 0, 0
    flaps = [(0.8, "gpu0", False), (1.3, "gpu0", True), (1.6, "dla1", False), (2.4, "dla1", True)] if flap else []

    def before(now: float) -> None:
        if steps % 7 == 0:  # a scan per step would be most of this test's time
            assert core.next_deadline_s() == _reference_next_deadline_s(core)
        while flaps and flaps[0][0] <= now:  # a device lost and back: queues move, estimates drop
            _, device, healthy = flaps.pop(0)
            core.set_device_health(device, healthy, now)

    def after(now: float, plan: Plan) -> None:
        nonlocal digest, steps, dispatches
        if steps % 7 == 3:
            assert core.next_deadline_s() == _reference_next_deadline_s(core)
        digest.update(f"{now!r} {plan!r}\n".encode())
        steps += 1
        dispatches += len(plan.dispatches)
        if steps % CHUNK == 0:
            chunks.append(digest.hexdigest()[:16])
            digest = hashlib.sha256()

    driver = Driver(core, run_times, make_request=make, before_step=before, after_step=after)
    for item in _arrivals(seed, 2.0, 300.0):
        driver.arrive(item[0], item)
    driver.run()
    chunks.append(digest.hexdigest()[:16])
    return {"steps": steps, "dispatches": dispatches, "chunks": chunks}


def _fresh_profiles() -> ProfileTable:
    return scenario_setup(ORIN_NX, MIXED).profiles


def _plain(policy: str, options: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    def go() -> dict[str, Any]:
        core = Core(ORIN_NX.devices, _SETUP.models, make_policy(policy, **options), _fresh_profiles())
        return _drive(core, NoisyTable(_SETUP.truth, _SETUP.cv, 3), seed=3, flap=True)
    return go


def _powered(policy: str) -> Callable[[], dict[str, Any]]:
    """With the power controller and admission on a tight budget: levels, freezes, refusals."""
    def go() -> dict[str, Any]:
        core = Core(ORIN_NX.devices, _SETUP.models, make_policy(policy), _fresh_profiles())
        models, counts = device_power_models(ORIN_NX, _SETUP.truth)
        power = PowerController(PowerSettings(budget_w=12.0, period_s=0.1), models, counts, 9)
        core.attach_power(power, Admission(power, 9, queue_bound=64))
        plant = PowerPlant(ORIN_NX.devices, _SETUP.truth, _SETUP.cv, 5, period_s=0.1, horizon_s=2.5, feed_core=True)
        return _drive(core, plant, seed=5, flap=False)
    return go


WORKLOADS: dict[str, Callable[[str], Callable[[], dict[str, Any]]]] = {
    "deep": lambda p: _plain(p, {}),
    "deep_aging": lambda p: _plain(p, {"max_wait_s": 0.3}),
    "power": _powered,
}


def _recorded() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_decisions_equal_the_recorded_ones(workload, policy):
    """The same seeded workload makes the same plans, step by step, as the code that recorded them."""
    want = _recorded()[workload][policy]
    got = WORKLOADS[workload](policy)()
    pairs = zip(got["chunks"], want["chunks"], strict=False)  # where they part first; lengths next
    differ = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
    assert differ is None, f"plans differ from step {differ * CHUNK} on (steps {got['steps']} vs {want['steps']})"
    assert (got["steps"], got["dispatches"]) == (want["steps"], want["dispatches"])
    assert got["chunks"] == want["chunks"]


def test_the_workloads_reach_deep_queues():
    """The recorded workloads are worth comparing: hundreds of steps under every policy."""
    recorded = _recorded()
    for workload in WORKLOADS:
        assert sorted(recorded[workload]) == ALL_POLICIES
        assert all(r["dispatches"] > 300 for r in recorded[workload].values())


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    FIXTURE.parent.mkdir(exist_ok=True)
    doc = {w: {p: make(p)() for p in ALL_POLICIES} for w, make in WORKLOADS.items()}
    FIXTURE.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {FIXTURE}")
