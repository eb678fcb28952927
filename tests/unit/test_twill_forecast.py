"""twill's forecast (scheduler/twill_forecast.py): the keys it computes with each model's estimates
read once, and the order it sorts from the last forecast's, are those of TwillPolicy.key and a sort
from scratch, at every step of a run with deep queues on a platform of several devices."""

from __future__ import annotations

import bisect
import random
from fractions import Fraction

import pytest

from heddle.scheduler.core import Core
from heddle.scheduler.plan import Plan
from heddle.scheduler.sim.driver import Driver
from heddle.scheduler.sim.platforms import MIXED, ORIN_NX
from heddle.scheduler.sim.run_times import NoisyTable
from heddle.scheduler.sim.simulator import scenario_setup
from heddle.scheduler.state import Request, RunState
from heddle.scheduler.twill import TwillPolicy
from heddle.scheduler.twill_groups import GroupedQueue


def _from_scratch(policy: TwillPolicy, core: Core, device: str, now: float) -> tuple[list, list, list]:
    """Every READY run's key, sorted; prefix sums of their work exactly (Fraction) rounded once."""
    ready = [q for q in core.queued(device) if q.state is RunState.READY]
    entries = sorted(zip((TwillPolicy.key(policy, q, now, core) for q in ready),
                         core.queued_work_s(device, ready), ready, strict=True))
    total, prefix = Fraction(0), [0.0]
    for _, est, _ in entries:
        total += Fraction(est)
        prefix.append(float(total))
    return [k for k, _, _ in entries], prefix, [q for _, _, q in entries]


def _check_grouped(policy: TwillPolicy, core: Core, device: str, now: float, rng: random.Random,
                   seen: dict[str, int]) -> None:
    """The grouped reading (scheduler/twill_groups.py) against the sort from scratch: its order,
    its places and work before each run, and the runs and work before keys that fall anywhere
    (each queued run's own, a feasible key between two, after everything), bit for bit."""
    keys, prefix, runs = _from_scratch(policy, core, device, now)
    grouped = GroupedQueue(core, device, now)  # at every length (twill reads short queues by forecast)
    seen["hopeless"] += sum(len(part.hopeless) for part in grouped.parts)
    seen["frozen"] += sum(len(part.group.frozen) for part in grouped.parts)
    assert list(grouped.order()) == [(i, run, prefix[i]) for i, run in enumerate(runs)]
    assert list(policy.queue_order(core, device, now)) == [(i, run, prefix[i]) for i, run in enumerate(runs)]
    heads = policy.queued_heads(device, core, now)
    assert heads is None or heads == runs[:1]
    assert grouped.first() is (runs[0] if runs else None)
    probes = list(keys) + [(1, -10, 2, 0.0, 0, 0, 0), (0, -1e9, 0.0, 0, 0, 0)]
    probes += [(0, rng.uniform(-5, 5), rng.uniform(0, 10), 0, 0, 0) for _ in range(3)]
    probes += [(1, -rng.choice((9, 3, 1)), rng.choice((0, 1)), rng.uniform(0, 10), 0, 0, 0) for _ in range(3)]
    for key in probes:
        ahead = bisect.bisect_left(keys, key)
        assert grouped.before(key) == (ahead, prefix[ahead]), key


@pytest.mark.slow
def test_forecast_is_the_sorted_ranking_at_every_step() -> None:
    setup = scenario_setup(ORIN_NX, MIXED)
    names = [n for n in sorted(setup.pipelines) if "llm" not in n and "assistant" not in n]
    policy = TwillPolicy()
    core = Core(ORIN_NX.devices, setup.models, policy, setup.profiles)
    rng = random.Random(3)
    made = 0
    checked = {"steps": 0, "deepest": 0, "hopeless": 0, "frozen": 0}
    probe_rng = random.Random(4)

    def make(_: None, now: float) -> Request:
        nonlocal made
        made += 1
        deadline = None if rng.random() < 0.2 else now + rng.uniform(0.05, 3.0)  # some turn hopeless
        return Request(f"r{made}", setup.pipelines[rng.choice(names)], rng.choice((9, 3, 1)), now, deadline)

    driver = Driver(core, NoisyTable(setup.truth, setup.cv, 3), make_request=make)

    def check(now: float, plan: Plan) -> None:
        for device in core.devices:
            assert policy.forecast(core, device, now) == _from_scratch(policy, core, device, now)
            _check_grouped(policy, core, device, now, probe_rng, checked)
            checked["deepest"] = max(checked["deepest"], len(core.queued(device)))
        checked["steps"] += 1
        if made < 240:
            for _ in range(3):
                driver.arrive(now + rng.uniform(0.0, 0.01), None)

    driver.after_step = check
    driver.arrive(0.0, None)
    driver.run()
    assert checked["steps"] > 300 and checked["deepest"] > 100  # deep queues were compared
    assert checked["hopeless"] > 0 and checked["frozen"] > 0  # and runs out of the feasible order
