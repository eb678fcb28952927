"""`heddle serve` shutdown: bounded by the grace period whatever stages do; late calls are UNAVAILABLE."""

from __future__ import annotations

import collections
import concurrent.futures
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
import stage_fns
from server_fixtures import ServerProcess, chain, py_model, wait_until

from heddle.clients.client import HeddleClient
from heddle.server.config.builder import document, python_device, to_toml

GRACE_S = 1.0
# Exit must come within grace + FLUSH_S + process teardown (under 1 s); the bound is generous so
# a loaded box does not fail it, and still far below the HANG_S (60 s) a stuck stage would cost.
EXIT_BOUND_S = GRACE_S + 3.0
CONFIG = document(server={"grace_period_s": GRACE_S}, devices=[python_device("py0", slots=2)],
                  models=[py_model("hang", "stage_fns:hang"), py_model("tail", "stage_fns:tail")],
                  pipelines=[chain("stuck", ["hang"]), chain("quick", ["tail"])])


@pytest.fixture()
def server(tmp_path: Path):
    config = tmp_path / "heddle.toml"
    config.write_text(to_toml(CONFIG))
    proc = ServerProcess(["--config", str(config), "--grpc-port", "0", "--metrics-port", "0"])
    try:
        yield proc
    finally:
        proc.stop()


def _wait_exit(proc: ServerProcess, sigterm_at: float) -> tuple[int, float]:
    try:
        code = proc.proc.wait(timeout=EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"heddle serve still running {EXIT_BOUND_S} s after SIGTERM (grace {GRACE_S} s)")
    return code, time.monotonic() - sigterm_at


@pytest.mark.slow
def test_sigterm_with_a_stuck_stage_exits_within_the_grace_period(server: ServerProcess):
    """A python stage stuck for 60 s does not hold the exit: the process ends (code 0) within the
    grace period and a little, the stuck request ends UNAVAILABLE, and a call during the drain is
    refused UNAVAILABLE."""
    target = server.wait_for_event("heddle serving")["grpc"]
    with HeddleClient(target) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(client.infer, "stuck", {"x": stage_fns.tagged(7)}, timeout_s=stage_fns.HANG_S * 2)
        wait_until(lambda: next(d.running for d in client.list_devices()) == 1, "the stuck stage to start")
        sigterm_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for_event("shutting down")
        with pytest.raises(grpc.RpcError) as refused:
            client.infer("quick", {"x": stage_fns.tagged(1)}, timeout_s=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        code, _ = _wait_exit(server, sigterm_at)
        assert code == 0
        with pytest.raises(grpc.RpcError) as ended:
            stuck.result(timeout=10)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in ended.value.details()
    server.wait_for_event("heddle stopped")
    left = server.wait_for_event("exiting without waiting for threads still running")["threads"]
    assert any(name.startswith("heddle-py0") for name in left), left


@pytest.mark.slow
def test_calls_racing_the_shutdown_get_unavailable_never_cancelled(server: ServerProcess):
    """Clients calling in a loop through SIGTERM and the exit get OK or UNAVAILABLE, never CANCELLED
    (gRPC's own stop cancels the calls its core holds at that moment)."""
    target = server.wait_for_event("heddle serving")["grpc"]
    codes: collections.Counter[str] = collections.Counter()
    lock, started = threading.Lock(), threading.Barrier(17)

    def hammer(tag: int) -> None:
        with HeddleClient(target) as client:
            client.infer("quick", {"x": stage_fns.tagged(tag)}, timeout_s=10)
            started.wait(10)
            while server.proc.poll() is None:
                try:
                    client.infer("quick", {"x": stage_fns.tagged(tag)}, timeout_s=10)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name
                with lock:
                    codes[code] += 1

    threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    started.wait(10)
    sigterm_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code, _ = _wait_exit(server, sigterm_at)
    for t in threads:
        t.join(10)
    assert code == 0
    assert codes["UNAVAILABLE"] > 0, codes
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
