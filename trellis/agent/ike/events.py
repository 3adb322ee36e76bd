"""What the IKE engine tells the rest of the agent: frozen events, drained with
``IkeEngine.events()``.

The data plane lives on the CHILD SA events: install the SA of ``ChildSaInstalled``; on
``ChildSaRekeyed`` install the new pair and keep the old one until its ``ChildSaDeleted``
(RFC 7296 section 2.8: both stay valid for inbound traffic meanwhile). Key fields never appear in
repr(), so events can be logged as they are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields

from trellis.agent.ike.config import Address
from trellis.agent.ike.crypto.suites import EspSuite
from trellis.agent.ike.payloads import TrafficSelector
from trellis.agent.ike.selectors import format_selector


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeSaId:
    """An IKE SA by its SPIs, initiator's first (as in the header and in swanctl --list-sas)."""

    spi_i: bytes
    spi_r: bytes

    def __str__(self) -> str:
        return f"{self.spi_i.hex()}_i {self.spi_r.hex()}_r"


class DownReason(enum.StrEnum):
    DELETED = "deleted"  # we deleted it (API, configuration change)
    PEER_DELETED = "peer-deleted"
    EXPIRED = "expired"  # hard lifetime, or a certificate reached its end
    REKEYED = "rekeyed"  # replaced by a rekeyed IKE SA (the CHILD SAs moved over)
    REAUTHENTICATED = "reauthenticated"  # replaced by a new, re-authenticated IKE SA
    DEAD = "dead"  # the peer stopped answering
    REPLACED = "replaced"  # the peer started over (INITIAL_CONTACT)
    REVOKED = "revoked"  # the peer's certificate or identity was revoked
    AUTHENTICATION_FAILED = "authentication-failed"
    FAILED = "failed"  # could not be established


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeSaUp:
    peer: str
    ike_sa: IkeSaId
    initiator: bool
    local: Address
    remote: Address
    suite: str
    local_id: str
    remote_id: str
    peer_identity: str | None  # the spiffe:// identity of the peer's certificate, if any
    peer_serial: str | None
    auth_expires: float | None  # the earliest certificate expiry: the SA never outlives it
    reauth_of: IkeSaId | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeSaRekeyed:
    peer: str
    old: IkeSaId
    new: IkeSaId
    suite: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeSaDown:
    peer: str
    ike_sa: IkeSaId
    reason: DownReason
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeSaFailed:
    """An IKE SA that never came up: no common proposal, no answer, a refusal by the peer."""

    peer: str | None  # None: a responder SA whose peer we never identified
    remote: Address
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticationFailed:
    """``by_peer``: the peer refused us (AUTHENTICATION_FAILED notify); else we refused it, and
    ``reason`` says which check failed (a certs.REASON_* prefix, or the PSK/ID checks)."""

    peer: str | None
    remote: Address
    reason: str
    by_peer: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerDead:
    peer: str
    ike_sa: IkeSaId
    remote: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAddressChanged:
    """The peer now sends from (and we send to) another address or port (NAT rebinding)."""

    peer: str
    ike_sa: IkeSaId
    local_port: int
    remote: Address
    child_inbound_spis: tuple[bytes, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSaParams:
    """Everything the data plane needs for one CHILD SA pair (tunnel mode, ESP).

    ``inbound_key``/``outbound_key`` are the AEAD key followed by its 4-byte salt (RFC 4106,
    RFC 7634, RFC 4543); the integrity keys are empty for these AEAD suites. ``local`` and
    ``remote`` are the UDP endpoints ESP travels between when ``udp_encapsulation`` is set.
    """

    name: str
    inbound_spi: bytes
    outbound_spi: bytes
    suite: EspSuite
    inbound_key: bytes = field(repr=False)
    outbound_key: bytes = field(repr=False)
    inbound_integrity_key: bytes = field(repr=False, default=b"")
    outbound_integrity_key: bytes = field(repr=False, default=b"")
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local: Address
    remote: Address
    udp_encapsulation: bool
    created_at: float
    rekey_at: float | None
    expires_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSaInstalled:
    peer: str
    ike_sa: IkeSaId
    child: ChildSaParams


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSaRekeyed:
    """``child`` replaces the pair (``old_inbound_spi``, ``old_outbound_spi``), which stays
    installed until its ChildSaDeleted."""

    peer: str
    ike_sa: IkeSaId
    child: ChildSaParams
    old_inbound_spi: bytes
    old_outbound_spi: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSaDeleted:
    peer: str
    ike_sa: IkeSaId
    name: str
    inbound_spi: bytes
    outbound_spi: bytes
    reason: DownReason


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSaFailed:
    peer: str
    ike_sa: IkeSaId
    name: str
    reason: str


Event = (
    IkeSaUp
    | IkeSaRekeyed
    | IkeSaDown
    | IkeSaFailed
    | AuthenticationFailed
    | PeerDead
    | PeerAddressChanged
    | ChildSaInstalled
    | ChildSaRekeyed
    | ChildSaDeleted
    | ChildSaFailed
)


def _plain(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, IkeSaId | EspSuite):
        return str(value)
    if isinstance(value, TrafficSelector):
        return format_selector(value)
    if isinstance(value, ChildSaParams):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.repr}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def event_record(event: Event) -> dict[str, object]:
    """A JSON-ready description of an event, for logs and scripts: no key material (the fields
    kept out of repr() are left out here too)."""
    record: dict[str, object] = {"event": type(event).__name__}
    for f in fields(event):
        if f.repr:
            record[f.name] = _plain(getattr(event, f.name))
    return record
