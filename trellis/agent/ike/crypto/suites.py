"""The cryptographic suites we negotiate, and the key lengths each one implies.

Only AEAD transforms: with an AEAD there is no separate integrity transform (RFC 5282 section 8,
RFC 7634 section 2), so SK_ai/SK_ar and the ESP integrity keys are empty. Every AEAD key we
derive is the cipher key followed by a 4-byte salt: RFC 5282 section 7 (IKE AES-GCM), RFC 4106
section 8.1 (ESP AES-GCM), RFC 7634 sections 2 and 4 (ChaCha20-Poly1305), RFC 4543 section 3.2
(ESP AES-GMAC).

Construction validates the combination, so that a suite object is always one we can run; the
negotiation code can filter proposals with the ``SUPPORTED_*`` tables before building one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from trellis.agent.ike.constants import DhId, EncrId, PrfId
from trellis.agent.ike.errors import IkeLocalError

AEAD_SALT_LENGTH = 4  # RFC 5282 section 7.1, RFC 7634 section 2, RFC 4543 section 3.2
AEAD_IV_LENGTH = 8  # the explicit IV carried in each SK payload / ESP packet
AEAD_ICV_LENGTH = 16  # "_16" AES-GCM and Poly1305 both give a 16-byte tag

# encryption transform -> key sizes in bits we accept
SUPPORTED_IKE_ENCR: Mapping[EncrId, frozenset[int]] = MappingProxyType(
    {
        EncrId.AES_GCM_16: frozenset({128, 256}),
        EncrId.CHACHA20_POLY1305: frozenset({256}),  # fixed key size, no Key Length attribute
    }
)
SUPPORTED_ESP_ENCR: Mapping[EncrId, frozenset[int]] = MappingProxyType(
    {
        EncrId.AES_GCM_16: frozenset({128, 256}),
        EncrId.CHACHA20_POLY1305: frozenset({256}),
        EncrId.NULL_AUTH_AES_GMAC: frozenset({128, 256}),  # integrity only (RFC 4543)
    }
)
# PRF -> output length in bytes, which is also its preferred key length (RFC 7296 section 2.13)
PRF_OUTPUT_LENGTHS: Mapping[PrfId, int] = MappingProxyType(
    {PrfId.HMAC_SHA2_256: 32, PrfId.HMAC_SHA2_384: 48, PrfId.HMAC_SHA2_512: 64}
)
SUPPORTED_PRF: frozenset[PrfId] = frozenset(PRF_OUTPUT_LENGTHS)
SUPPORTED_DH: frozenset[DhId] = frozenset({DhId.CURVE25519, DhId.ECP_256, DhId.ECP_384})

# strongSwan-style names, for logs and configuration
_ENCR_NAMES: Mapping[EncrId, str] = {
    EncrId.AES_GCM_16: "aes{bits}gcm16",
    EncrId.CHACHA20_POLY1305: "chacha20poly1305",
    EncrId.NULL_AUTH_AES_GMAC: "aes{bits}gmac",
}
_PRF_NAMES: Mapping[PrfId, str] = {
    PrfId.HMAC_SHA2_256: "prfsha256",
    PrfId.HMAC_SHA2_384: "prfsha384",
    PrfId.HMAC_SHA2_512: "prfsha512",
}
_DH_NAMES: Mapping[DhId, str] = {DhId.CURVE25519: "x25519", DhId.ECP_256: "ecp256", DhId.ECP_384: "ecp384"}


def _aead_key_length(key_bits: int) -> int:
    return key_bits // 8 + AEAD_SALT_LENGTH


@dataclass(frozen=True, slots=True)
class IkeSuite:
    """The transforms of an IKE SA: one AEAD (with its key size), one PRF, one DH group."""

    encr: EncrId
    key_bits: int
    prf: PrfId
    dh: DhId

    def __post_init__(self) -> None:
        sizes = SUPPORTED_IKE_ENCR.get(self.encr)
        if sizes is None:
            raise IkeLocalError(f"unsupported IKE encryption transform {self.encr!r}")
        if self.key_bits not in sizes:
            raise IkeLocalError(f"unsupported key size {self.key_bits} for {self.encr.name}")
        if self.prf not in SUPPORTED_PRF:
            raise IkeLocalError(f"unsupported PRF {self.prf!r}")
        if self.dh not in SUPPORTED_DH:
            raise IkeLocalError(f"unsupported DH group {self.dh!r}")

    @property
    def encr_key_length(self) -> int:
        """Length of SK_ei / SK_er: the cipher key and its 4-byte salt."""
        return _aead_key_length(self.key_bits)

    @property
    def integ_key_length(self) -> int:
        """Length of SK_ai / SK_ar: zero, an AEAD authenticates by itself."""
        return 0

    @property
    def prf_key_length(self) -> int:
        """Length of SK_d, SK_pi and SK_pr: the PRF's preferred key length (RFC 7296 section 2.14)."""
        return PRF_OUTPUT_LENGTHS[self.prf]

    def __str__(self) -> str:
        encr = _ENCR_NAMES[self.encr].format(bits=self.key_bits)
        return f"{encr}-{_PRF_NAMES[self.prf]}-{_DH_NAMES[self.dh]}"


