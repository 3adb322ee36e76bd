"""Key derivation (RFC 7296 sections 2.14, 2.17, 2.18): the formulas against the NIST CAVS IKEv2
KDF vector, then how our suites slice the key streams."""

from __future__ import annotations

import pytest

from trellis.agent.ike.constants import DhId, EncrId, PrfId
from trellis.agent.ike.crypto.keys import (
    ChildSaKeys,
    IkeSaKeys,
    child_keymat,
    derive_child_sa_keys,
    derive_ike_sa_keys,
    initial_ike_sa_keys,
    rekey_skeyseed,
    rekeyed_ike_sa_keys,
    skeyseed,
)
from trellis.agent.ike.crypto.prf import prf, prf_plus
from trellis.agent.ike.crypto.suites import EspSuite, IkeSuite
from trellis.agent.ike.errors import IkeLocalError

h = bytes.fromhex

# NIST CAVS IKEv2 KDF (SP 800-135 component test) SHA-1 vector, as quoted by libreswan's CAVS
# test program; HMAC-SHA1 is the PRF ("-h 2"). Every formula of RFC 7296 is exercised once.
CAVS = {
    "g^ir": h("4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52"),
    "g^ir (new)": h("863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330"),
    "Ni": h("32b50d5f4a3763f3"),
    "Nr": h("9206a04b26564cb1"),
    "SPIi": h("34c9e7c188868785"),
    "SPIr": h("3ff77d760d2b2199"),
    "SKEYSEED": h("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7"),
    "DKM": h(
        "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062768b7660"
        "6f9fa5e992204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa280870d2ed"
        "41efa9c549fd11198af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435a7a56cc4"
    ),
    "DKM(Child SA)": h(
        "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdabd9560b2d5e0"
        "92d1f24e2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20"
        "754a2d883ba0c2cf285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e664994d234cb4"
    ),
    "DKM(Child SA D-H)": h(
        "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c66232eab4b3ab14"
        "c400a5197dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8b"
        "bb5ffb7857240f9a05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054d56fd74c"
    ),
    "SKEYSEED(Rekey)": h("63e81194946ebd05df7df5ebf5d8750056bf1f1d"),
}
SHA1 = PrfId.HMAC_SHA1


def test_skeyseed_cavs() -> None:
    assert skeyseed(SHA1, CAVS["g^ir"], CAVS["Ni"], CAVS["Nr"]) == CAVS["SKEYSEED"]


def test_dkm_cavs() -> None:
    seed = CAVS["Ni"] + CAVS["Nr"] + CAVS["SPIi"] + CAVS["SPIr"]
    assert prf_plus(SHA1, CAVS["SKEYSEED"], seed, 132) == CAVS["DKM"]


def test_child_keymat_cavs() -> None:
    sk_d = CAVS["DKM"][:20]  # SK_d comes first, one PRF output long
    plain = child_keymat(SHA1, sk_d, ni=CAVS["Ni"], nr=CAVS["Nr"], length=132)
    pfs = child_keymat(SHA1, sk_d, ni=CAVS["Ni"], nr=CAVS["Nr"], length=132, shared_secret=CAVS["g^ir (new)"])
    assert plain == CAVS["DKM(Child SA)"]
    assert pfs == CAVS["DKM(Child SA D-H)"]


def test_rekey_skeyseed_cavs() -> None:
    sk_d = CAVS["DKM"][:20]
    assert rekey_skeyseed(SHA1, sk_d, CAVS["g^ir (new)"], CAVS["Ni"], CAVS["Nr"]) == CAVS["SKEYSEED(Rekey)"]


GCM256_SHA256 = IkeSuite(encr=EncrId.AES_GCM_16, key_bits=256, prf=PrfId.HMAC_SHA2_256, dh=DhId.CURVE25519)
NI, NR = bytes(range(32)), bytes(range(32, 64))
SPI_I, SPI_R = h("0102030405060708"), h("1112131415161718")
SHARED = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_ike_sa_keys_slice_the_stream_in_rfc_order() -> None:
    keys = initial_ike_sa_keys(GCM256_SHA256, SHARED, ni=NI, nr=NR, spi_i=SPI_I, spi_r=SPI_R)
    stream = prf_plus(
        PrfId.HMAC_SHA2_256, prf(PrfId.HMAC_SHA2_256, NI + NR, SHARED), NI + NR + SPI_I + SPI_R, 168
    )
    # SK_d 32 | SK_ai 0 | SK_ar 0 | SK_ei 32+4 | SK_er 32+4 | SK_pi 32 | SK_pr 32
    assert (keys.sk_d, keys.sk_ai, keys.sk_ar) == (stream[:32], b"", b"")
    assert (keys.sk_ei, keys.sk_er) == (stream[32:68], stream[68:104])
    assert (keys.sk_pi, keys.sk_pr) == (stream[104:136], stream[136:168])


