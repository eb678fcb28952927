"""The load generator and scenarios: arrival processes, scenario files, and runs against a real gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import stage_fns
from server_fixtures import RunningServer, chain, py_model, serve_document

from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.loadgen import LiveCounts, arrival_times, build_app_inputs, run_load
from heddle.clients.scenarios import (
    SCENARIOS,
    App,
    Scenario,
    ScenarioError,
    load_scenario,
    parse_scenario,
)
from heddle.server.config.builder import document, python_device

# --- arrivals -------------------------------------------------------------------------------

class TestArrivals:
    def test_poisson_is_seeded_sorted_and_inside_the_duration(self):
        """Poisson times repeat for a seed, are sorted, lie in [0, duration) and average the rate."""
        app = App("a", "p", "poisson", rate_hz=200.0)
        times = arrival_times(app, 10.0, np.random.default_rng(3))
        again = arrival_times(app, 10.0, np.random.default_rng(3))
        np.testing.assert_array_equal(times, again)
        assert np.all(np.diff(times) >= 0) and times[0] >= 0 and times[-1] < 10.0
        # 2000 expected, standard deviation ~45: 5 sigma is a bug, not bad luck.
        assert abs(times.size - 2000) < 225

    def test_poisson_reaches_the_end_of_a_long_run(self):
        """A run far longer than the first batch of gaps still gets arrivals up to its end."""
        times = arrival_times(App("a", "p", "poisson", rate_hz=1.0), 400.0, np.random.default_rng(0))
        assert times[-1] > 390.0

    def test_periodic_without_jitter_is_evenly_spaced(self):
        """One stream at 20 Hz for 1 s gives 20 frames exactly 50 ms apart."""
        times = arrival_times(App("a", "p", "periodic", rate_hz=20.0), 1.0, np.random.default_rng(1))
        assert times.size == 20
        np.testing.assert_allclose(np.diff(times), 0.05)

    def test_periodic_streams_and_jitter(self):
        """Three jittered streams give three frames per period, each within jitter of its grid."""
        app = App("a", "p", "periodic", rate_hz=10.0, streams=3, jitter_ms=4.0)
        times = arrival_times(app, 2.0, np.random.default_rng(2))
        assert abs(times.size - 60) <= 3  # 3 x 20, give or take frames jittered across an edge
        assert np.all((times >= 0) & (times < 2.0)) and np.all(np.diff(times) >= 0)

    def test_bursts_arrive_together(self):
        """Bursts of 4 at 2 bursts/s: groups of 4 equal times, groups 0.5 s apart."""
        app = App("a", "p", "burst", rate_hz=2.0, burst_size=4)
        times = arrival_times(app, 3.0, np.random.default_rng(4))
        groups = times.reshape(-1, 4)
        assert np.all(groups == groups[:, :1])
        np.testing.assert_allclose(np.diff(groups[:, 0]), 0.5)

    def test_closed_loop_has_no_arrival_times(self):
        """Asking for a closed-loop app's arrival times is a ValueError."""
        with pytest.raises(ValueError, match="closed"):
            arrival_times(App("a", "p", "closed"), 1.0, np.random.default_rng(0))


# --- scenarios ------------------------------------------------------------------------------

