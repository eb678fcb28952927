"""Overload admission against a real gateway (on by default): lower classes are refused
RESOURCE_EXHAUSTED with `retry-after-ms` when their deadline cannot be met at the current load or
their share of the in-flight bound is taken, while the top class is still admitted and served."""

from __future__ import annotations

import concurrent.futures

import grpc
import pytest
import stage_fns
from server_fixtures import chain, py_model, scrape_metrics, serve_document, wait_until

from heddle.clients.client import HeddleClient, HeddleError
from heddle.server.config.builder import document, python_device

TOP = 4

def gated(admission: dict[str, object] | None = None) -> dict[str, object]:
    """A gate on its own one-slot device, a fast chain beside it; [admission] as given."""
    return document(admission=admission, devices=[python_device("slow"), python_device("py0", slots=2)],
                    models=[py_model("gate", "stage_fns:gate", devices=["slow"]),
                            py_model("tail", "stage_fns:tail", devices=["py0"])],
                    pipelines=[chain("held", ["gate"]), chain("fast", ["tail"])])


def queued_on(client: HeddleClient, device: str) -> int:
    return next(d.queued for d in client.list_devices() if d.id == device)


def refusal(future: concurrent.futures.Future) -> HeddleError:
    error = future.exception()
    assert isinstance(error, HeddleError), f"expected a refusal, got {error or future.result()}"
    return error


def burst(pool, client: HeddleClient, priority: int, tags: range) -> list[concurrent.futures.Future]:
    return [pool.submit(client.infer, "held", {"x": stage_fns.tagged(t)}, priority=priority) for t in tags]


@pytest.mark.slow
def test_lower_classes_refused_under_a_burst_while_the_top_class_is_served():
    """Bound 8 on 4 levels: of a burst of 10 priority-1 requests 2 are admitted (held), 8 refused;
    of 10 priority-2 ones then 2 more, 8 refused; every refusal is RESOURCE_EXHAUSTED with a
    positive retry-after-ms. The top class is still admitted and served; the held ones end OK
(the in-flight gauge shows the 4 held, then 0)."""
    stage_fns.reset()
    with serve_document(gated({"max_in_flight": 8})) as running, running.client() as client, \
            concurrent.futures.ThreadPoolExecutor(24) as pool:
        try:
            low = burst(pool, client, 1, range(1, 11))
            wait_until(lambda: sum(f.done() for f in low) == 8, "8 of 10 priority-1 requests to be refused")
            mid = burst(pool, client, 2, range(11, 21))
            wait_until(lambda: sum(f.done() for f in mid) == 8, "8 of 10 priority-2 requests to be refused")
            top = [client.infer("fast", {"x": stage_fns.tagged(100 + i)}, priority=TOP) for i in range(3)]
            held = scrape_metrics(running.metrics_url)[("heddle_requests_in_flight", frozenset())]
        finally:
            stage_fns.open_gate()
        admitted = [f.result() for f in low + mid if f.exception() is None]
        refused = [refusal(f) for f in low + mid if f.exception() is not None]
        metrics = scrape_metrics(running.metrics_url)
    assert held == 4 and metrics[("heddle_requests_in_flight", frozenset())] == 0
    assert len(admitted) == 4 and all(r.priority in (1, 2) for r in admitted)
    assert len(refused) == 16
    for error in refused:
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_in_flight 8" in error.details()
        assert error.retry_after_s is not None and error.retry_after_s > 0
    assert [r.priority for r in top] == [TOP] * 3
    for cls in ("1", "2"):
        key = ("heddle_admission_rejected_total", frozenset({("reason", "queue_full"), ("priority_class", cls)}))
        assert metrics[key] == 8


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.slow
def test_default_refuses_a_lower_class_request_that_would_be_late(enabled: bool):
    """With no [power] or [admission] table, a priority-2 request whose 30 ms deadline the queue
    ahead (5 runs of 10 ms estimated) makes unreachable is refused at once, RESOURCE_EXHAUSTED
    with its retry hint; `[admission] enabled = false` switches that off, and it is shed at its
    deadline instead (DEADLINE_EXCEEDED, no hint), as before."""
    stage_fns.reset()
    with serve_document(gated(None if enabled else {"enabled": False})) as running, running.client() as client, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        try:
            held = burst(pool, client, TOP, range(1, 2))
            assert stage_fns.wait_for_call("gate", 1), "the first request never started"
            queued = burst(pool, client, 3, range(2, 7))
            wait_until(lambda: queued_on(client, "slow") == 5, "five requests to queue")
            with pytest.raises(HeddleError) as err:
                client.infer("held", {"x": stage_fns.tagged(50)}, priority=2, deadline_ms=30)
        finally:
            stage_fns.open_gate()
        assert all(f.result().priority >= 3 for f in held + queued)
    if enabled:
        assert err.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        assert "predicted latency" in err.value.details() and err.value.retry_after_s > 0
    else:
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()
        assert err.value.retry_after_s is None


@pytest.mark.slow
def test_one_stalled_run_does_not_lock_a_pipeline_out():
    """A stage that stalled once (0.3 s) leaves an estimate over a 100 ms deadline; requests with
    that deadline are still admitted, one at a time, and answered OK in time, both the top class
    and a lower one (before: every later request refused DEADLINE_EXCEEDED, for good)."""
    stage_fns.reset()
    config = document(devices=[python_device("py0")], models=[py_model("stall", "stage_fns:stall_on_1")],
                      pipelines=[chain("stalls", ["stall"])])
    with serve_document(config) as running, running.client() as client:
        client.infer("stalls", {"x": stage_fns.tagged(1)}, priority=TOP)
        results = [client.infer("stalls", {"x": stage_fns.tagged(10 + i)}, priority=p, deadline_ms=100)
                   for i, p in enumerate((TOP, 2, TOP, 2))]
    assert [r.deadline_missed for r in results] == [False] * 4
