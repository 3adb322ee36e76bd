"""The controller's own TLS certificate: short-lived too, re-issued in-process before it expires.

gRPC asks the fetcher on every handshake; it hands out a new configuration only when the current
certificate has used half its lifetime, so new connections always see a valid certificate.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import grpc
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trellis.controller.ca import (
    CONTROLLER_TLS_NAME,
    CertificateAuthority,
    controller_identity,
    make_csr,
)

SERVER_CERT_TTL = dt.timedelta(hours=24)


class ServerCertificates:
    def __init__(self, authority: CertificateAuthority, clock: Callable[[], dt.datetime]) -> None:
        self._authority = authority
        self._clock = clock
        self._lock = threading.Lock()  # gRPC calls fetchers from its own threads
        self._version = 0
        self._renew_at = clock()
        self._chain_pem = b""
        self._key_pem = b""
        self._issue()

    def _issue(self) -> None:
        now = self._clock()
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = self._authority.issue(
            make_csr(key, None),
            controller_identity(self._authority.trust_domain),
            now=now,
            ttl=SERVER_CERT_TTL,
            dns_names=(CONTROLLER_TLS_NAME,),
        )
        self._key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # The CA goes in the chain so a new agent can read it from the handshake and match its pin.
        self._chain_pem = certificate.public_bytes(
            serialization.Encoding.PEM
        ) + self._authority.certificate.public_bytes(serialization.Encoding.PEM)
        self._renew_at = now + SERVER_CERT_TTL / 2
        self._version += 1

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        ca_pem = self._authority.certificate.public_bytes(serialization.Encoding.PEM)
        return grpc.ssl_server_certificate_configuration(
            [(self._key_pem, self._chain_pem)], root_certificates=ca_pem
        )

    def credentials(self, *, require_client_certificate: bool) -> grpc.ServerCredentials:
        """Server credentials that pick up re-issued certificates on new handshakes."""
        with self._lock:
            served = self._version
            initial = self._configuration()

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal served
            with self._lock:
                if self._clock() >= self._renew_at:
                    self._issue()
                if served == self._version:
                    return None
                served = self._version
                return self._configuration()

        # gRPC documents None as "keep the current configuration"; the stub is stricter than that.
        return grpc.dynamic_ssl_server_credentials(
            initial,
            fetch,  # type: ignore[arg-type]
            require_client_authentication=require_client_certificate,
        )
