"""prf and prf+ (RFC 7296 section 2.13) against published vectors."""

from __future__ import annotations

import pytest

from trellis.agent.ike.constants import PrfId
from trellis.agent.ike.crypto.prf import MAX_PRF_PLUS_ITERATIONS, prf, prf_output_length, prf_plus
from trellis.agent.ike.errors import IkeLocalError

h = bytes.fromhex

# RFC 4231 section 4.2 (test case 1), 4.3 (test case 2), 4.7 (test case 6)
RFC4231_CASES = [
    ("case 1", h("0b" * 20), b"Hi There"),
    ("case 2", b"Jefe", b"what do ya want for nothing?"),
    ("case 6", h("aa" * 131), b"Test Using Larger Than Block-Size Key - Hash Key First"),
]
RFC4231_MACS = {
    PrfId.HMAC_SHA2_256: [
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    ],
    PrfId.HMAC_SHA2_384: [
        "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
        "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
        "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952",
    ],
    PrfId.HMAC_SHA2_512: [
        "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
        "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
        "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
        "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
    ],
}


@pytest.mark.parametrize("prf_id", list(RFC4231_MACS))
@pytest.mark.parametrize("index", range(len(RFC4231_CASES)))
def test_prf_is_hmac_rfc4231(prf_id: PrfId, index: int) -> None:
    _, key, data = RFC4231_CASES[index]
    assert prf(prf_id, key, data) == h(RFC4231_MACS[prf_id][index])


def test_output_lengths() -> None:
    assert prf_output_length(PrfId.HMAC_SHA2_256) == 32
    assert prf_output_length(PrfId.HMAC_SHA2_384) == 48
    assert prf_output_length(PrfId.HMAC_SHA2_512) == 64


# NIST CAVS IKEv2 KDF (SP 800-135) SHA-1 vector, as quoted by libreswan's CAVS test program:
# DKM = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr), 132 bytes, so 7 chained blocks of HMAC-SHA1.
CAVS_SKEYSEED = h("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7")
CAVS_SEED = h("32b50d5f4a3763f39206a04b26564cb134c9e7c1888687853ff77d760d2b2199")
CAVS_DKM = h(
    "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062768b7660"
    "6f9fa5e992204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa280870d2ed"
    "41efa9c549fd11198af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435a7a56cc4"
)


def test_prf_plus_cavs_vector() -> None:
    assert prf_plus(PrfId.HMAC_SHA1, CAVS_SKEYSEED, CAVS_SEED, 132) == CAVS_DKM


def test_prf_plus_truncates_and_is_a_prefix_stream() -> None:
    assert prf_plus(PrfId.HMAC_SHA1, CAVS_SKEYSEED, CAVS_SEED, 50) == CAVS_DKM[:50]


def test_prf_plus_bounded_to_255_iterations() -> None:
    longest = MAX_PRF_PLUS_ITERATIONS * 32
    assert len(prf_plus(PrfId.HMAC_SHA2_256, b"k", b"s", longest)) == longest
    with pytest.raises(IkeLocalError):
        prf_plus(PrfId.HMAC_SHA2_256, b"k", b"s", longest + 1)


def test_unknown_prf_is_local_error() -> None:
    with pytest.raises(IkeLocalError):
        prf(4, b"k", b"d")  # type: ignore[arg-type]  # 4 = PRF_HMAC_TIGER, never implemented
