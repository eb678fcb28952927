"""The heddle clients (sync and asyncio) against a small real gRPC server (tests/client_fixtures.py):
every field sent, outputs and stage timings decoded, lists, admin calls with their token, TLS,
errors and stream cancellation; and decoding of a response's energy, LLM and retry fields
(`heddle infer` and `heddle list`: test_infer_cli.py).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from client_fixtures import (  # noqa: F401 (gateway is a fixture)
    INPUTS,
    PIPELINE,
    TOKEN,
    FakeGateway,
    check_result,
    gateway,
    start_gateway,
)

from heddle.clients.aio import AsyncHeddleClient
from heddle.clients.client import HeddleClient, InferResult, StageEvent


class TestSyncClient:
    def test_infer_decodes_outputs_and_stages(self, gateway) -> None:
        """infer sends every field and decodes outputs, stage timings and the request summary."""
        target, _ = gateway
        with HeddleClient(target) as client:
            result = client.infer("compute", INPUTS, priority=3, deadline_ms=0.5, request_id="r1")
        check_result(result, priority=3)
        assert (result.request_id, result.total_ms, result.deadline_missed) == ("r1", 1.5, True)

    def test_outputs_filter_and_timeout(self, gateway) -> None:
        """`outputs` limits what comes back and `timeout_s` becomes the call's gRPC deadline."""
        target, servicer = gateway
        with HeddleClient(target) as client:
            result = client.infer("compute", INPUTS, outputs=["ids"], timeout_s=30)
        assert list(result.outputs) == ["ids"] and result.request_id == "generated-1"
        # The deadline arrived (not none); its precision is gRPC's: under load the server's
        # figure was seen 0.1 s over the 30 s sent, so allow a second rather than flake.
        assert 0 < servicer.time_remaining_s[-1] <= 31

    def test_stream_yields_stages_then_result(self, gateway) -> None:
        """infer_stream yields one StageEvent per stage, in order, then the InferResult."""
        target, _ = gateway
        with HeddleClient(target) as client:
            events = list(client.infer_stream("compute", INPUTS, priority=1))
        assert [type(e) for e in events] == [StageEvent] * 5 + [InferResult]
        assert [e.stage for e in events[:-1]] == ["s_x", "s_ids", "s_flag", "s_text", "post"]
        check_result(events[-1], priority=1)

    def test_closing_the_stream_cancels_the_call(self, gateway) -> None:
        """Closing the iterator after the first event cancels the RPC on the server."""
        target, servicer = gateway
        with HeddleClient(target) as client:
            stream = client.infer_stream("compute", INPUTS, request_id="hang")
            assert isinstance(next(stream), StageEvent)
            stream.close()
            assert servicer.stream_cancelled.wait(10)

    def test_errors_propagate_as_rpc_errors(self, gateway) -> None:
        """A server error surfaces as grpc.RpcError with the server's code and details."""
        target, _ = gateway
        with HeddleClient(target) as client, pytest.raises(grpc.RpcError) as err:
            client.infer("nope", INPUTS)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "unknown pipeline 'nope'"

    def test_max_message_bytes_limits_requests(self, gateway) -> None:
        """A request larger than max_message_bytes fails with RESOURCE_EXHAUSTED."""
        target, _ = gateway
        with HeddleClient(target, max_message_bytes=1024) as client, pytest.raises(grpc.RpcError) as err:
            client.infer("compute", {"x": np.zeros((512, 4), np.float32)})
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    def test_lists(self, gateway) -> None:
        """The list methods return the server's PipelineInfo, ModelInfo and DeviceInfo messages."""
        target, _ = gateway
        with HeddleClient(target) as client:
            assert client.list_pipelines() == [PIPELINE]
            assert [m.name for m in client.list_models()] == ["m"]
            assert client.list_devices()[0].providers == ["CPUExecutionProvider"]

    def test_admin_calls_send_the_token(self, gateway) -> None:
        """With a token, admin calls carry `authorization: Bearer <token>` and succeed."""
        target, servicer = gateway
        with HeddleClient(target, token=TOKEN) as client:
            assert client.get_policy().policy == "fcfs"
            assert client.set_policy("edf").policy == "edf"
        assert servicer.metadata[-1]["authorization"] == f"Bearer {TOKEN}"
        assert servicer.policy == "edf"

    def test_admin_without_token_is_unauthenticated(self, gateway) -> None:
        """Without a token no authorization metadata is sent, so the admin call is refused."""
        target, servicer = gateway
        with HeddleClient(target) as client, pytest.raises(grpc.RpcError) as err:
            client.get_policy()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization" not in servicer.metadata[-1]

    def test_half_a_client_certificate_is_refused(self) -> None:
        """A private key without a certificate chain (or the reverse) raises ValueError."""
        with pytest.raises(ValueError, match="both private_key and certificate_chain"):
            HeddleClient("127.0.0.1:1", private_key=b"key")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_with_root_certificates(tmp_path: Path) -> None:
    """With root_certificates the client speaks TLS and trusts only that root."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server, port = start_gateway(FakeGateway(), "127.0.0.1:0", creds)
    try:
        with HeddleClient(f"localhost:{port}", root_certificates=cert.read_bytes()) as client:
            assert client.list_pipelines() == [PIPELINE]
    finally:
        server.stop(None)


class TestAsyncClient:
    def test_infer_stream_lists_and_admin(self, gateway) -> None:
        """The asyncio client decodes infer and stream results, lists, and sends the admin token."""
        target, servicer = gateway

        async def scenario() -> tuple:
            async with AsyncHeddleClient(target, token=TOKEN) as client:
                result = await client.infer("compute", INPUTS, priority=2, request_id="a1")
                events = [e async for e in client.infer_stream("compute", INPUTS, priority=2)]
                lists = (await client.list_pipelines(), await client.list_models(),
                         await client.list_devices())
                policy = await client.set_policy("edf")
                return result, events, lists, policy

        result, events, lists, policy = asyncio.run(scenario())
        check_result(result, priority=2)
        assert result.request_id == "a1"
        assert [type(e) for e in events] == [StageEvent] * 5 + [InferResult]
        check_result(events[-1], priority=2)
        assert lists[0] == [PIPELINE] and lists[1][0].name == "m" and lists[2][0].id == "cpu0"
        assert policy.policy == "edf" and servicer.metadata[-1]["authorization"] == f"Bearer {TOKEN}"

    def test_errors_and_stream_cancellation(self, gateway) -> None:
        """Async errors carry the server's code, and closing a stream early cancels the call."""
        target, servicer = gateway

        async def scenario() -> grpc.StatusCode:
            async with AsyncHeddleClient(target) as client:
                stream = client.infer_stream("compute", INPUTS, request_id="hang")
                assert isinstance(await anext(stream), StageEvent)
                await stream.aclose()
                try:
                    await client.get_policy()
                except grpc.RpcError as err:
                    return err.code()
            raise AssertionError("get_policy without a token succeeded")

        assert asyncio.run(scenario()) == grpc.StatusCode.UNAUTHENTICATED
        assert servicer.stream_cancelled.wait(10)


