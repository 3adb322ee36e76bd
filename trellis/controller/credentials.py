"""Admin credentials: one PEM file (0600) holding the admin's key, certificate and the CA bundle.

``trellis-controller init`` writes the first one; trellisctl reads it with ``--credentials``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trellis.controller.ca import (
    ADMIN_LIFETIME,
    CertificateAuthority,
    admin_identity,
    make_csr,
    write_secret_file,
)


class CredentialsError(ValueError):
    """A credentials file that is missing, unreadable, too open, or not a Trellis admin bundle."""


@dataclass(frozen=True, slots=True)
class AdminCredentials:
    key_pem: bytes
    certificate_pem: bytes
    ca_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem)

    @classmethod
    def issue(cls, authority: CertificateAuthority, name: str, *, now: dt.datetime) -> AdminCredentials:
        key = ec.generate_private_key(ec.SECP256R1())
        identity = admin_identity(authority.trust_domain, name)
        certificate = authority.issue(make_csr(key, identity), identity, now=now, ttl=ADMIN_LIFETIME)
        return cls(
            key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            certificate_pem=certificate.public_bytes(serialization.Encoding.PEM),
            ca_pem=authority.certificate.public_bytes(serialization.Encoding.PEM),
        )

    def save(self, path: Path) -> None:
        identity = self.certificate.subject.rfc4514_string()
        header = f"Trellis admin credentials for {identity}. Keep this file secret.\n".encode()
        write_secret_file(path, header + self.key_pem + self.certificate_pem + self.ca_pem)

    @classmethod
    def load(cls, path: Path) -> AdminCredentials:
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as e:
            raise CredentialsError(f"cannot read credentials {path}: {e.strerror}") from None
        if mode & 0o077:
            raise CredentialsError(
                f"credentials {path} are readable by others (mode {mode & 0o777:o}): chmod 600"
            )
        blocks = _pem_blocks(data)
        keys = blocks.get("PRIVATE KEY", [])
        certificates = blocks.get("CERTIFICATE", [])
        if len(keys) != 1 or len(certificates) < 2:
            raise CredentialsError(f"{path} is not a Trellis admin credentials file (key, certificate, CA)")
        return cls(key_pem=keys[0], certificate_pem=certificates[0], ca_pem=b"".join(certificates[1:]))


def _pem_blocks(data: bytes) -> dict[str, list[bytes]]:
    blocks: dict[str, list[bytes]] = {}
    lines = data.splitlines(keepends=True)
    current: list[bytes] = []
    kind = ""
    for line in lines:
        if line.startswith(b"-----BEGIN "):
            kind = line.strip()[11:-5].decode("ascii", "replace")
            current = [line]
        elif kind:
            current.append(line)
            if line.startswith(b"-----END "):
                blocks.setdefault(kind, []).append(b"".join(current))
                kind = ""
    return blocks
