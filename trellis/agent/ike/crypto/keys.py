"""Key derivation for IKE SAs and CHILD SAs (RFC 7296 sections 2.14, 2.17, 2.18).

Nonces are the Nonce payload data without the payload header; SPIs are the 8-byte values of
the IKE header, initiator's first, whoever started the current exchange. The key objects never
show key bytes in repr() so that they can sit in events and logs safely.
"""

from __future__ import annotations

from dataclasses import dataclass

from trellis.agent.ike.constants import PrfId
from trellis.agent.ike.crypto.prf import prf, prf_plus
from trellis.agent.ike.crypto.suites import EspSuite, IkeSuite
from trellis.agent.ike.errors import IkeLocalError

IKE_SPI_LENGTH = 8


def skeyseed(prf_id: PrfId, shared_secret: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 section 2.14). HMAC takes any key length, so the
    nonces are used whole (the halving rule is only for fixed-key PRFs such as AES-XCBC)."""
    return prf(prf_id, ni + nr, shared_secret)


def rekey_skeyseed(old_prf: PrfId, old_sk_d: bytes, shared_secret: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), with the PRF of the old IKE SA
    (RFC 7296 section 2.18)."""
    return prf(old_prf, old_sk_d, shared_secret + ni + nr)


@dataclass(frozen=True, slots=True, repr=False)
class IkeSaKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} of one IKE SA. With an AEAD the
    SK_a keys are empty and each SK_e is the cipher key followed by its 4-byte salt."""

    suite: IkeSuite
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def __repr__(self) -> str:
        return f"IkeSaKeys(suite={self.suite}, keys=<redacted>)"


def derive_ike_sa_keys(
    suite: IkeSuite, seed: bytes, *, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes
) -> IkeSaKeys:
    """{SK_d, ...} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr), with the suite's PRF."""
    if len(spi_i) != IKE_SPI_LENGTH or len(spi_r) != IKE_SPI_LENGTH:
        raise IkeLocalError("IKE SPIs are 8 bytes each")
    prf_len, integ_len, encr_len = suite.prf_key_length, suite.integ_key_length, suite.encr_key_length
    lengths = (prf_len, integ_len, integ_len, encr_len, encr_len, prf_len, prf_len)
    stream = prf_plus(suite.prf, seed, ni + nr + spi_i + spi_r, sum(lengths))
    parts: list[bytes] = []
    offset = 0
    for length in lengths:
        parts.append(stream[offset : offset + length])
        offset += length
    sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr = parts
    return IkeSaKeys(
        suite=suite, sk_d=sk_d, sk_ai=sk_ai, sk_ar=sk_ar, sk_ei=sk_ei, sk_er=sk_er, sk_pi=sk_pi, sk_pr=sk_pr
    )


def initial_ike_sa_keys(
    suite: IkeSuite, shared_secret: bytes, *, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes
) -> IkeSaKeys:
    """The keys of an IKE SA created by IKE_SA_INIT."""
    seed = skeyseed(suite.prf, shared_secret, ni, nr)
    return derive_ike_sa_keys(suite, seed, ni=ni, nr=nr, spi_i=spi_i, spi_r=spi_r)


def rekeyed_ike_sa_keys(
    old: IkeSaKeys,
    new_suite: IkeSuite,
    shared_secret: bytes,
    *,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
) -> IkeSaKeys:
    """The keys of the IKE SA that replaces ``old`` in a CREATE_CHILD_SA rekey: SKEYSEED from the
    old SK_d and old PRF, then prf+ with the new suite's PRF over the new nonces and SPIs
    (Ni/SPIi are those of whoever initiated the rekey exchange)."""
    seed = rekey_skeyseed(old.suite.prf, old.sk_d, shared_secret, ni, nr)
    return derive_ike_sa_keys(new_suite, seed, ni=ni, nr=nr, spi_i=spi_i, spi_r=spi_r)


def child_keymat(
    prf_id: PrfId, sk_d: bytes, *, ni: bytes, nr: bytes, length: int, shared_secret: bytes | None = None
) -> bytes:
    """KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) with PFS (RFC 7296
    section 2.17)."""
    seed = (shared_secret or b"") + ni + nr
    return prf_plus(prf_id, sk_d, seed, length)


@dataclass(frozen=True, slots=True, repr=False)
class ChildSaKeys:
    """Keys of one CHILD SA pair. ``*_i`` protect traffic from the exchange's initiator to its
    responder, ``*_r`` the other way. Integrity keys are empty for AEAD suites."""

    suite: EspSuite
    encr_i: bytes
    integ_i: bytes
    encr_r: bytes
    integ_r: bytes

    def outbound(self, *, initiator: bool) -> tuple[bytes, bytes]:
        """(encryption key, integrity key) for the SA we send on."""
        return (self.encr_i, self.integ_i) if initiator else (self.encr_r, self.integ_r)

    def inbound(self, *, initiator: bool) -> tuple[bytes, bytes]:
        """(encryption key, integrity key) for the SA we receive on."""
        return self.outbound(initiator=not initiator)

    def __repr__(self) -> str:
        return f"ChildSaKeys(suite={self.suite}, keys=<redacted>)"


def derive_child_sa_keys(
    ike: IkeSaKeys, suite: EspSuite, *, ni: bytes, nr: bytes, shared_secret: bytes | None = None
) -> ChildSaKeys:
    """CHILD SA keys from the IKE SA's SK_d and PRF. Keys for initiator-to-responder traffic come
    first; within a direction, the encryption key precedes the integrity key (RFC 7296 section
    2.17). ``shared_secret`` is the new g^ir when the exchange carried KE payloads (PFS)."""
    encr_len, integ_len = suite.encr_key_length, suite.integ_key_length
    keymat = child_keymat(
        ike.suite.prf, ike.sk_d, ni=ni, nr=nr, length=suite.keymat_length, shared_secret=shared_secret
    )
    first = encr_len + integ_len
    return ChildSaKeys(
        suite=suite,
        encr_i=keymat[:encr_len],
        integ_i=keymat[encr_len:first],
        encr_r=keymat[first : first + encr_len],
        integ_r=keymat[first + encr_len :],
    )