def test_energy_and_llm_stage_fields_are_decoded():
    """Energy per stage and request, and LLM token stats, reach the client's dataclasses."""
    from heddle.clients.client import result_from_proto
    from heddle.v1 import heddle_pb2 as pb

    msg = pb.InferResponse(
        request_id="r", pipeline="p", energy_j=1.5, energy_source="estimated",
        stages=[pb.StageResult(stage="s", energy_j=0.5, energy_source="estimated", tokens=7,
                               ttft_ms=3.0, tpot_ms=1.25)],
    )
    result = result_from_proto(msg)
    assert (result.energy_j, result.energy_source) == (1.5, "estimated")
    stage = result.stages[0]
    assert (stage.energy_j, stage.energy_source, stage.tokens, stage.ttft_ms, stage.tpot_ms) == (
        0.5, "estimated", 7, 3.0, 1.25)


def test_retry_hint_is_read_only_when_the_server_gave_a_readable_one():
    """retry-after-ms in ms (str or bytes) becomes seconds; absent, garbage or negative is None."""
    from heddle.clients.errors import retry_after_s

    assert retry_after_s([("other", "1"), ("retry-after-ms", "250")]) == 0.25
    assert retry_after_s([("retry-after-ms", b"1500")]) == 1.5
    assert retry_after_s([("retry-after-ms", "soon")]) is None
    assert retry_after_s([("retry-after-ms", "-5")]) is None
    assert retry_after_s([]) is None
