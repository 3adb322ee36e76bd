"""Static IKE configuration for ``trellis-agent run --config FILE``: peers without a controller,
such as an external IPsec gateway. The YAML is turned into the same typed ``PeerConfig`` objects
the mesh builds from the network map; every error names the field and says what is wrong.

Example::

    listen: {address: 0.0.0.0, ike_port: 500, nat_t_port: 4500}
    keylog: /var/lib/trellis/keylog        # off unless given (files are 0600)
    status_file: /var/lib/trellis/ike-status.json
    events_file: /var/lib/trellis/ike-events.jsonl   # JSON lines, no keys (for scripts)
    credentials:
      default: {certificate: site.pem, key: site.key}   # leaf first, then intermediates
    peers:
      - name: hq
        address: 203.0.113.10
        auth: {certificate: default, ca: [ca.pem]}    # or {psk: "..."} / {psk_file: secret}
        local_id: "O=example.org, OU=site, CN=branch-a"   # default: the certificate's DN
        remote_id: "O=example.org, OU=site, CN=hq"        # or spiffe://..., a DNS name
        ike: {proposals: [aes256gcm16-prfsha256-x25519], rekey: 4h, lifetime: 4h24m, jitter: 24m}
        dpd: 30s
        children:
          - name: lan
            local_ts: [10.1.0.0/24]
            remote_ts: [10.2.0.0/24]
            esp: {proposals: [aes256gcm16-x25519], rekey: 1h, lifetime: 66m, jitter: 6m}

Relative file names are relative to the configuration file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from trellis.agent.ike.config import (
    DEFAULT_CHILD_LIFETIME,
    DEFAULT_ESP_PROPOSALS,
    DEFAULT_IKE_LIFETIME,
    DEFAULT_IKE_PROPOSALS,
    CertificateAuth,
    CertificateCredentials,
    ChildConfig,
    DeadPeerAction,
    EngineSettings,
    Lifetime,
    PeerConfig,
    PskAuth,
    RetransmitPolicy,
)
from trellis.agent.ike.errors import IkeLocalError
from trellis.agent.ike.ids import parse_ike_id
from trellis.agent.ike.proposal_text import parse_esp_proposal, parse_ike_proposal
from trellis.agent.ike.selectors import parse_selector
from trellis.v1.duration import parse_duration

T = TypeVar("T")
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(ValueError):
    """A configuration we cannot use; the message starts with the field's path."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticConfig:
    settings: EngineSettings
    bind_address: str
    peers: tuple[PeerConfig, ...]
    credentials: Mapping[str, CertificateCredentials]
    keylog_dir: Path | None
    status_file: Path | None
    events_file: Path | None = None


