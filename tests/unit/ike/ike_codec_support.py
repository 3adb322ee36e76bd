"""Shared pieces for the IKE codec tests: an AES-GCM-16 AEAD over `cryptography`, sample
messages, and a pcap writer so tshark can read what we encode."""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import struct
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

from trellis.agent.ike.constants import (
    AuthMethod,
    CertEncoding,
    DhId,
    EncrId,
    EsnId,
    ExchangeType,
    IdType,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from trellis.agent.ike.errors import IntegrityCheckFailed
from trellis.agent.ike.message import IkeHeader, Message
from trellis.agent.ike.payloads import (
    Authentication,
    Certificate,
    CertificateRequest,
    Delete,
    IdInitiator,
    IdResponder,
    KeyExchange,
    Nonce,
    Notify,
    Payload,
    Proposal,
    SecurityAssociation,
    TrafficSelector,
    Transform,
    TsInitiator,
    TsResponder,
    VendorId,
)

SALT_LENGTH = 4


class AesGcm16:
    """AES-GCM with a 16-byte ICV as RFC 5282 uses it for IKE: nonce = 4-byte salt || 8-byte IV."""

    def __init__(self, key_and_salt: bytes) -> None:
        self._aead = AESGCM(key_and_salt[:-SALT_LENGTH])
        self._salt = key_and_salt[-SALT_LENGTH:]

    @property
    def iv_length(self) -> int:
        return 8

    @property
    def icv_length(self) -> int:
        return 16

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, iv: bytes, ciphertext_and_icv: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._salt + iv, ciphertext_and_icv, aad)
        except InvalidTag as exc:
            raise IntegrityCheckFailed("ICV mismatch") from exc


KEY_I = bytes(range(32)) + b"\xa0\xa1\xa2\xa3"  # SK_ei: AES-256 key || salt
KEY_R = bytes(range(100, 132)) + b"\xb0\xb1\xb2\xb3"
SPI_I = bytes.fromhex("0102030405060708")
SPI_R = bytes.fromhex("a1a2a3a4a5a6a7a8")


def counter_ivs(start: int = 1) -> Iterator[bytes]:
    value = start
    while True:
        yield value.to_bytes(8, "big")
        value += 1


def ike_proposal() -> Proposal:
    return Proposal(
        number=1,
        protocol=ProtocolId.IKE,
        transforms=(
            Transform(type=TransformType.ENCR, id=EncrId.AES_GCM_16, key_length=256),
            Transform(type=TransformType.PRF, id=PrfId.HMAC_SHA2_256),
            Transform(type=TransformType.DH, id=DhId.CURVE25519),
            Transform(type=TransformType.DH, id=DhId.ECP_256),
        ),
    )


def esp_proposal() -> Proposal:
    return Proposal(
        number=1,
        protocol=ProtocolId.ESP,
        spi=bytes.fromhex("c0ffee01"),
        transforms=(
            Transform(type=TransformType.ENCR, id=EncrId.AES_GCM_16, key_length=128),
            Transform(type=TransformType.ESN, id=EsnId.NO_ESN),
        ),
    )


def ike_sa_init_request() -> Message:
    return Message(
        header=IkeHeader(
            spi_i=SPI_I, exchange=ExchangeType.IKE_SA_INIT, initiator=True, response=False, message_id=0
        ),
        payloads=(
            SecurityAssociation(proposals=(ike_proposal(),)),
            KeyExchange(group=DhId.CURVE25519, data=bytes(range(32))),
            Nonce(data=bytes(range(32, 64))),
            Notify(notify_type=NotifyType.NAT_DETECTION_SOURCE_IP, data=bytes(20)),
            Notify(notify_type=NotifyType.NAT_DETECTION_DESTINATION_IP, data=bytes(range(20))),
            Notify(notify_type=NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),
            Notify(notify_type=NotifyType.SIGNATURE_HASH_ALGORITHMS, data=bytes.fromhex("000200030004")),
            VendorId(data=b"trellis"),
        ),
    )


