"""The scheduler core, driven with a fake clock: ordering, parallel branches, failure, expiry."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sched_fixtures import chain, devices, fork_join, model, standard_models, validated

from heddle.scheduler import Core, Outcome, Request, RunState
from heddle.scheduler.sim.driver import Driver, TimedBy


def make_request(rid, pipeline, now, priority=1, deadline_s=None):
    return Request(rid, pipeline, priority, now, deadline_s)


class _Failing(TimedBy):
    """Every run takes run_time_s; the (request, stage) runs in `fail` end with an error."""

    def __init__(self, run_time_s: float, fail) -> None:
        super().__init__(lambda model, device: run_time_s)
        self.fail = set(fail)

    def finish(self, run, now: float) -> str:
        return "boom" if (run.request_id, run.stage) in self.fail else ""


def drive(core, arrivals, run_time_s=1.0, fail=()):
    """Virtual-time driver: each dispatch takes run_time_s; returns (dispatch log, finished)."""
    driver = Driver(core, _Failing(run_time_s, fail), forget=False, log_runs=True)
    for t, req in arrivals:
        driver.arrive(t, req)
    driver.run()
    return [(start, d) for start, _, d in driver.runs], driver.finished


def test_branches_run_in_parallel_on_two_devices():
    """The two middle stages of a fork/join start at the same time on different devices."""
    core = Core(devices(2), standard_models(), "fcfs")
    log, finished = drive(core, [(0.0, make_request("r", validated(fork_join()), 0.0))])
    starts = {d.stage: (t, d.device) for t, d in log}
    assert starts["b"][0] == starts["c"][0] == 1.0
    assert starts["b"][1] != starts["c"][1]
    assert finished["r"] == (Outcome.OK, 3.0)


def test_priority_policy_runs_urgent_request_before_queued_low_ones():
    """Behind a queue of low-priority requests on one device, a high one starts next."""
    core = Core(devices(1), standard_models(), "priority")
    p = validated(chain("c", ["m"]))
    arrivals = [(0.0, make_request(f"low{i}", p, 0.0, priority=1)) for i in range(5)]
    arrivals.append((0.5, make_request("high", p, 0.5, priority=3)))
    log, _ = drive(core, arrivals)
    order = [d.request_id for _, d in log]
    assert order[0] == "low0" and order[1] == "high"


def test_fcfs_policy_ignores_priority():
    """Under fcfs the urgent request waits its turn."""
    core = Core(devices(1), standard_models(), "fcfs")
    p = validated(chain("c", ["m"]))
    arrivals = [(0.0, make_request(f"low{i}", p, 0.0)) for i in range(3)]
    arrivals.append((0.5, make_request("high", p, 0.5, priority=3)))
    log, _ = drive(core, arrivals)
    assert [d.request_id for _, d in log][-1] == "high"


def test_failed_stage_fails_request_and_drops_its_rest():
    """A failing stage ends the request FAILED; downstream stages never dispatch."""
    core = Core(devices(1), standard_models(), "fcfs")
    log, finished = drive(core, [(0.0, make_request("r", validated(chain("c", ["m", "m"])), 0.0))],
                          fail={("r", "s0")})
    assert finished["r"][0] is Outcome.FAILED
    assert [d.stage for _, d in log] == ["s0"]
    assert core.request("r").runs["s1"].state is RunState.CANCELLED


def test_request_past_deadline_is_shed_before_it_starts():
    """Queued work whose deadline passes ends DEADLINE_EXCEEDED and is never dispatched."""
    core = Core(devices(1), standard_models(), "fcfs")
    p = validated(chain("c", ["m"]))
    log, finished = drive(core, [(0.0, make_request("a", p, 0.0)),
                                 (0.0, make_request("b", p, 0.0, deadline_s=0.5))])
    assert finished["b"][0] is Outcome.DEADLINE_EXCEEDED
    assert [d.request_id for _, d in log] == ["a"]


def test_cancel_drops_queued_stages_and_frees_nothing_twice():
    """Cancelling a queued request removes it; the running one still releases its slot."""
    core = Core(devices(1), standard_models(), "fcfs")
    p = validated(chain("c", ["m"]))
    core.submit(make_request("a", p, 0.0), 0.0)
    core.submit(make_request("b", p, 0.0), 0.0)
    assert [d.request_id for d in core.schedule(0.0).dispatches] == ["a"]
    assert core.cancel("b", 0.1) and core.cancel("a", 0.1)
    assert {f.request_id for f in core.schedule(0.1).finished} == {"a", "b"}
    core.on_stage_done("a", "s0", 1.0)
    assert core.stats().running == {"cpu0": 0} and core.stats().queued == {"cpu0": 0}


def test_unhealthy_device_moves_queue_and_model_without_device_is_unavailable():
    """Work queued on a device taken out moves to a peer; with no peer the request fails cleanly."""
    core = Core(devices(2), {"m": model("m", devices=["cpu1"])}, "fcfs")
    p = validated(chain("c", ["m"]), {"m": model("m", devices=["cpu1"])})
    core.set_device_health("cpu1", False, 0.0)
    core.submit(make_request("r", p, 0.0), 0.0)
    plan = core.schedule(0.0)
    assert plan.finished[0].outcome is Outcome.UNAVAILABLE


@st.composite
def workloads(draw):
    n_dev = draw(st.integers(1, 3))
    slots = draw(st.integers(1, 2))
    pipes = [validated(chain("c1", ["m"])), validated(chain("c3", ["m", "m", "m"])), validated(fork_join())]
    reqs = []
    for i in range(draw(st.integers(1, 12))):
        t = draw(st.floats(0, 5, allow_nan=False))
        deadline = draw(st.one_of(st.none(), st.floats(0.1, 10)))
        reqs.append((t, make_request(f"r{i}", draw(st.sampled_from(pipes)), t,
                                     draw(st.integers(1, 4)), None if deadline is None else t + deadline)))
    return n_dev, slots, reqs, draw(st.sampled_from(["fcfs", "priority"]))


@settings(max_examples=60, deadline=None)
@given(workloads())
def test_invariants_hold_for_random_workloads(w):
    """Every request ends exactly once; no stage starts before its inputs exist; slots are respected."""
    n_dev, slots, reqs, policy = w
    core = Core(devices(n_dev, slots), standard_models(), policy)
    log, finished = drive(core, reqs)
    assert set(finished) == {r.id for _, r in reqs}
    for _, req in reqs:
        for run in req.runs.values():
            for dep in req.pipeline.depends_on[run.stage]:
                if run.started_s is not None:
                    assert req.runs[dep].finished_s is not None
                    assert req.runs[dep].finished_s <= run.started_s
    busy = {}
    for t, d in log:
        busy.setdefault(d.device, []).append(t)
    for starts in busy.values():
        for t in starts:
            assert sum(1 for s in starts if s <= t < s + 1.0) <= slots
    assert core.stats().active_requests == 0


@settings(max_examples=25, deadline=None)
@given(workloads())
def test_plan_is_a_deterministic_function_of_the_state(w):
    """Running the same workload twice gives the same dispatch log."""
    n_dev, slots, reqs, policy = w

    def run_once():
        fresh = [(t, make_request(r.id, r.pipeline, t, r.priority, r.deadline_s)) for t, r in reqs]
        return drive(Core(devices(n_dev, slots), standard_models(), policy), fresh)[0]

    assert run_once() == run_once()


def test_losing_the_only_device_ends_its_queued_requests_once() -> None:
    """The only device of a model goes away with requests queued on it: each ends UNAVAILABLE once
    (the one running goes on), and nothing is left queued or counted active twice."""
    only = {"m": model("m", devices=["cpu0"])}
    core = Core(devices(1), only, "fcfs")
    p = validated(chain("c", ["m"]), only)
    for rid in ("a", "b", "c"):
        core.submit(make_request(rid, p, 0.0), 0.0)
    assert [d.request_id for d in core.schedule(0.0).dispatches] == ["a"]
    core.set_device_health("cpu0", False, 0.1)
    ended = core.schedule(0.1).finished
    assert sorted((f.request_id, f.outcome) for f in ended) == [("b", Outcome.UNAVAILABLE), ("c", Outcome.UNAVAILABLE)]
    assert core.stats().queued == {"cpu0": 0}
    core.on_stage_done("a", "s0", 1.0)
    assert [f.request_id for f in core.schedule(1.0).finished] == ["a"]
    assert core.stats().running == {"cpu0": 0}



def test_losing_the_only_device_with_two_runs_of_a_request_queued_ends_it_once() -> None:
    """A fork's two branches wait in the lost device's queue: their request ends UNAVAILABLE once."""
    only = {"m": model("m", devices=["cpu0"]), "join": model("join", inputs=("x1", "x2"), devices=["cpu0"])}
    core = Core(devices(1), only, "priority")
    core.submit(make_request("r", validated(fork_join(), only), 0.0, priority=1), 0.0)
    assert [d.stage for d in core.schedule(0.0).dispatches] == ["a"]
    core.submit(make_request("q", validated(chain("c", ["m"]), only), 0.5, priority=4), 0.5)
    core.on_stage_done("r", "a", 1.0)  # b and c are ready, but the urgent q takes the one slot
    assert [d.request_id for d in core.schedule(1.0).dispatches] == ["q"]
    assert core.stats().queued == {"cpu0": 2}
    core.set_device_health("cpu0", False, 1.5)
    assert [(f.request_id, f.outcome) for f in core.schedule(1.5).finished] == [("r", Outcome.UNAVAILABLE)]
    core.on_stage_done("q", "s0", 2.0)
    assert [(f.request_id, f.outcome) for f in core.schedule(2.0).finished] == [("q", Outcome.OK)]
    assert core.stats().running == {"cpu0": 0} and core.stats().queued == {"cpu0": 0}
