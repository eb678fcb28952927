"""Tests for heddle.server.frontends.security: TLS and mutual TLS credentials, and the admin token interceptor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
from pki_fixtures import Pki, pki  # noqa: F401  (fixtures are found by name)

from heddle.server.frontends.security import AdminAuthInterceptor, admin_exposure, is_loopback, server_credentials

GET_POLICY = "/heddle.v1.Admin/GetPolicy"
WATCH_POLICY = "/heddle.v1.Admin/WatchPolicy"  # not in the proto: exercises the unary-stream shape
LIST_MODELS = "/heddle.v1.Gateway/ListModels"
TOKEN = "s3cret-admin-token"


# ---- a tiny server --------------------------------------------------------------------------------

async def _empty_reply(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b""


async def _two_replies(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"a"
    yield b"b"


def _generic_handlers() -> list[grpc.GenericRpcHandler]:
    return [
        grpc.method_handlers_generic_handler("heddle.v1.Admin", {
            "GetPolicy": grpc.unary_unary_rpc_method_handler(_empty_reply),
            "WatchPolicy": grpc.unary_stream_rpc_method_handler(_two_replies),
        }),
        grpc.method_handlers_generic_handler("heddle.v1.Gateway", {
            "ListModels": grpc.unary_unary_rpc_method_handler(_empty_reply),
        }),
    ]


async def _serve(
    body: Callable[[str], Awaitable[None]],
    *,
    creds: grpc.ServerCredentials | None = None,
    interceptors: list[grpc.aio.ServerInterceptor] | None = None,
) -> None:
    """Run `body(target)` against a fresh server on a free loopback port, then stop the server."""
    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers(_generic_handlers())
    port = server.add_insecure_port("127.0.0.1:0") if creds is None else server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        await body(f"127.0.0.1:{port}")
    finally:
        await server.stop(grace=None)


async def _serve_tls(pki: Pki, body: Callable[[str], Awaitable[None]], *, mutual: bool) -> None:
    creds = server_credentials(pki.server_cert, pki.server_key, pki.ca if mutual else None)
    await _serve(body, creds=creds)


async def _call_code(channel: grpc.aio.Channel, method: str, metadata: tuple = ()) -> grpc.StatusCode:
    try:
        await channel.unary_unary(method)(b"", metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def _stream_code(channel: grpc.aio.Channel, method: str, metadata: tuple = ()) -> grpc.StatusCode:
    try:
        replies = [r async for r in channel.unary_stream(method)(b"", metadata=metadata, timeout=10)]
    except grpc.aio.AioRpcError as err:
        return err.code()
    assert replies == [b"a", b"b"]
    return grpc.StatusCode.OK


# ---- server_credentials -----------------------------------------------------------------------------

def test_missing_cert_file_is_named(tmp_path: Path, pki: Pki) -> None:
    """A cert path that does not exist gives a ValueError naming that path."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match="nope.pem"):
        server_credentials(missing, pki.server_key)


def test_non_pem_client_ca_is_named(tmp_path: Path, pki: Pki) -> None:
    """A client CA file with no PEM block gives a ValueError naming the file and its role."""
    junk = tmp_path / "junk-ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"client CA.*junk-ca\.pem"):
        server_credentials(pki.server_cert, pki.server_key, junk)


def test_tls_serves_a_client_that_trusts_the_ca(pki: Pki) -> None:
    """A client trusting the CA completes a call over TLS; one trusting nothing it knows cannot."""
    async def body(target: str) -> None:
        trusting = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        async with grpc.aio.secure_channel(target, trusting) as channel:
            assert await _call_code(channel, LIST_MODELS) == grpc.StatusCode.OK
        # The server cert itself is not a CA, so trusting only it must fail verification.
        wrong_root = grpc.ssl_channel_credentials(root_certificates=pki.client_cert.read_bytes())
        async with grpc.aio.secure_channel(target, wrong_root) as channel:
            assert await _call_code(channel, LIST_MODELS) == grpc.StatusCode.UNAVAILABLE

    asyncio.run(_serve_tls(pki, body, mutual=False))


def test_mutual_tls_requires_a_client_cert(pki: Pki) -> None:
    """With a client CA set, a client without a cert is refused and one with a CA-signed cert is served."""
    async def body(target: str) -> None:
        no_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        async with grpc.aio.secure_channel(target, no_cert) as channel:
            assert await _call_code(channel, LIST_MODELS) == grpc.StatusCode.UNAVAILABLE
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        )
        async with grpc.aio.secure_channel(target, with_cert) as channel:
            assert await _call_code(channel, LIST_MODELS) == grpc.StatusCode.OK

    asyncio.run(_serve_tls(pki, body, mutual=True))


