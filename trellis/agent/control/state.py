"""The agent's state directory: what it must keep to restart without its controller.

    DIR/identity.pem   private key + certificate, one file (0600) so they always change together
    DIR/ca.pem         the controller's CA bundle
    DIR/agent.json     controller addresses and the identity this directory belongs to
    DIR/map.pb         the last network map (binary protobuf): a restarted agent starts from it
    DIR/status.json    what the running agent says of itself, for `trellis-agent status`

Every file is replaced atomically (write, fsync, rename), so a crash leaves the old or the new.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.protobuf.message import DecodeError

from trellis.v1 import common_pb2
from trellis.v1.files import write_atomic

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

IDENTITY_FILE = "identity.pem"
CA_FILE = "ca.pem"
SETTINGS_FILE = "agent.json"
MAP_FILE = "map.pb"
STATUS_FILE = "status.json"
MAX_MAP_BYTES = 16 * 1024 * 1024


class StateError(RuntimeError):
    """The state directory is unusable: the message says what is wrong and what to do."""


def generate_key(key_type: str) -> PrivateKey:
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key type {key_type!r}: use ecdsa-p256 or ed25519")


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    key: PrivateKey
    certificate: x509.Certificate
    ca_bundle: tuple[x509.Certificate, ...]

    def __repr__(self) -> str:  # never the key
        return f"AgentIdentity(subject={self.certificate.subject.rfc4514_string()}, serial={self.serial})"

    @property
    def serial(self) -> str:
        return format(self.certificate.serial_number, "x")

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def ca_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.ca_bundle)


@dataclass(frozen=True, slots=True)
class Settings:
    controller: str
    enroll: str
    site: str
    identity: str


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    @property
    def enrolled(self) -> bool:
        return (self.path / IDENTITY_FILE).exists()

    # -- identity ------------------------------------------------------------------------------

    def save_identity(self, identity: AgentIdentity) -> None:
        write_atomic(self.path / CA_FILE, identity.ca_pem)
        write_atomic(self.path / IDENTITY_FILE, identity.key_pem + identity.certificate_pem, mode=0o600)

    def load_identity(self) -> AgentIdentity:
        path = self.path / IDENTITY_FILE
        try:
            mode = path.stat().st_mode & 0o777
            data = path.read_bytes()
            ca_data = (self.path / CA_FILE).read_bytes()
        except FileNotFoundError:
            raise StateError(
                f"{self.path} holds no identity: enroll first with --controller HOST:PORT --token TOKEN"
            ) from None
        if mode & 0o077:
            raise StateError(f"{path} is readable by others (mode {mode:o}): chmod 600 {path}")
        try:
            key = serialization.load_pem_private_key(data, password=None)
            certificate = x509.load_pem_x509_certificate(data)
            ca_bundle = tuple(x509.load_pem_x509_certificates(ca_data))
        except ValueError as e:
            raise StateError(f"{path} or {self.path / CA_FILE} is damaged: {e}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise StateError(f"{path} holds an unsupported key type")
        if key.public_key() != certificate.public_key():
            raise StateError(f"{path}: the key does not match the certificate")
        return AgentIdentity(key=key, certificate=certificate, ca_bundle=ca_bundle)

    # -- settings ------------------------------------------------------------------------------

    def save_settings(self, settings: Settings) -> None:
        data = {
            "controller": settings.controller,
            "enroll": settings.enroll,
            "site": settings.site,
            "identity": settings.identity,
        }
        write_atomic(self.path / SETTINGS_FILE, (json.dumps(data, indent=2) + "\n").encode())

    def load_settings(self) -> Settings:
        try:
            data = json.loads((self.path / SETTINGS_FILE).read_text())
            return Settings(
                controller=str(data["controller"]),
                enroll=str(data["enroll"]),
                site=str(data["site"]),
                identity=str(data["identity"]),
            )
        except FileNotFoundError:
            raise StateError(f"{self.path} has no {SETTINGS_FILE}: enroll first") from None
        except (ValueError, KeyError, TypeError) as e:
            raise StateError(f"{self.path / SETTINGS_FILE} is damaged: {e}") from None

    # -- the last network map ------------------------------------------------------------------

    def save_map(self, network_map: common_pb2.NetworkMap) -> None:
        write_atomic(self.path / MAP_FILE, network_map.SerializeToString())

    def load_map(self) -> common_pb2.NetworkMap | None:
        path = self.path / MAP_FILE
        try:
            if path.stat().st_size > MAX_MAP_BYTES:
                raise StateError(f"{path} is larger than {MAX_MAP_BYTES} bytes")
            return common_pb2.NetworkMap.FromString(path.read_bytes())
        except FileNotFoundError:
            return None
        except DecodeError:
            raise StateError(f"{path} is damaged; delete it and the agent fetches a fresh map") from None

    # -- status --------------------------------------------------------------------------------

    def write_status(self, status: dict[str, Any]) -> None:
        write_atomic(self.path / STATUS_FILE, (json.dumps(status, indent=2, sort_keys=True) + "\n").encode())

    def read_status(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / STATUS_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None
        return data if isinstance(data, dict) else None
