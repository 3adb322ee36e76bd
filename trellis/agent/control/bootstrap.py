"""First contact with a controller: learn its CA from the TLS handshake and check it against the pin
in the join token, before trusting anything it says (no trust on first use).

The handshake is made without verification on purpose: the certificates it yields are only
candidates, and one of them must hash to the pin and must have issued the server's certificate.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

MAX_CHAIN_CERTIFICATES = 8
HANDSHAKE_TIMEOUT = 10.0


class BootstrapError(RuntimeError):
    """The controller could not be reached, or is not the controller the token was issued by."""


def spki_sha256(certificate: x509.Certificate) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(
        certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return digest.finalize()


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    public = getattr(tls, "get_unverified_chain", None)  # Python 3.13+
    if public is not None:
        return [bytes(der) for der in public()]
    # Python 3.11/3.12 have the same method on the C object only.
    sslobj: Any = getattr(tls, "_sslobj", None)
    if sslobj is None or not hasattr(sslobj, "get_unverified_chain"):
        raise BootstrapError("this Python cannot read the server's certificate chain")
    return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in sslobj.get_unverified_chain()]  # type: ignore[attr-defined]


def fetch_pinned_ca(
    host: str, port: int, pin: bytes, *, timeout: float = HANDSHAKE_TIMEOUT
) -> x509.Certificate:
    """The CA certificate of the controller at host:port, if it matches ``pin``; BootstrapError if not."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname="trellis-controller") as tls,
        ):
            chain_der = _unverified_chain(tls)
    except OSError as e:
        raise BootstrapError(f"cannot reach the controller's enrollment port {host}:{port}: {e}") from None
    if not chain_der or len(chain_der) > MAX_CHAIN_CERTIFICATES:
        raise BootstrapError(f"controller at {host}:{port} sent {len(chain_der)} certificates")
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError:
        raise BootstrapError(f"controller at {host}:{port} sent a malformed certificate") from None
    pinned = [c for c in chain if spki_sha256(c) == pin]
    if not pinned:
        raise BootstrapError(
            f"the server at {host}:{port} is not the controller this token was issued by "
            "(no certificate matches the token's CA pin)"
        )
    ca = pinned[0]
    try:
        chain[0].verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise BootstrapError(
            f"the server at {host}:{port} presents a certificate its CA did not issue"
        ) from None
    return ca