# ---- AdminAuthInterceptor ---------------------------------------------------------------------------

def _with_interceptor(token: str, body: Callable[[grpc.aio.Channel], Awaitable[None]]) -> None:
    async def run(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            await body(channel)

    asyncio.run(_serve(run, interceptors=[AdminAuthInterceptor(token)]))


def test_admin_call_without_token_is_unauthenticated() -> None:
    """An admin call with no authorization metadata ends UNAUTHENTICATED with a message saying what to send."""
    async def body(channel: grpc.aio.Channel) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(GET_POLICY)(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "authorization: Bearer <token>" in info.value.details()

    _with_interceptor(TOKEN, body)


def test_admin_call_with_other_scheme_is_unauthenticated() -> None:
    """An authorization header that is not a bearer token counts as no token."""
    async def body(channel: grpc.aio.Channel) -> None:
        code = await _call_code(channel, GET_POLICY, (("authorization", f"Basic {TOKEN}"),))
        assert code == grpc.StatusCode.UNAUTHENTICATED

    _with_interceptor(TOKEN, body)


def test_admin_call_with_wrong_token_is_permission_denied() -> None:
    """A bearer token that differs from the server's ends PERMISSION_DENIED, unary and streaming alike."""
    async def body(channel: grpc.aio.Channel) -> None:
        wrong = (("authorization", "Bearer not-the-token"),)
        assert await _call_code(channel, GET_POLICY, wrong) == grpc.StatusCode.PERMISSION_DENIED
        assert await _stream_code(channel, WATCH_POLICY, wrong) == grpc.StatusCode.PERMISSION_DENIED

    _with_interceptor(TOKEN, body)


def test_admin_call_with_right_token_is_served() -> None:
    """The right bearer token reaches the handler, unary and streaming alike."""
    async def body(channel: grpc.aio.Channel) -> None:
        right = (("authorization", f"Bearer {TOKEN}"),)
        assert await _call_code(channel, GET_POLICY, right) == grpc.StatusCode.OK
        assert await _stream_code(channel, WATCH_POLICY, right) == grpc.StatusCode.OK

    _with_interceptor(TOKEN, body)


def test_streaming_admin_call_without_token_is_unauthenticated() -> None:
    """A server-streaming admin call with no token ends UNAUTHENTICATED before any reply."""
    async def body(channel: grpc.aio.Channel) -> None:
        assert await _stream_code(channel, WATCH_POLICY) == grpc.StatusCode.UNAUTHENTICATED

    _with_interceptor(TOKEN, body)


def test_non_admin_methods_pass_untouched() -> None:
    """A Gateway call needs no token, and a wrong one does not stop it."""
    async def body(channel: grpc.aio.Channel) -> None:
        assert await _call_code(channel, LIST_MODELS) == grpc.StatusCode.OK
        assert await _call_code(channel, LIST_MODELS, (("authorization", "Bearer x"),)) == grpc.StatusCode.OK

    _with_interceptor(TOKEN, body)


def test_empty_token_lets_admin_calls_through() -> None:
    """With no token configured, admin calls are served without metadata."""
    async def body(channel: grpc.aio.Channel) -> None:
        assert await _call_code(channel, GET_POLICY) == grpc.StatusCode.OK

    _with_interceptor("", body)


def test_unknown_method_stays_unimplemented() -> None:
    """An admin method no handler serves is still UNIMPLEMENTED, not an auth error in disguise."""
    async def body(channel: grpc.aio.Channel) -> None:
        assert await _call_code(channel, "/heddle.v1.Admin/NoSuchMethod") == grpc.StatusCode.UNIMPLEMENTED

    _with_interceptor(TOKEN, body)


# ---- exposure of the admin RPCs -------------------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts_are_loopback(host: str) -> None:
    """Addresses only this machine can reach count as loopback."""
    assert is_loopback(host) and admin_exposure(host, "", "") is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "", "10.0.0.7", "edge-box.local"])
def test_other_hosts_expose_the_admin_rpcs_without_a_token(host: str) -> None:
    """Any other address (a host name included) exposes the admin RPCs unless a token or mutual TLS guards them."""
    assert not is_loopback(host)
    problem = admin_exposure(host, "", "")
    assert problem is not None and "--insecure-admin" in problem and "HEDDLE_ADMIN_TOKEN" in problem
    assert admin_exposure(host, TOKEN, "") is None
    assert admin_exposure(host, "", "/etc/heddle/clients-ca.pem") is None
