"""The core's deadlines: any float it is handed leaves shedding working, and a finished request
leaves every core structure at once, whatever its deadline; its id is free again once its last
running stage returns."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sched_fixtures import chain, devices, standard_models, validated
from test_core import drive

from heddle.scheduler import Core, Outcome, Request
from heddle.scheduler.deadlines import DeadlineHeap, usable_deadline
from heddle.scheduler.policies import POLICIES

EMPTY = {"requests": 0, "deadlines": 0, "deadline_entries": 0, "overdue": 0, "orphans": 0, "orphan_ids": 0,
         "riders": 0, "queued": 0, "running": 0, "unreported": 0, "frozen": 0}

# Every kind of float a driver could hand the core as an absolute deadline.
any_deadline = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [math.nan, -math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, 0.0, -0.0, 2.0**64])


@pytest.mark.parametrize("policy", sorted(POLICIES))
@settings(max_examples=25, deadline=None)
@given(junk=st.lists(any_deadline, max_size=8))
def test_shedding_works_after_any_deadline_floats(policy: str, junk: list[float | None]):
    """Requests with arbitrary float deadlines (NaN, inf, huge, negative) each end exactly once
    (NaN ones FAILED at once), and a later request whose deadline passes while it waits behind
    another is still shed, never dispatched; the core then holds nothing."""
    core = Core(devices(1), standard_models(), policy)
    p = validated(chain("c", ["m", "m"]))
    arrivals = [(0.0, Request(f"junk{i}", p, 1, 0.0, d)) for i, d in enumerate(junk)]
    # Junk runs at most 16 s of stages on the one device; by t=100 it is idle again.
    arrivals += [(100.0, Request("blocker", p, 1, 100.0)),
                 (100.0, Request("victim", p, 1, 100.0, 100.5))]
    log, finished = drive(core, arrivals)
    assert set(finished) == {r.id for _, r in arrivals}, "a request never ended"
    assert finished["victim"][0] is Outcome.DEADLINE_EXCEEDED
    assert "victim" not in {d.request_id for _, d in log}
    for i, d in enumerate(junk):
        if d is not None and math.isnan(d):
            assert finished[f"junk{i}"][0] is Outcome.FAILED
            assert f"junk{i}" not in {d.request_id for _, d in log}
    for rid in finished:
        core.forget(rid)
    assert core.footprint() == EMPTY


def test_finished_request_leaves_the_core_at_once():
    """A request that ends long before its deadline is in no core structure once reported and
    read, though its deadline is still to come; one still in flight stays tracked."""
    core = Core(devices(1), standard_models(), "edf")
    p = validated(chain("c", ["m"]))
    big_id = "x" * 100_000
    core.submit(Request(big_id, p, 1, 0.0, 1e9), 0.0)
    core.submit(Request("other", p, 1, 0.0, 2e9), 0.0)
    [d] = core.schedule(0.0).dispatches
    core.on_stage_done(d.request_id, d.stage, 1.0)
    assert [f.request_id for f in core.schedule(1.0).finished] == [big_id]
    core.forget(big_id)
    held = core.footprint()
    assert held["requests"] == 1 and held["deadlines"] == 1 and held["running"] == 1
    assert core.request(big_id) is None
    core.on_stage_done("other", "s0", 2.0)
    core.schedule(2.0)
    core.forget("other")
    assert core.footprint() == EMPTY


def test_an_id_is_taken_until_its_ended_requests_stage_returns():
    """A request cancelled while its stage runs keeps its id taken until the stage returns: a new
    request reusing it is refused, else the old stage's completion would be taken for the new
    one's (runs are found by id and stage) and its slot never freed."""
    core = Core(devices(2), standard_models(), "fcfs")
    p = validated(chain("c", ["m"]))
    core.submit(Request("same", p, 1, 0.0), 0.0)
    [d] = core.schedule(0.0).dispatches
    assert core.cancel("same", 0.5)
    core.schedule(0.5)
    core.forget("same")
    with pytest.raises(ValueError, match="'same' is already in flight"):
        core.submit(Request("same", p, 1, 1.0), 1.0)
    core.on_stage_done("same", d.stage, 2.0)
    core.submit(Request("same", p, 1, 2.0), 2.0)
    [d2] = core.schedule(2.0).dispatches
    core.on_stage_done("same", d2.stage, 3.0)
    assert [f.outcome for f in core.schedule(3.0).finished] == [Outcome.OK]
    core.forget("same")
    assert core.footprint() == EMPTY


def test_heap_stays_within_twice_the_live_requests():
    """Discarding leaves stale entries that are compacted once they outnumber the live ones."""
    p = validated(chain("c", ["m"]))
    heap = DeadlineHeap()
    requests = [Request(f"r{i}", p, 1, 0.0, float(1000 - i)) for i in range(100)]
    for seq, r in enumerate(requests, 1):
        r.seq = seq
        heap.push(r)
    for r in requests[:90]:
        heap.discard(r)
        assert heap.num_entries <= 2 * len(heap) or heap.num_entries == 0
    assert len(heap) == 10
    assert [r.id for r in heap.pop_due(1000.0)] == [f"r{i}" for i in range(99, 89, -1)]
    assert heap.num_entries == 0 and len(heap) == 0


def test_heap_empties_when_its_last_live_request_is_popped():
    """A stale entry left by a discard goes when the live ones are popped (found by hypothesis:
    it outlived every request until its own deadline passed)."""
    p = validated(chain("c", ["m"]))
    heap = DeadlineHeap()
    requests = [Request(f"r{i}", p, 1, 0.0, float(i)) for i in (1, 2, 3)]
    for seq, r in enumerate(requests, 1):
        r.seq = seq
        heap.push(r)
    heap.discard(requests[2])
    assert heap.num_entries == 3  # one stale of three: not yet worth a rebuild
    assert [r.id for r in heap.pop_due(2.5)] == ["r1", "r2"]
    assert heap.num_entries == 0 and len(heap) == 0


@settings(max_examples=60, deadline=None)
@given(deadlines=st.lists(st.integers(0, 20), min_size=0, max_size=40),
       discarded=st.sets(st.integers(0, 39)), accepted=st.sets(st.integers(0, 39)))
def test_first_is_the_earliest_accepted_live_deadline(deadlines, discarded, accepted):
    """first(accept) walks the heap in deadline order, past stale entries and refused requests,
    to the deadline a scan of the live requests finds (ties and compactions included)."""
    p = validated(chain("c", ["m"]))
    heap = DeadlineHeap()
    requests = [Request(f"r{i}", p, 1, 0.0, float(d)) for i, d in enumerate(deadlines)]
    for seq, r in enumerate(requests, 1):
        r.seq = seq
        heap.push(r)
    live = [r for i, r in enumerate(requests) if i not in discarded]
    for i in sorted(discarded):
        if i < len(requests):
            heap.discard(requests[i])
    ids = {f"r{i}" for i in accepted}
    want = min((r.deadline_s for r in live if r.id in ids), default=None)
    assert heap.first(lambda r: r.id in ids) == want


def test_usable_deadline():
    """+inf means none, NaN is refused, every other float is kept as it is."""
    assert usable_deadline(math.inf) is None and usable_deadline(None) is None
    assert usable_deadline(-math.inf) == -math.inf and usable_deadline(1e308) == 1e308
    with pytest.raises(ValueError, match="NaN"):
        usable_deadline(math.nan)