class TestScenarios:
    def test_every_shipped_scenario_parses(self):
        """Each shipped scenario loads by name with unique apps and a description."""
        for name in SCENARIOS:
            scenario = load_scenario(name)
            assert scenario.name == name and scenario.apps and scenario.description
            assert {a.pipeline for a in scenario.apps} <= {"classify", "multihead", "text_classify", "chat"}

    def test_llm_apps_stream_generations_on_chat(self):
        """Every shipped app named for an LLM generates on `chat`, streamed, with a token budget."""
        llm = [a for name in SCENARIOS for a in load_scenario(name).apps if "LLM" in a.name or "chat" in a.name]
        assert len(llm) == 4
        assert all(a.pipeline == "chat" and a.stream and a.max_new_tokens > 0 for a in llm)

    def test_no_name_means_the_default_mix(self):
        """load_scenario(None) is the default scenario, which mixes open and closed loops."""
        scenario = load_scenario(None)
        assert scenario.name == "default"
        assert {a.arrival for a in scenario.apps} == {"poisson", "periodic", "burst", "closed"}

    def test_a_toml_file_loads(self, tmp_path: Path):
        """A scenario file is read by path; integer rates become floats."""
        path = tmp_path / "mine.toml"
        path.write_text('[[apps]]\nname = "x"\npipeline = "echo"\narrival = "poisson"\nrate_hz = 5\n')
        scenario = load_scenario(str(path))
        assert scenario.name == "mine" and scenario.apps == (App("x", "echo", "poisson", rate_hz=5.0),)
        path.write_text(path.read_text() + 'stream = true\nmax_new_tokens = 8\n')
        assert load_scenario(str(path)).apps == (
            App("x", "echo", "poisson", rate_hz=5.0, stream=True, max_new_tokens=8),)

    @pytest.mark.parametrize(("body", "message"), [
        ('arrival = "poisson"\nrate_hz = 1\nfps = 3', "unknown field"),
        ('arrival = "poisson"', "rate_hz > 0"),
        ('arrival = "sometimes"\nrate_hz = 1', "not one of"),
        ('arrival = "closed"\nconcurrency = 1.5', "concurrency must be an integer"),
        ('arrival = "poisson"\nrate_hz = 1\ndeadline_ms = 0', "deadline_ms must be positive"),
        ('arrival = "periodic"\nrate_hz = "fast"', "rate_hz must be a number"),
        ('arrival = "closed"\nstream = 1', "stream must be true or false"),
        ('arrival = "closed"\nmax_new_tokens = 2.5', "max_new_tokens must be an integer"),
        ('arrival = "closed"\nmax_new_tokens = -1', "max_new_tokens must be >= 0"),
    ])
    def test_bad_apps_are_refused_with_the_reason(self, body: str, message: str):
        """A malformed app raises ScenarioError naming what is wrong."""
        with pytest.raises(ScenarioError, match=message):
            parse_scenario(f'[[apps]]\nname = "x"\npipeline = "p"\n{body}\n')

    def test_duplicate_app_names_and_unknown_names_are_refused(self):
        """Two apps with one name, and an unknown scenario name, are ScenarioErrors."""
        app = '[[apps]]\nname = "x"\npipeline = "p"\narrival = "closed"\n'
        with pytest.raises(ScenarioError, match="unique"):
            parse_scenario(app + app)
        with pytest.raises(ScenarioError, match="unknown scenario"):
            load_scenario("no_such_scenario")

    def test_scaling_changes_open_loop_rates_only(self):
        """scaled(2) doubles open-loop rates and leaves closed loops alone."""
        scenario = Scenario("s", (App("o", "p", "poisson", rate_hz=3.0), App("c", "p", "closed")))
        doubled = scenario.scaled(2.0)
        assert doubled.apps[0].rate_hz == 6.0 and doubled.apps[1] == scenario.apps[1]


# --- runs against a real gateway ------------------------------------------------------------

CONFIG = document(devices=[python_device("py0", slots=2), python_device("pygate")],
                  models=[py_model("tail", "stage_fns:tail", devices=["py0"]),
                          py_model("gate", "stage_fns:gate", devices=["pygate"])],
                  pipelines=[chain("echo", ["tail"]), chain("gated", ["gate"])])


@pytest.fixture(scope="module")
def gateway() -> RunningServer:
    with serve_document(CONFIG) as running:
        yield running


@pytest.fixture(autouse=True)
def _reset_stage_fns():
    stage_fns.reset()
    yield
    stage_fns.open_gate()  # never leave a stage holding a slot for the next test


