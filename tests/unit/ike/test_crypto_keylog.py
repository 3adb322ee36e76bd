"""Key-log lines, checked by tshark: it must decrypt, with our line, an IKE_AUTH-like message that
we encrypted with derived keys, and verify its ICV."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from trellis.agent.ike.constants import DhId, EncrId, ExchangeType, HeaderFlag, IdType, PayloadType, PrfId
from trellis.agent.ike.crypto.aead import sk_aeads
from trellis.agent.ike.crypto.dh import KeyExchange
from trellis.agent.ike.crypto.keylog import ikev2_decryption_table_line
from trellis.agent.ike.crypto.keys import IkeSaKeys, initial_ike_sa_keys
from trellis.agent.ike.crypto.suites import IkeSuite
from trellis.agent.ike.errors import IkeLocalError

TSHARK = shutil.which("tshark")
SPI_I, SPI_R = bytes.fromhex("8a3b1c2d4e5f6071"), bytes.fromhex("0f1e2d3c4b5a6978")
FQDN = b"branch-a.example.org"


def _derived_keys(suite: IkeSuite) -> IkeSaKeys:
    initiator, responder = KeyExchange.generate(suite.dh), KeyExchange.generate(suite.dh)
    shared = initiator.shared_secret(responder.public_data)
    assert shared == responder.shared_secret(initiator.public_data)
    return initial_ike_sa_keys(
        suite, shared, ni=bytes(range(32)), nr=bytes(range(1, 33)), spi_i=SPI_I, spi_r=SPI_R
    )


def _ike_auth_request(keys: IkeSaKeys) -> bytes:
    """An IKE_AUTH request whose SK payload holds one IDi (RFC 7296 sections 3.1, 3.5, 3.14;
    AAD per RFC 5282 section 5.1: IKE header and SK payload header)."""
    id_body = bytes((IdType.ID_FQDN, 0, 0, 0)) + FQDN
    inner = bytes((PayloadType.NONE, 0)) + (4 + len(id_body)).to_bytes(2, "big") + id_body
    plaintext = inner + b"\x00"  # no padding, Pad Length 0
    outbound, _ = sk_aeads(keys, initiator=True)
    sk_length = 4 + outbound.iv_length + len(plaintext) + outbound.icv_length
    header = (
        SPI_I
        + SPI_R
        + bytes((PayloadType.SK, 0x20, ExchangeType.IKE_AUTH, HeaderFlag.INITIATOR))
        + (1).to_bytes(4, "big")  # message ID
        + (28 + sk_length).to_bytes(4, "big")
    )
    sk_header = bytes((PayloadType.IDi, 0)) + sk_length.to_bytes(2, "big")
    iv = outbound.next_iv()
    return header + sk_header + iv + outbound.seal(iv, plaintext, header + sk_header)


def _pcap(udp_payload: bytes) -> bytes:
    """A one-packet pcap, link type RAW (101): IPv4 192.0.2.1 -> 192.0.2.2, UDP 500 -> 500."""
    udp = (500).to_bytes(2, "big") * 2 + (8 + len(udp_payload)).to_bytes(2, "big") + b"\x00\x00" + udp_payload
    ip = (
        bytes((0x45, 0))
        + (20 + len(udp)).to_bytes(2, "big")
        + bytes(4)
        + bytes((64, 17))
        + bytes(2)
        + bytes((192, 0, 2, 1, 192, 0, 2, 2))
    )
    packet = ip + udp
    global_header = (
        (0xA1B2C3D4).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (4).to_bytes(2, "little")
        + bytes(8)
        + (65535).to_bytes(4, "little")
        + (101).to_bytes(4, "little")
    )
    record = bytes(8) + len(packet).to_bytes(4, "little") * 2
    return global_header + record + packet


def _tshark_decode(tmp_path: Path, message: bytes, line: str) -> str:
    assert TSHARK is not None
    capture = tmp_path / "ike.pcap"
    capture.write_bytes(_pcap(message))
    result = subprocess.run(
        [TSHARK, "-r", str(capture), "-V", "-o", f"uat:ikev2_decryption_table:{line}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
@pytest.mark.parametrize("bits", [128, 256])
def test_tshark_decrypts_with_our_line(tmp_path: Path, bits: int) -> None:
    suite = IkeSuite(encr=EncrId.AES_GCM_16, key_bits=bits, prf=PrfId.HMAC_SHA2_256, dh=DhId.CURVE25519)
    keys = _derived_keys(suite)
    line = ikev2_decryption_table_line(SPI_I, SPI_R, keys)
    assert line is not None
    decoded = _tshark_decode(tmp_path, _ike_auth_request(keys), line)
    assert f"AES-GCM-{bits} with 16 octet ICV [RFC5282]" in decoded
    assert f"ID_FQDN: {FQDN.decode()}" in decoded
    assert "[correct]" in decoded  # tshark checked the ICV itself


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_tshark_refuses_a_line_with_another_key(tmp_path: Path) -> None:
    suite = IkeSuite(encr=EncrId.AES_GCM_16, key_bits=256, prf=PrfId.HMAC_SHA2_256, dh=DhId.CURVE25519)
    keys, other = _derived_keys(suite), _derived_keys(suite)
    line = ikev2_decryption_table_line(SPI_I, SPI_R, other)
    assert line is not None
    decoded = _tshark_decode(tmp_path, _ike_auth_request(keys), line)
    assert "ID_FQDN" not in decoded
    assert "[correct]" not in decoded
    assert "Integrity Checksum Data is incorrect" in decoded


def test_line_format() -> None:
    suite = IkeSuite(encr=EncrId.AES_GCM_16, key_bits=128, prf=PrfId.HMAC_SHA2_256, dh=DhId.ECP_256)
    keys = _derived_keys(suite)
    line = ikev2_decryption_table_line(SPI_I, SPI_R, keys)
    assert line == (
        f"{SPI_I.hex()},{SPI_R.hex()},{keys.sk_ei.hex()},{keys.sk_er.hex()},"
        '"AES-GCM-128 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"'
    )


def test_chacha20_has_no_wireshark_line() -> None:
    suite = IkeSuite(encr=EncrId.CHACHA20_POLY1305, key_bits=256, prf=PrfId.HMAC_SHA2_256, dh=DhId.CURVE25519)
    assert ikev2_decryption_table_line(SPI_I, SPI_R, _derived_keys(suite)) is None


def test_spis_must_be_eight_bytes() -> None:
    suite = IkeSuite(encr=EncrId.AES_GCM_16, key_bits=128, prf=PrfId.HMAC_SHA2_256, dh=DhId.ECP_256)
    with pytest.raises(IkeLocalError):
        ikev2_decryption_table_line(SPI_I[:4], SPI_R, _derived_keys(suite))