@functools.cache
def sample_certificate() -> bytes:
    """A real DER certificate (self-signed Ed25519), so decoders that parse CERT data see one."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "branch-a.example")])
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(hours=1))
        .sign(key, None)
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def ike_auth_payloads(certificates: int = 1) -> tuple[Payload, ...]:
    """IKE_AUTH-like payloads; ``certificates`` CERT payloads make the message as large as needed."""
    certs = tuple(
        Certificate(encoding=CertEncoding.X509_SIGNATURE, data=sample_certificate())
        for _ in range(certificates)
    )
    return (
        IdInitiator(id_type=IdType.ID_FQDN, data=b"branch-a.example"),
        *certs,
        CertificateRequest(encoding=CertEncoding.X509_SIGNATURE, authorities=(bytes(20), bytes(range(20)))),
        IdResponder(
            id_type=IdType.ID_DER_ASN1_DN,
            data=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "branch-b.example")]).public_bytes(),
        ),
        Authentication(method=AuthMethod.DIGITAL_SIGNATURE, data=b"\x08" + bytes(72)),
        Notify(notify_type=NotifyType.INITIAL_CONTACT),
        SecurityAssociation(proposals=(esp_proposal(),)),
        TsInitiator(
            selectors=(
                TrafficSelector(
                    start_address=ipaddress.ip_address("10.1.0.0"),
                    end_address=ipaddress.ip_address("10.1.0.255"),
                ),
                TrafficSelector(
                    ip_protocol=17,
                    start_port=53,
                    end_port=53,
                    start_address=ipaddress.ip_address("2001:db8::"),
                    end_address=ipaddress.ip_address("2001:db8::ffff"),
                ),
            )
        ),
        TsResponder(
            selectors=(
                TrafficSelector(
                    ip_protocol=6,
                    start_port=443,
                    end_port=443,
                    start_address=ipaddress.ip_address("10.2.0.1"),
                    end_address=ipaddress.ip_address("10.2.0.1"),
                ),
            )
        ),
        Delete(protocol_id=ProtocolId.ESP, spis=(bytes.fromhex("11223344"), bytes.fromhex("55667788"))),
    )


def ike_auth_request(certificates: int = 1) -> Message:
    return Message(
        header=IkeHeader(
            spi_i=SPI_I,
            spi_r=SPI_R,
            exchange=ExchangeType.IKE_AUTH,
            initiator=True,
            response=False,
            message_id=1,
        ),
        payloads=ike_auth_payloads(certificates),
    )


# --- pcap -------------------------------------------------------------------------------------

_LINKTYPE_RAW = 101  # packets start with the IP header


def _ipv4_udp(payload: bytes, *, src: str, dst: str, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0x4000,
        64,
        17,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    words = struct.unpack("!10H", header)
    checksum = sum(words)
    checksum = (checksum & 0xFFFF) + (checksum >> 16)
    checksum = (checksum & 0xFFFF) + (checksum >> 16)
    return header[:10] + struct.pack("!H", ~checksum & 0xFFFF) + header[12:] + udp


def write_pcap(path: Path, datagrams: Iterable[bytes], *, sport: int = 500, dport: int = 500) -> None:
    """UDP datagrams from 192.0.2.1 to 198.51.100.1, one per packet."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, _LINKTYPE_RAW)]
    for index, datagram in enumerate(datagrams):
        packet = _ipv4_udp(datagram, src="192.0.2.1", dst="198.51.100.1", sport=sport, dport=dport)
        out.append(struct.pack("<IIII", 1_700_000_000 + index, 0, len(packet), len(packet)))
        out.append(packet)
    path.write_bytes(b"".join(out))


def tshark_fields(
    pcap: Path, fields: Sequence[str], *, options: Sequence[str] = (), display_filter: str = ""
) -> list[dict[str, list[str]]]:
    """One dict per packet: field name -> every value tshark shows for it, in order."""
    command = ["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E", "separator=\t", "-E", "aggregator=|"]
    for option in options:
        command += ["-o", option]
    if display_filter:
        command += ["-Y", display_filter]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=60)
    rows = []
    for line in result.stdout.splitlines():
        values = line.split("\t")
        rows.append(
            {field: (value.split("|") if value else []) for field, value in zip(fields, values, strict=True)}
        )
    return rows