async def _run(target: str, scenario: Scenario, duration_s: float, **kwargs):
    async with AsyncHeddleClient(target) as client:
        inputs = build_app_inputs(scenario.apps, await client.list_pipelines(), np.random.default_rng(0))
        return await run_load(client, scenario, inputs, duration_s=duration_s, **kwargs)


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.slow
def test_open_and_closed_loops_record_every_request(gateway: RunningServer):
    """Open-loop apps send exactly their arrivals; a closed loop never has more than its concurrency."""
    poisson = App("poisson app", "echo", "poisson", priority=3, deadline_ms=60_000.0, rate_hz=40.0)
    closed = App("closed app", "echo", "closed", priority=1, concurrency=2)
    result = asyncio.run(_run(gateway.target, Scenario("s", (poisson, closed)), 1.0, seed=7))
    expected = arrival_times(poisson, 1.0, np.random.default_rng(7))
    sent = [r for r in result.records if r.app == "poisson app"]
    assert len(sent) == expected.size
    assert sorted(r.scheduled_s for r in sent) == pytest.approx(expected.tolist())
    assert all(r.status == "OK" and r.server_total_ms is not None for r in result.records)
    assert len({r.request_id for r in result.records}) == len(result.records)
    looped = [r for r in result.records if r.app == "closed app"]
    assert looped and _max_overlap([(r.sent_s, r.sent_s + r.latency_ms / 1e3) for r in looped]) <= 2
    assert len({r.seq for r in looped}) == len(looped)
    assert result.window_s == 1.0 and not result.interrupted


def test_stop_keeps_partial_results_and_drains_replies(gateway: RunningServer):
    """Stop during a held request: sending ends, and the reply that comes during the drain is kept."""
    held = App("held", "gated", "closed")

    async def scenario():
        stop = asyncio.Event()
        async with AsyncHeddleClient(gateway.target) as client:
            inputs = build_app_inputs([held], await client.list_pipelines(), np.random.default_rng(0))
            task = asyncio.create_task(run_load(client, Scenario("s", (held,)), inputs, duration_s=60.0,
                                                stop=stop, drain_s=30.0))
            tag = int(inputs["held"][0]["x"][0])
            assert await asyncio.to_thread(stage_fns.wait_for_call, "gate", tag)
            stop.set()
            stage_fns.open_gate()
            return await task

    result = asyncio.run(scenario())
    assert result.interrupted and result.window_s < 60.0
    assert [(r.status, r.client_cancelled) for r in result.records] == [("OK", False)]


def test_abort_cancels_requests_in_flight(gateway: RunningServer):
    """Stop and abort with a request held in the server: it is recorded CANCELLED by the client."""
    held = App("held", "gated", "closed")

    async def scenario():
        stop, abort, counts = asyncio.Event(), asyncio.Event(), LiveCounts()
        async with AsyncHeddleClient(gateway.target) as client:
            inputs = build_app_inputs([held], await client.list_pipelines(), np.random.default_rng(0))
            task = asyncio.create_task(run_load(client, Scenario("s", (held,)), inputs, duration_s=60.0,
                                                stop=stop, abort=abort, counts=counts))
            tag = int(inputs["held"][0]["x"][0])
            assert await asyncio.to_thread(stage_fns.wait_for_call, "gate", tag)
            stop.set()
            abort.set()
            return await task, counts

    result, counts = asyncio.run(scenario())
    assert [(r.status, r.client_cancelled) for r in result.records] == [("CANCELLED", True)]
    assert counts.in_flight == 0 and counts.sent == 1


def test_unknown_pipeline_is_refused_before_any_request(gateway: RunningServer):
    """An app naming a pipeline the server lacks fails build_app_inputs with the known names."""
    async def scenario():
        async with AsyncHeddleClient(gateway.target) as client:
            build_app_inputs([App("x", "nope", "closed")], await client.list_pipelines(),
                             np.random.default_rng(0))

    with pytest.raises(ValueError, match=r"'nope'.*'echo'"):
        asyncio.run(scenario())
