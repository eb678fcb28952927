"""The command-line clients' TLS options (`--ca`, `--cert`, `--key`): one place that adds them to a
parser and turns them into HeddleClient's credentials."""

from __future__ import annotations

import argparse
import ssl
from pathlib import Path
from typing import Any

__all__ = ["TlsArgsError", "add_tls_args", "ssl_context", "tls_kwargs"]


class TlsArgsError(ValueError):
    """A TLS file named on the command line cannot be read; the message names it."""


def add_tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca", default=None, metavar="PEM", help="trust this CA: connect over TLS")
    p.add_argument("--cert", default=None, metavar="PEM", help="client certificate (mutual TLS; with --key)")
    p.add_argument("--key", default=None, metavar="PEM", help="client private key (mutual TLS; with --cert)")


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsArgsError(f"cannot read the {what} {path}: {exc.strerror}") from None


def tls_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """HeddleClient's root_certificates / certificate_chain / private_key for the parsed options
    ({} without --ca: plain text). TlsArgsError for an unreadable file or a cert without its key."""
    ca, cert, key = getattr(args, "ca", None), getattr(args, "cert", None), getattr(args, "key", None)
    if bool(cert) != bool(key):
        raise TlsArgsError("--cert and --key go together (a client certificate and its private key)")
    if ca is None and cert is None:
        return {}
    return {"root_certificates": _read(ca, "CA certificate (--ca)"),
            "certificate_chain": _read(cert, "client certificate (--cert)"),
            "private_key": _read(key, "client key (--key)")}


def ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The HTTP clients' TLS context for the parsed options (None without --ca or --cert: the
    system's trust store for an https:// URL); TlsArgsError as tls_kwargs."""
    ca, cert, key = getattr(args, "ca", None), getattr(args, "cert", None), getattr(args, "key", None)
    if bool(cert) != bool(key):
        raise TlsArgsError("--cert and --key go together (a client certificate and its private key)")
    if ca is None and cert is None:
        return None
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsArgsError(f"cannot load the TLS files (--ca {ca}, --cert {cert}, --key {key}): {exc}") from None
    return context
