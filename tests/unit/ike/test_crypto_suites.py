"""Suites: only combinations we can run, with the key lengths of RFC 5282, 4106, 4543 and 7634."""

from __future__ import annotations

import pytest

from trellis.agent.ike.constants import DhId, EncrId, PrfId
from trellis.agent.ike.crypto.suites import DEFAULT_ESP_SUITES, DEFAULT_IKE_SUITES, EspSuite, IkeSuite
from trellis.agent.ike.errors import IkeLocalError


@pytest.mark.parametrize(
    ("suite", "encr_len", "prf_len", "name"),
    [
        (
            IkeSuite(encr=EncrId.AES_GCM_16, key_bits=128, prf=PrfId.HMAC_SHA2_256, dh=DhId.CURVE25519),
            20,
            32,
            "aes128gcm16-prfsha256-x25519",
        ),
        (
            IkeSuite(encr=EncrId.AES_GCM_16, key_bits=256, prf=PrfId.HMAC_SHA2_384, dh=DhId.ECP_256),
            36,
            48,
            "aes256gcm16-prfsha384-ecp256",
        ),
        (
            IkeSuite(encr=EncrId.CHACHA20_POLY1305, key_bits=256, prf=PrfId.HMAC_SHA2_512, dh=DhId.ECP_384),
            36,
            64,
            "chacha20poly1305-prfsha512-ecp384",
        ),
    ],
)
def test_ike_suite_lengths(suite: IkeSuite, encr_len: int, prf_len: int, name: str) -> None:
    assert suite.encr_key_length == encr_len  # key | 4-byte salt
    assert suite.integ_key_length == 0
    assert suite.prf_key_length == prf_len
    assert str(suite) == name


@pytest.mark.parametrize(
    ("encr", "bits", "encr_len", "integrity_only"),
    [
        (EncrId.AES_GCM_16, 128, 20, False),
        (EncrId.AES_GCM_16, 256, 36, False),
        (EncrId.CHACHA20_POLY1305, 256, 36, False),
        (EncrId.NULL_AUTH_AES_GMAC, 128, 20, True),
        (EncrId.NULL_AUTH_AES_GMAC, 256, 36, True),
    ],
)
def test_esp_suite_lengths(encr: EncrId, bits: int, encr_len: int, integrity_only: bool) -> None:
    suite = EspSuite(encr=encr, key_bits=bits, esn=True, pfs_group=DhId.ECP_256)
    assert suite.encr_key_length == encr_len
    assert suite.keymat_length == 2 * encr_len
    assert suite.integrity_only is integrity_only
    assert str(suite).endswith("-ecp256-esn")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"encr": EncrId.AES_CBC, "key_bits": 256, "prf": PrfId.HMAC_SHA2_256, "dh": DhId.CURVE25519},
        {"encr": EncrId.AES_GCM_16, "key_bits": 192, "prf": PrfId.HMAC_SHA2_256, "dh": DhId.CURVE25519},
        {
            "encr": EncrId.CHACHA20_POLY1305,
            "key_bits": 128,
            "prf": PrfId.HMAC_SHA2_256,
            "dh": DhId.CURVE25519,
        },
        {
            "encr": EncrId.NULL_AUTH_AES_GMAC,
            "key_bits": 128,
            "prf": PrfId.HMAC_SHA2_256,
            "dh": DhId.CURVE25519,
        },
        {"encr": EncrId.AES_GCM_16, "key_bits": 256, "prf": PrfId.HMAC_SHA1, "dh": DhId.CURVE25519},
        {"encr": EncrId.AES_GCM_16, "key_bits": 256, "prf": PrfId.HMAC_SHA2_256, "dh": DhId.MODP_2048},
    ],
)
def test_unsupported_ike_suites_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(IkeLocalError):
        IkeSuite(**kwargs)  # type: ignore[arg-type]


def test_unsupported_esp_suites_refused() -> None:
    with pytest.raises(IkeLocalError):
        EspSuite(encr=EncrId.AES_CBC, key_bits=128)
    with pytest.raises(IkeLocalError):
        EspSuite(encr=EncrId.AES_GCM_16, key_bits=256, pfs_group=DhId.MODP_2048)


def test_defaults_prefer_aes256gcm16_sha256_x25519() -> None:
    assert str(DEFAULT_IKE_SUITES[0]) == "aes256gcm16-prfsha256-x25519"
    assert str(DEFAULT_ESP_SUITES[0]) == "aes256gcm16"