@pytest.mark.parametrize(
    ("suite", "encr_len", "prf_len"),
    [
        (IkeSuite(encr=EncrId.AES_GCM_16, key_bits=128, prf=PrfId.HMAC_SHA2_384, dh=DhId.ECP_384), 20, 48),
        (
            IkeSuite(encr=EncrId.CHACHA20_POLY1305, key_bits=256, prf=PrfId.HMAC_SHA2_512, dh=DhId.ECP_256),
            36,
            64,
        ),
    ],
)
def test_key_lengths_per_suite(suite: IkeSuite, encr_len: int, prf_len: int) -> None:
    keys = initial_ike_sa_keys(suite, SHARED, ni=NI, nr=NR, spi_i=SPI_I, spi_r=SPI_R)
    assert len(keys.sk_ei) == len(keys.sk_er) == encr_len
    assert len(keys.sk_d) == len(keys.sk_pi) == len(keys.sk_pr) == prf_len
    assert keys.sk_ai == keys.sk_ar == b""


def test_spis_must_be_eight_bytes() -> None:
    with pytest.raises(IkeLocalError):
        derive_ike_sa_keys(GCM256_SHA256, b"seed", ni=NI, nr=NR, spi_i=SPI_I[:4], spi_r=SPI_R)


def test_rekey_uses_old_prf_for_skeyseed_and_new_prf_for_the_keys() -> None:
    old_suite = IkeSuite(encr=EncrId.AES_GCM_16, key_bits=256, prf=PrfId.HMAC_SHA2_512, dh=DhId.ECP_256)
    old = initial_ike_sa_keys(old_suite, SHARED, ni=NI, nr=NR, spi_i=SPI_I, spi_r=SPI_R)
    new_ni, new_nr, new_spi_i, new_spi_r = NR, NI, SPI_R, SPI_I
    new_shared = bytes(range(100, 132))
    new = rekeyed_ike_sa_keys(
        old, GCM256_SHA256, new_shared, ni=new_ni, nr=new_nr, spi_i=new_spi_i, spi_r=new_spi_r
    )
    seed = prf(PrfId.HMAC_SHA2_512, old.sk_d, new_shared + new_ni + new_nr)
    expected = derive_ike_sa_keys(GCM256_SHA256, seed, ni=new_ni, nr=new_nr, spi_i=new_spi_i, spi_r=new_spi_r)
    assert new == expected
    assert len(new.sk_d) == 32  # the new PRF's length, not the old one's
    assert new.sk_d != old.sk_d


@pytest.mark.parametrize("pfs", [False, True])
def test_child_keys_initiator_to_responder_first(pfs: bool) -> None:
    ike = initial_ike_sa_keys(GCM256_SHA256, SHARED, ni=NI, nr=NR, spi_i=SPI_I, spi_r=SPI_R)
    esp = EspSuite(encr=EncrId.AES_GCM_16, key_bits=128, pfs_group=DhId.CURVE25519 if pfs else None)
    new_shared = bytes(range(7, 39)) if pfs else None
    child = derive_child_sa_keys(ike, esp, ni=NR, nr=NI, shared_secret=new_shared)
    keymat = child_keymat(PrfId.HMAC_SHA2_256, ike.sk_d, ni=NR, nr=NI, length=40, shared_secret=new_shared)
    assert esp.keymat_length == 40
    assert child.encr_i == keymat[:20] and child.encr_r == keymat[20:40]
    assert child.integ_i == child.integ_r == b""
    assert child.outbound(initiator=True) == child.inbound(initiator=False) == (keymat[:20], b"")
    assert child.outbound(initiator=False) == child.inbound(initiator=True) == (keymat[20:], b"")


def test_reprs_never_show_key_bytes() -> None:
    ike = initial_ike_sa_keys(GCM256_SHA256, SHARED, ni=NI, nr=NR, spi_i=SPI_I, spi_r=SPI_R)
    child = derive_child_sa_keys(ike, EspSuite(encr=EncrId.AES_GCM_16, key_bits=256), ni=NI, nr=NR)
    for obj in (ike, child):
        text = repr(obj) + str(obj)
        assert "redacted" in text
        for value in (ike.sk_d, ike.sk_ei, ike.sk_er, ike.sk_pi, child.encr_i, child.encr_r):
            assert value.hex() not in text
            assert repr(value) not in text
    assert isinstance(ike, IkeSaKeys) and isinstance(child, ChildSaKeys)