class _Reader:
    """Walks the YAML tree, knowing where it is, so that errors can say so."""

    def __init__(self, value: Any, path: str, base: Path) -> None:
        self.value = value
        self.path = path
        self.base = base

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"{self.path or 'the configuration'}: {message}")

    def mapping(self, allowed: Sequence[str]) -> dict[str, Any]:
        if not isinstance(self.value, dict):
            raise self.fail(f"expected a mapping, got {type(self.value).__name__}")
        unknown = sorted(str(k) for k in self.value if k not in allowed)
        if unknown:
            raise self.fail(f"unknown field {unknown[0]!r} (known: {', '.join(allowed)})")
        return self.value

    def child(self, key: str | int) -> _Reader:
        if isinstance(key, int):
            value = self.value[key] if isinstance(self.value, list) else None
        else:
            value = self.value.get(key) if isinstance(self.value, dict) else None
        path = (
            f"{self.path}[{key}]" if isinstance(key, int) else f"{self.path}.{key}" if self.path else str(key)
        )
        return _Reader(value, path, self.base)

    def has(self, key: str) -> bool:
        return isinstance(self.value, dict) and self.value.get(key) is not None

    def items(self, *, single: bool = False) -> list[_Reader]:
        """The elements of a list; with ``single`` a lone string stands for a one-element list."""
        if single and isinstance(self.value, str):
            return [self]
        if not isinstance(self.value, list):
            raise self.fail(f"expected a list, got {type(self.value).__name__}")
        return [self.child(i) for i in range(len(self.value))]

    def text(self) -> str:
        if isinstance(self.value, bool) or not isinstance(self.value, str | int | float):
            raise self.fail("expected a string")
        return str(self.value)

    def boolean(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.fail("expected true or false")
        return self.value

    def integer(self, low: int, high: int) -> int:
        if isinstance(self.value, bool) or not isinstance(self.value, int) or not low <= self.value <= high:
            raise self.fail(f"expected a whole number from {low} to {high}")
        return self.value

    def number(self) -> float:
        if isinstance(self.value, bool) or not isinstance(self.value, int | float) or self.value < 0:
            raise self.fail("expected a non-negative number")
        return float(self.value)

    def seconds(self) -> float:
        """A duration: seconds as a number, or text such as 90s, 30m, 1h30m."""
        if isinstance(self.value, int | float) and not isinstance(self.value, bool):
            return self.number()
        try:
            return parse_duration(self.text()).total_seconds()
        except ValueError as e:
            raise self.fail(str(e)) from None

    def file(self) -> Path:
        path = Path(self.text())
        return path if path.is_absolute() else self.base / path

    def convert(self, parse: Callable[[str], T]) -> T:
        try:
            return parse(self.text())
        except (IkeLocalError, ValueError) as e:
            raise self.fail(str(e)) from None

    def texts(self) -> list[str]:
        if isinstance(self.value, str):
            return [self.value]
        return [item.text() for item in self.items()]


def _read_file(reader: _Reader) -> bytes:
    path = reader.file()
    try:
        return path.read_bytes()
    except OSError as e:
        raise reader.fail(f"cannot read {path}: {e.strerror}") from None


def _certificates(reader: _Reader) -> tuple[x509.Certificate, ...]:
    pem = _read_file(reader)
    try:
        certificates = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        raise reader.fail(f"{reader.file()} holds no PEM certificate") from None
    return certificates


def _credential(reader: _Reader) -> CertificateCredentials:
    fields = reader.mapping(("certificate", "key"))
    for required in ("certificate", "key"):
        if fields.get(required) is None:
            raise reader.fail(f"{required!r} is required")
    chain = _certificates(reader.child("certificate"))
    key_reader = reader.child("key")
    pem = _read_file(key_reader)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise key_reader.fail(f"{key_reader.file()} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise key_reader.fail("the key must be ECDSA or Ed25519")
    try:
        return CertificateCredentials(chain=chain, key=key)
    except IkeLocalError as e:
        raise reader.fail(str(e)) from None


def _lifetime(reader: _Reader, default: Lifetime, proposals_key: str) -> Lifetime:
    fields = reader.mapping((proposals_key, "rekey", "lifetime", "jitter"))
    rekey = reader.child("rekey").seconds() if fields.get("rekey") is not None else default.rekey_after
    if fields.get("lifetime") is not None:
        lifetime = reader.child("lifetime").seconds()
    else:
        lifetime = rekey * 1.1 if fields.get("rekey") is not None else default.expire_after
    jitter = (
        reader.child("jitter").seconds()
        if fields.get("jitter") is not None
        else min(default.jitter, rekey / 10)
    )
    try:
        return Lifetime(rekey_after=rekey, expire_after=lifetime, jitter=jitter)
    except IkeLocalError as e:
        raise reader.fail(str(e)) from None


def _child(reader: _Reader) -> ChildConfig:
    fields = reader.mapping(("name", "local_ts", "remote_ts", "esp"))
    for required in ("name", "local_ts", "remote_ts"):
        if fields.get(required) is None:
            raise reader.fail(f"{required!r} is required")
    local = tuple(item.convert(parse_selector) for item in reader.child("local_ts").items(single=True))
    remote = tuple(item.convert(parse_selector) for item in reader.child("remote_ts").items(single=True))
    proposals = DEFAULT_ESP_PROPOSALS
    lifetime = DEFAULT_CHILD_LIFETIME
    if reader.has("esp"):
        esp = reader.child("esp")
        lifetime = _lifetime(esp, DEFAULT_CHILD_LIFETIME, "proposals")
        if esp.has("proposals"):
            proposals = tuple(
                item.convert(parse_esp_proposal) for item in esp.child("proposals").items(single=True)
            )
    try:
        return ChildConfig(
            name=reader.child("name").text(),
            local_ts=local,
            remote_ts=remote,
            proposals=proposals,
            lifetime=lifetime,
        )
    except IkeLocalError as e:
        raise reader.fail(str(e)) from None


_PEER_FIELDS = (
    "name",
    "address",
    "port",
    "nat_t_port",
    "auth",
    "local_id",
    "remote_id",
    "initiate",
    "ike",
    "dpd",
    "dpd_action",
    "keepalive",
    "encapsulation",
    "fragmentation",
    "reauth_margin",
    "children",
)


def _auth(reader: _Reader, credentials: Mapping[str, CertificateCredentials]) -> CertificateAuth | PskAuth:
    fields = reader.mapping(("certificate", "ca", "psk", "psk_file"))
    kinds = [k for k in ("certificate", "psk", "psk_file") if fields.get(k) is not None]
    if len(kinds) != 1:
        raise reader.fail("give exactly one of 'certificate' (a credential name), 'psk' or 'psk_file'")
    if kinds[0] == "certificate":
        name = reader.child("certificate").text()
        if name not in credentials:
            raise reader.child("certificate").fail(f"no credential named {name!r} under 'credentials'")
        if fields.get("ca") is None:
            raise reader.fail("'ca' (the CA bundle to verify the peer against) is required with certificates")
        anchors = tuple(c for item in _files(reader.child("ca")) for c in _certificates(item))
        return CertificateAuth(trust_anchors=anchors, credential=name)
    if fields.get("ca") is not None:
        raise reader.child("ca").fail("a CA bundle makes no sense with a pre-shared key")
    secret = (
        reader.child("psk").text().encode()
        if kinds[0] == "psk"
        else _read_file(reader.child("psk_file")).strip()
    )
    try:
        return PskAuth(secret=secret)
    except IkeLocalError as e:
        raise reader.child(kinds[0]).fail(str(e)) from None


def _files(reader: _Reader) -> list[_Reader]:
    return reader.items(single=True)


def _peer(reader: _Reader, credentials: Mapping[str, CertificateCredentials]) -> PeerConfig:
    fields = reader.mapping(_PEER_FIELDS)
    for required in ("name", "auth"):
        if fields.get(required) is None:
            raise reader.fail(f"{required!r} is required")
    address = (
        reader.child("address").convert(lambda t: str(ipaddress.ip_address(t)))
        if reader.has("address")
        else None
    )
    auth = _auth(reader.child("auth"), credentials)
    proposals = DEFAULT_IKE_PROPOSALS
    ike_lifetime = DEFAULT_IKE_LIFETIME
    if reader.has("ike"):
        ike = reader.child("ike")
        ike_lifetime = _lifetime(ike, DEFAULT_IKE_LIFETIME, "proposals")
        if ike.has("proposals"):
            proposals = tuple(
                item.convert(parse_ike_proposal) for item in ike.child("proposals").items(single=True)
            )
    children = (
        tuple(_child(item) for item in reader.child("children").items()) if reader.has("children") else ()
    )
    options: dict[str, Any] = {}
    if reader.has("port"):
        options["remote_port"] = reader.child("port").integer(1, 65535)
    if reader.has("nat_t_port"):
        options["remote_nat_t_port"] = reader.child("nat_t_port").integer(1, 65535)
    if reader.has("local_id"):
        options["local_id"] = reader.child("local_id").convert(parse_ike_id)
    if reader.has("remote_id"):
        options["remote_id"] = reader.child("remote_id").text()
    if reader.has("initiate"):
        options["initiate"] = reader.child("initiate").boolean()
    elif address is None:
        options["initiate"] = False
    if reader.has("dpd"):
        options["dpd_delay"] = reader.child("dpd").seconds()
    if reader.has("dpd_action"):
        options["dpd_action"] = reader.child("dpd_action").convert(DeadPeerAction)
    if reader.has("keepalive"):
        options["keepalive_interval"] = reader.child("keepalive").seconds()
    if reader.has("encapsulation"):
        mode = reader.child("encapsulation").text()
        if mode not in ("forced", "auto"):
            raise reader.child("encapsulation").fail(
                "expected 'forced' (always ESP-in-UDP) or 'auto' (only behind NAT)"
            )
        options["force_encapsulation"] = mode == "forced"
    if reader.has("fragmentation"):
        options["fragmentation"] = reader.child("fragmentation").boolean()
    if reader.has("reauth_margin"):
        options["reauth_margin"] = reader.child("reauth_margin").seconds()
    try:
        return PeerConfig(
            name=reader.child("name").text(),
            remote_host=address,
            auth=auth,
            children=children,
            ike_proposals=proposals,
            ike_lifetime=ike_lifetime,
            **options,
        )
    except IkeLocalError as e:
        raise reader.fail(str(e)) from None


def parse_static_config(text: str, *, base: Path) -> StaticConfig:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}") from None
    root = _Reader(document, "", base)
    fields = root.mapping(
        (
            "listen",
            "retransmit",
            "keylog",
            "status_file",
            "events_file",
            "fragment_size",
            "credentials",
            "peers",
            "cookie_threshold",
        )
    )
    bind_address = "0.0.0.0"
    settings_options: dict[str, Any] = {}
    if root.has("listen"):
        listen = root.child("listen")
        listen.mapping(("address", "ike_port", "nat_t_port"))
        if listen.has("address"):
            bind_address = listen.child("address").convert(lambda t: str(ipaddress.ip_address(t)))
        for key in ("ike_port", "nat_t_port"):
            if listen.has(key):
                settings_options[key] = listen.child(key).integer(1, 65535)
    if root.has("retransmit"):
        retransmit = root.child("retransmit")
        retransmit.mapping(("timeout", "base", "tries"))
        default = RetransmitPolicy()
        try:
            settings_options["retransmit"] = RetransmitPolicy(
                timeout=retransmit.child("timeout").seconds()
                if retransmit.has("timeout")
                else default.timeout,
                base=retransmit.child("base").number() if retransmit.has("base") else default.base,
                tries=retransmit.child("tries").integer(1, 20) if retransmit.has("tries") else default.tries,
            )
        except IkeLocalError as e:
            raise retransmit.fail(str(e)) from None
    if root.has("fragment_size"):
        settings_options["fragment_size"] = root.child("fragment_size").integer(576, 65535)
    if root.has("cookie_threshold"):
        settings_options["cookie_threshold"] = root.child("cookie_threshold").integer(0, 1_000_000)
    try:
        settings = EngineSettings(**settings_options)
    except IkeLocalError as e:
        raise root.child("listen").fail(str(e)) from None
    credentials: dict[str, CertificateCredentials] = {}
    if root.has("credentials"):
        section = root.child("credentials")
        for name in section.mapping(list(fields["credentials"] or {})):
            credentials[str(name)] = _credential(section.child(str(name)))
    if not root.has("peers"):
        raise root.fail("'peers' is required (a list of peers)")
    peers = tuple(_peer(item, credentials) for item in root.child("peers").items())
    names = [p.name for p in peers]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise root.child("peers").child(index).child("name").fail(f"duplicate peer name {name!r}")
    return StaticConfig(
        settings=settings,
        bind_address=bind_address,
        peers=peers,
        credentials=credentials,
        keylog_dir=root.child("keylog").file() if root.has("keylog") else None,
        status_file=root.child("status_file").file() if root.has("status_file") else None,
        events_file=root.child("events_file").file() if root.has("events_file") else None,
    )


def load_static_config(path: Path) -> StaticConfig:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return parse_static_config(text, base=path.parent)