@dataclass(frozen=True, slots=True)
class EspSuite:
    """The transforms of a CHILD SA (ESP): one AEAD, extended sequence numbers or not, and the
    DH group for perfect forward secrecy at rekey (None: no PFS)."""

    encr: EncrId
    key_bits: int
    esn: bool = False
    pfs_group: DhId | None = None

    def __post_init__(self) -> None:
        sizes = SUPPORTED_ESP_ENCR.get(self.encr)
        if sizes is None:
            raise IkeLocalError(f"unsupported ESP encryption transform {self.encr!r}")
        if self.key_bits not in sizes:
            raise IkeLocalError(f"unsupported key size {self.key_bits} for {self.encr.name}")
        if self.pfs_group is not None and self.pfs_group not in SUPPORTED_DH:
            raise IkeLocalError(f"unsupported PFS group {self.pfs_group!r}")

    @property
    def encr_key_length(self) -> int:
        """Length of each direction's ESP key: the cipher key and its 4-byte salt."""
        return _aead_key_length(self.key_bits)

    @property
    def integ_key_length(self) -> int:
        return 0

    @property
    def keymat_length(self) -> int:
        """Bytes of KEYMAT one CHILD SA pair consumes (both directions)."""
        return 2 * (self.encr_key_length + self.integ_key_length)

    @property
    def integrity_only(self) -> bool:
        """AES-GMAC authenticates but does not encrypt (RFC 4543)."""
        return self.encr == EncrId.NULL_AUTH_AES_GMAC

    def __str__(self) -> str:
        parts = [_ENCR_NAMES[self.encr].format(bits=self.key_bits)]
        if self.pfs_group is not None:
            parts.append(_DH_NAMES[self.pfs_group])
        if self.esn:
            parts.append("esn")
        return "-".join(parts)


# What Trellis proposes, most preferred first (IKE-NOTES: aes256gcm16-prfsha256-x25519 first).
DEFAULT_IKE_SUITES: tuple[IkeSuite, ...] = (
    IkeSuite(encr=EncrId.AES_GCM_16, key_bits=256, prf=PrfId.HMAC_SHA2_256, dh=DhId.CURVE25519),
    IkeSuite(encr=EncrId.AES_GCM_16, key_bits=256, prf=PrfId.HMAC_SHA2_256, dh=DhId.ECP_256),
    IkeSuite(encr=EncrId.CHACHA20_POLY1305, key_bits=256, prf=PrfId.HMAC_SHA2_256, dh=DhId.CURVE25519),
)
DEFAULT_ESP_SUITES: tuple[EspSuite, ...] = (
    EspSuite(encr=EncrId.AES_GCM_16, key_bits=256),
    EspSuite(encr=EncrId.CHACHA20_POLY1305, key_bits=256),
)
