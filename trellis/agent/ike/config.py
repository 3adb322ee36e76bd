"""The peer model: everything the IKE engine needs to know about one peer, as plain typed values.

Two builders make these objects: the YAML loader of ``trellis-agent run --config`` (static peers
such as an external gateway) and, later, the mesh reconciler (peers from the network map). Both
go through the same constructors, whose checks raise ``IkeLocalError`` naming what is wrong.

Time values are seconds (floats). Nothing here holds a private key: certificate peers name a
credential that the engine holds (``IkeEngine.set_credentials``), so a renewed certificate
reaches every peer at once; pre-shared keys are kept out of repr().
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509

from trellis.agent.ike.constants import DhId, EncrId, PrfId
from trellis.agent.ike.crypto.auth import SigningKey
from trellis.agent.ike.crypto.suites import (
    SUPPORTED_DH,
    SUPPORTED_ESP_ENCR,
    SUPPORTED_IKE_ENCR,
    SUPPORTED_PRF,
)
from trellis.agent.ike.errors import IkeLocalError
from trellis.agent.ike.ids import IkeId, parse_ike_id
from trellis.agent.ike.payloads import TrafficSelector

Address = tuple[str, int]
"""(IP address text, UDP port)."""

DEFAULT_CREDENTIAL = "default"
MIN_PSK_BYTES = 16  # short secrets are dictionary-attackable from one captured IKE_AUTH


@dataclass(frozen=True, slots=True, kw_only=True)
class Lifetime:
    """When an SA is rekeyed (``rekey_after`` minus a random part of ``jitter``) and when it dies
    if rekeying did not happen (``expire_after``), counted from its creation."""

    rekey_after: float
    expire_after: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.rekey_after <= 0:
            raise IkeLocalError(f"rekey time must be positive, not {self.rekey_after}")
        if self.expire_after <= self.rekey_after:
            raise IkeLocalError(
                f"lifetime {self.expire_after}s must be longer than the rekey time {self.rekey_after}s"
            )
        if not 0 <= self.jitter < self.rekey_after:
            raise IkeLocalError(f"jitter {self.jitter}s must be >= 0 and below the rekey time")


# strongSwan's defaults: rekey_time, life_time = rekey_time + 10 %, rand_time = 10 %.
DEFAULT_IKE_LIFETIME = Lifetime(rekey_after=4 * 3600.0, expire_after=4.4 * 3600.0, jitter=0.4 * 3600.0)
DEFAULT_CHILD_LIFETIME = Lifetime(rekey_after=3600.0, expire_after=1.1 * 3600.0, jitter=360.0)


def _check_encryption(
    encryption: tuple[tuple[EncrId, int], ...], supported: dict[EncrId, frozenset[int]], what: str
) -> None:
    if not encryption:
        raise IkeLocalError(f"{what} proposal needs at least one encryption algorithm")
    for encr, bits in encryption:
        if encr not in supported or bits not in supported[encr]:
            raise IkeLocalError(f"unsupported {what} encryption {encr!r} with {bits}-bit keys")


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeProposal:
    """One IKE proposal: any of its encryption algorithms with any PRF and any DH group, each
    list in order of preference (strongSwan's ``aes256gcm16-prfsha256-x25519-ecp256``)."""

    encryption: tuple[tuple[EncrId, int], ...]
    prf: tuple[PrfId, ...]
    dh: tuple[DhId, ...]

    def __post_init__(self) -> None:
        _check_encryption(self.encryption, dict(SUPPORTED_IKE_ENCR), "IKE")
        if not self.prf or any(p not in SUPPORTED_PRF for p in self.prf):
            raise IkeLocalError(f"IKE proposal needs supported PRFs, not {self.prf!r}")
        if not self.dh or any(g not in SUPPORTED_DH for g in self.dh):
            raise IkeLocalError(f"IKE proposal needs supported DH groups, not {self.dh!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class EspProposal:
    """One ESP proposal. ``dh`` lists the PFS groups used when a CHILD SA is created or rekeyed
    with CREATE_CHILD_SA (empty: no PFS); the CHILD SA made in IKE_AUTH never has its own KE."""

    encryption: tuple[tuple[EncrId, int], ...]
    dh: tuple[DhId, ...] = ()
    esn: tuple[bool, ...] = (False,)

    def __post_init__(self) -> None:
        _check_encryption(self.encryption, dict(SUPPORTED_ESP_ENCR), "ESP")
        if any(g not in SUPPORTED_DH for g in self.dh):
            raise IkeLocalError(f"unsupported PFS group in {self.dh!r}")
        if not self.esn:
            raise IkeLocalError("ESP proposal needs at least one ESN setting")


DEFAULT_IKE_PROPOSALS: tuple[IkeProposal, ...] = (
    IkeProposal(
        encryption=((EncrId.AES_GCM_16, 256), (EncrId.AES_GCM_16, 128), (EncrId.CHACHA20_POLY1305, 256)),
        prf=(PrfId.HMAC_SHA2_256, PrfId.HMAC_SHA2_384),
        dh=(DhId.CURVE25519, DhId.ECP_256, DhId.ECP_384),
    ),
)
DEFAULT_ESP_PROPOSALS: tuple[EspProposal, ...] = (
    EspProposal(
        encryption=((EncrId.AES_GCM_16, 256), (EncrId.AES_GCM_16, 128), (EncrId.CHACHA20_POLY1305, 256))
    ),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateCredentials:
    """Our certificate path (leaf first, then intermediates; the root need not be sent) and its
    private key. Held by the engine under a name; never part of a peer object."""

    chain: tuple[x509.Certificate, ...]
    key: SigningKey = field(repr=False)

    def __post_init__(self) -> None:
        if not self.chain:
            raise IkeLocalError("credentials need at least the leaf certificate")
        if self.chain[0].public_key() != self.key.public_key():
            raise IkeLocalError("the private key does not belong to the leaf certificate")

    @property
    def not_after(self) -> float:
        return min(c.not_valid_after_utc for c in self.chain).timestamp()


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateAuth:
    """Authenticate with certificates (RFC 7427 signatures): ours from the named credential, the
    peer's checked against ``trust_anchors`` (the CA bundle)."""

    trust_anchors: tuple[x509.Certificate, ...]
    credential: str = DEFAULT_CREDENTIAL

    def __post_init__(self) -> None:
        if not self.trust_anchors:
            raise IkeLocalError("certificate authentication needs at least one trusted CA")


@dataclass(frozen=True, slots=True, kw_only=True)
class PskAuth:
    """Authenticate with a pre-shared key (external gateways only)."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_PSK_BYTES:
            raise IkeLocalError(f"pre-shared key must be at least {MIN_PSK_BYTES} bytes")


Auth = CertificateAuth | PskAuth


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildConfig:
    """One CHILD SA (tunnel mode): our side's selectors and the peer's, as we propose them; the
    responder may narrow them (RFC 7296 section 2.9)."""

    name: str
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    proposals: tuple[EspProposal, ...] = DEFAULT_ESP_PROPOSALS
    lifetime: Lifetime = DEFAULT_CHILD_LIFETIME

    def __post_init__(self) -> None:
        if not self.name:
            raise IkeLocalError("a CHILD SA needs a name")
        if not self.local_ts or not self.remote_ts:
            raise IkeLocalError(f"CHILD SA {self.name!r} needs local and remote traffic selectors")
        if not self.proposals:
            raise IkeLocalError(f"CHILD SA {self.name!r} needs at least one ESP proposal")


class DeadPeerAction(enum.StrEnum):
    RESTART = "restart"  # initiate again (with back-off)
    CLEAR = "clear"  # leave it down


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerConfig:
    """One IKE peer.

    ``remote_host`` None accepts the peer from any address (we can then only respond).
    ``local_id`` None uses our certificate's subject DN (ID_DER_ASN1_DN). ``remote_id`` is the
    identity we expect: for certificates a spiffe:// URI, a DN or a DNS name that the certificate
    must carry (None: anyone the CA vouches for); for a PSK the exact ID the peer sends.
    """

    name: str
    remote_host: str | None
    auth: Auth
    children: tuple[ChildConfig, ...]
    remote_port: int = 500
    remote_nat_t_port: int = 4500
    local_id: IkeId | None = None
    remote_id: str | None = None
    ike_proposals: tuple[IkeProposal, ...] = DEFAULT_IKE_PROPOSALS
    ike_lifetime: Lifetime = DEFAULT_IKE_LIFETIME
    initiate: bool = True
    dpd_delay: float = 30.0  # liveness check after this long without hearing from the peer; 0: off
    dpd_action: DeadPeerAction = DeadPeerAction.RESTART
    keepalive_interval: float = 20.0  # NAT keepalives while a NAT is in the path (RFC 3948)
    # Pretend to be behind a NAT (fake NAT_DETECTION_SOURCE_IP) so that ESP is always UDP
    # encapsulated: our userspace data plane only speaks ESP-in-UDP, like kernel-libipsec.
    force_encapsulation: bool = True
    fragmentation: bool = True
    reauth_margin: float = 300.0  # re-authenticate this long before a certificate expires

    def __post_init__(self) -> None:
        if not self.name:
            raise IkeLocalError("a peer needs a name")
        if self.remote_host is not None:
            try:
                ipaddress.ip_address(self.remote_host)
            except ValueError:
                raise IkeLocalError(f"remote address {self.remote_host!r} is not an IP address") from None
        elif self.initiate:
            raise IkeLocalError(f"peer {self.name!r} has no address, so it cannot be initiated")
        for port in (self.remote_port, self.remote_nat_t_port):
            if not 0 < port < 65536:
                raise IkeLocalError(f"port {port} is out of range")
        if not self.ike_proposals:
            raise IkeLocalError(f"peer {self.name!r} needs at least one IKE proposal")
        names = [child.name for child in self.children]
        if len(set(names)) != len(names):
            raise IkeLocalError(f"peer {self.name!r} has CHILD SAs with the same name")
        if self.initiate and not self.children:
            raise IkeLocalError(f"peer {self.name!r} is initiated but has no CHILD SA to create")
        if isinstance(self.auth, PskAuth) and self.local_id is None:
            raise IkeLocalError(f"peer {self.name!r} uses a pre-shared key and needs a local id")
        if isinstance(self.auth, PskAuth) and self.remote_id is not None:
            parse_ike_id(self.remote_id)  # a PSK peer is matched by its exact ID
        if self.dpd_delay < 0 or self.keepalive_interval < 0 or self.reauth_margin < 0:
            raise IkeLocalError("dpd delay, keepalive interval and reauth margin cannot be negative")

    @property
    def remote_ike_address(self) -> Address | None:
        return None if self.remote_host is None else (self.remote_host, self.remote_port)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetransmitPolicy:
    """RFC 7296 section 2.1 retransmission: try n waits ``timeout * base ** (n - 1)``; after
    ``tries`` sends and the last wait the peer is dead (strongSwan: 4 s, 1.8, 5 tries)."""

    timeout: float = 4.0
    base: float = 1.8
    tries: int = 5

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.base < 1 or self.tries < 1:
            raise IkeLocalError("retransmission needs timeout > 0, base >= 1 and at least one try")

    def wait(self, attempt: int) -> float:
        """How long to wait for a response after send number ``attempt`` (1-based)."""
        return self.timeout * self.base ** (attempt - 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSettings:
    """Engine-wide settings (the local side)."""

    ike_port: int = 500
    nat_t_port: int = 4500
    retransmit: RetransmitPolicy = RetransmitPolicy()
    half_open_timeout: float = 30.0  # a responder SA that never gets its IKE_AUTH
    cookie_threshold: int = 30  # half-open SAs before IKE_SA_INIT must carry a COOKIE (2.6)
    cookie_secret_lifetime: float = 300.0
    fragment_size: int = 1280  # IP datagram size above which IKE messages are fragmented
    reconnect_delay: float = 5.0  # first retry after a failed or dead IKE SA, doubled up to:
    reconnect_max_delay: float = 120.0
    rekeyed_sa_timeout: float = 30.0  # wait this long for the DELETE of an SA the peer replaced
    max_init_retries: int = 3  # COOKIE / INVALID_KE_PAYLOAD round trips per IKE_SA_INIT

    def __post_init__(self) -> None:
        for port in (self.ike_port, self.nat_t_port):
            if not 0 < port < 65536:
                raise IkeLocalError(f"local port {port} is out of range")
        if self.cookie_threshold < 0 or self.fragment_size < 576:
            raise IkeLocalError("cookie threshold must be >= 0 and fragment size >= 576")
