"""The SK payload AEAD against the GCM specification and RFC 8439 vectors."""

from __future__ import annotations

import pytest

from trellis.agent.ike.constants import DhId, EncrId, PrfId
from trellis.agent.ike.crypto.aead import SkAead, sk_aeads
from trellis.agent.ike.crypto.keys import initial_ike_sa_keys
from trellis.agent.ike.crypto.suites import IkeSuite
from trellis.agent.ike.errors import IkeLocalError, IntegrityCheckFailed

h = bytes.fromhex

# McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 4 (AES-128) and 16 (AES-256):
# 96-bit IV cafebabefacedbaddecaf888, which is exactly salt cafebabe | IV facedbaddecaf888.
GCM_KEY_128 = h("feffe9928665731c6d6a8f9467308308")
GCM_KEY_256 = GCM_KEY_128 * 2
GCM_SALT, GCM_IV = h("cafebabe"), h("facedbaddecaf888")
GCM_PLAINTEXT = h(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
)
GCM_AAD = h("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_CASE_4 = h(
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"
    "5bc94fbc3221a5db94fae95ae7121a47"  # tag
)
GCM_CASE_16 = h(
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
    "76fc6ece0f4e1768cddf8853bb2d551b"  # tag
)

# RFC 8439 section 2.8.2: nonce 07000000 | 4041424344454647, i.e. salt | IV as in RFC 7634.
CHACHA_KEY = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
CHACHA_SALT, CHACHA_IV = h("07000000"), h("4041424344454647")
CHACHA_AAD = h("50515253c0c1c2c3c4c5c6c7")
CHACHA_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    b"sunscreen would be it."
)
CHACHA_SEALED = h(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
    "1ae10b594f09e26a7e902ecbd0600691"  # tag
)

VECTORS = [
    pytest.param(
        EncrId.AES_GCM_16, GCM_KEY_128 + GCM_SALT, GCM_IV, GCM_PLAINTEXT, GCM_AAD, GCM_CASE_4, id="gcm-4"
    ),
    pytest.param(
        EncrId.AES_GCM_16, GCM_KEY_256 + GCM_SALT, GCM_IV, GCM_PLAINTEXT, GCM_AAD, GCM_CASE_16, id="gcm-16"
    ),
    pytest.param(
        EncrId.CHACHA20_POLY1305,
        CHACHA_KEY + CHACHA_SALT,
        CHACHA_IV,
        CHACHA_PLAINTEXT,
        CHACHA_AAD,
        CHACHA_SEALED,
        id="rfc8439-2.8.2",
    ),
]


@pytest.mark.parametrize(("encr", "key", "iv", "plaintext", "aad", "sealed"), VECTORS)
def test_seal_and_open_vectors(  # noqa: PLR0917
    encr: EncrId, key: bytes, iv: bytes, plaintext: bytes, aad: bytes, sealed: bytes
) -> None:
    aead = SkAead(encr, key)
    assert (aead.iv_length, aead.icv_length) == (8, 16)
    assert aead.seal(iv, plaintext, aad) == sealed
    assert aead.open(iv, sealed, aad) == plaintext


@pytest.mark.parametrize(("encr", "key", "iv", "plaintext", "aad", "sealed"), VECTORS)
def test_any_change_fails_integrity(  # noqa: PLR0917
    encr: EncrId, key: bytes, iv: bytes, plaintext: bytes, aad: bytes, sealed: bytes
) -> None:
    aead = SkAead(encr, key)
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    bad_tag = sealed[:-1] + bytes([sealed[-1] ^ 0x80])
    for args in ((iv, flipped, aad), (iv, bad_tag, aad), (iv, sealed, aad + b"x"), (bytes(8), sealed, aad)):
        with pytest.raises(IntegrityCheckFailed) as caught:
            aead.open(*args)
        assert caught.value.notify is None  # dropped silently, RFC 7296 section 2.21
    with pytest.raises(IntegrityCheckFailed):
        aead.open(iv, sealed[:15], aad)
    with pytest.raises(IntegrityCheckFailed):
        SkAead(encr, bytes(len(key))).open(iv, sealed, aad)


def test_wrong_key_or_iv_length_is_local_error() -> None:
    with pytest.raises(IkeLocalError):
        SkAead(EncrId.AES_GCM_16, bytes(24))  # 20-byte key: not AES
    with pytest.raises(IkeLocalError):
        SkAead(EncrId.CHACHA20_POLY1305, bytes(20))
    with pytest.raises(IkeLocalError):
        SkAead(EncrId.AES_CBC, bytes(36))
    with pytest.raises(IkeLocalError):
        SkAead(EncrId.AES_GCM_16, bytes(20)).seal(bytes(12), b"", b"")


def test_next_iv_never_repeats() -> None:
    aead = SkAead(EncrId.AES_GCM_16, bytes(20))
    ivs = [aead.next_iv() for _ in range(1000)]
    assert len(set(ivs)) == 1000
    assert all(len(iv) == 8 for iv in ivs)


@pytest.mark.parametrize("encr", [EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305])
def test_initiator_and_responder_transforms_pair_up(encr: EncrId) -> None:
    suite = IkeSuite(encr=encr, key_bits=256, prf=PrfId.HMAC_SHA2_256, dh=DhId.CURVE25519)
    keys = initial_ike_sa_keys(suite, bytes(32), ni=bytes(16), nr=bytes(16), spi_i=bytes(8), spi_r=bytes(8))
    i_out, i_in = sk_aeads(keys, initiator=True)
    r_out, r_in = sk_aeads(keys, initiator=False)
    iv = i_out.next_iv()
    assert r_in.open(iv, i_out.seal(iv, b"request", b"hdr"), b"hdr") == b"request"
    assert i_in.open(iv, r_out.seal(iv, b"response", b"hdr"), b"hdr") == b"response"
    with pytest.raises(IntegrityCheckFailed):  # the two directions have different keys
        i_in.open(iv, i_out.seal(iv, b"request", b"hdr"), b"hdr")
    assert repr(i_out) == f"SkAead(encr={encr.name})"
