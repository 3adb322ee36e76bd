"""Payload codecs: byte-exact vectors written from the RFC 7296 / RFC 7383 diagrams, round trips
of every payload type, tolerance of the unknown (RFC 7296 3.3.6, 2.5) and refusal of the invalid."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings

from tests.unit.ike.ike_codec_strategies import clear_payloads, encrypted_payloads
from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import (
    AuthMethod,
    CertEncoding,
    DhId,
    EncrId,
    IdType,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from trellis.agent.ike.errors import (
    EncodingError,
    InvalidFragment,
    MalformedMessage,
    TsUnacceptable,
    UnsupportedCriticalPayload,
)
from trellis.agent.ike.payloads import (
    Authentication,
    Certificate,
    CertificateRequest,
    Delete,
    Encrypted,
    EncryptedFragment,
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
    TransformAttribute,
    TsInitiator,
    TsResponder,
    UnknownPayload,
    VendorId,
    pull_payloads,
    push_payloads,
)
from trellis.agent.ike.payloads.limits import (
    MAX_CERTREQ_AUTHORITIES,
    MAX_PAYLOADS,
    MAX_PROPOSALS,
    MAX_TRAFFIC_SELECTORS,
    MAX_TRANSFORMS_PER_PROPOSAL,
)


def encode(*payloads: Payload) -> tuple[int, bytes]:
    buf = Buffer()
    first = push_payloads(buf, payloads)
    return first, buf.data()


def decode(first: int, data: bytes) -> tuple[Payload, ...]:
    return pull_payloads(Buffer(data), first)


def h(text: str) -> bytes:
    """Hex with spaces and line breaks allowed, so vectors can follow the RFC diagrams."""
    return bytes.fromhex("".join(text.split()))


# --- byte-exact vectors ------------------------------------------------------------------------

# Each vector: the payload, and its wire form as a lone payload (Next Payload 0) written field
# by field from the RFC 7296 section 3 diagrams.
VECTORS: list[tuple[Payload, str]] = [
    (
        SecurityAssociation(
            proposals=(
                Proposal(
                    number=1,
                    protocol=ProtocolId.IKE,
                    transforms=(
                        Transform(type=TransformType.ENCR, id=EncrId.AES_GCM_16, key_length=256),
                        Transform(type=TransformType.PRF, id=PrfId.HMAC_SHA2_256),
                        Transform(type=TransformType.DH, id=DhId.CURVE25519),
                    ),
                ),
                Proposal(
                    number=2,
                    protocol=ProtocolId.ESP,
                    spi=h("c0ffee01"),
                    transforms=(Transform(type=TransformType.ENCR, id=EncrId.CHACHA20_POLY1305),),
                ),
            )
        ),
        """
        00 00 00 3c
          02 00 00 24  01 01 00 03
            03 00 00 0c  01 00 00 14  80 0e 01 00
            03 00 00 08  02 00 00 05
            00 00 00 08  04 00 00 1f
          00 00 00 14  02 03 04 01  c0 ff ee 01
            00 00 00 08  01 00 00 1c
        """,
    ),
    (
        KeyExchange(group=DhId.ECP_256, data=bytes(range(8))),
        "00 00 00 10  00 13 00 00  0001020304050607",
    ),
    (Nonce(data=bytes(16)), "00 00 00 14" + "00" * 16),
    (IdInitiator(id_type=IdType.ID_FQDN, data=b"a.example"), "00 00 00 11  02 00 00 00" + b"a.example".hex()),
    (
        IdResponder(id_type=IdType.ID_IPV4_ADDR, data=bytes([192, 0, 2, 1])),
        "00 00 00 0c  01 00 00 00  c0 00 02 01",
    ),
    (Certificate(encoding=CertEncoding.X509_SIGNATURE, data=h("3082")), "00 00 00 07  04 30 82"),
    (
        CertificateRequest(encoding=CertEncoding.X509_SIGNATURE, authorities=(bytes(20), b"\x11" * 20)),
        "00 00 00 2d  04" + "00" * 20 + "11" * 20,
    ),
    (Authentication(method=AuthMethod.DIGITAL_SIGNATURE, data=h("08")), "00 00 00 09  0e 00 00 00  08"),
    (
        Notify(notify_type=NotifyType.REKEY_SA, protocol_id=ProtocolId.ESP, spi=h("deadbeef")),
        "00 00 00 0c  03 04 40 09  de ad be ef",
    ),
    (
        Notify(notify_type=NotifyType.COOKIE, data=h("abcd")),
        "00 00 00 0a  00 00 40 06  ab cd",
    ),
    (
        Delete(protocol_id=ProtocolId.ESP, spis=(h("11223344"), h("55667788"))),
        "00 00 00 10  03 04 00 02  11 22 33 44  55 66 77 88",
    ),
    (Delete(protocol_id=ProtocolId.IKE), "00 00 00 08  01 00 00 00"),
    (VendorId(data=b"trellis"), "00 00 00 0b" + b"trellis".hex()),
    (
        TsInitiator(
            selectors=(
                TrafficSelector(
                    start_address=ipaddress.IPv4Address("10.1.0.0"),
                    end_address=ipaddress.IPv4Address("10.1.0.255"),
                ),
            )
        ),
        "00 00 00 18  01 00 00 00  07 00 00 10  00 00 ff ff  0a 01 00 00  0a 01 00 ff",
    ),
    (
        TsResponder(
            selectors=(
                TrafficSelector(
                    ip_protocol=17,
                    start_port=53,
                    end_port=53,
                    start_address=ipaddress.IPv6Address("2001:db8::1"),
                    end_address=ipaddress.IPv6Address("2001:db8::2"),
                ),
            )
        ),
        "00 00 00 30  01 00 00 00  08 11 00 28  00 35 00 35"
        " 20010db8000000000000000000000001 20010db8000000000000000000000002",
    ),
    (UnknownPayload(payload_type=200, body=h("0102")), "00 00 00 06  01 02"),
]


@pytest.mark.parametrize(
    ("payload", "wire"), VECTORS, ids=lambda v: type(v).__name__ if not isinstance(v, str) else ""
)
def test_vector_encodes_byte_exact_and_decodes_back(payload: Payload, wire: str) -> None:
    first, data = encode(payload)
    assert first == payload.payload_type
    assert data.hex() == h(wire).hex()
    assert decode(first, h(wire)) == (payload,)


def test_chain_links_next_payload_fields_and_sk_points_inside() -> None:
    nonce = Nonce(data=bytes(16))
    sk = Encrypted(next_payload=PayloadType.IDi, body=h("aabbcc"))
    first, data = encode(Notify(notify_type=NotifyType.INITIAL_CONTACT), nonce, sk)
    assert first == PayloadType.NOTIFY
    expected = (
        "28 00 00 08  00 00 40 00"  # Notify -> Nonce
        + "2e 00 00 14"
        + "00" * 16  # Nonce -> SK
        + "23 00 00 07  aa bb cc"  # SK: next = IDi, the first payload inside
    )
    assert data.hex() == h(expected).hex()
    assert decode(first, data)[-1] == sk


def test_skf_vector_carries_fragment_number_and_total() -> None:
    skf = EncryptedFragment(fragment_number=2, total_fragments=3, next_payload=0, body=h("0102030405"))
    first, data = encode(skf)
    assert first == PayloadType.SKF
    assert data.hex() == h("00 00 00 0d  00 02 00 03  01 02 03 04 05").hex()
    assert decode(first, data) == (skf,)


@pytest.mark.parametrize(("number", "total"), [(0, 3), (4, 3), (1, 0)])
def test_skf_impossible_numbering_is_dropped_silently(number: int, total: int) -> None:
    data = h("00 00 00 09") + number.to_bytes(2, "big") + total.to_bytes(2, "big") + b"\x00"
    with pytest.raises(InvalidFragment) as caught:
        decode(PayloadType.SKF, data)
    assert caught.value.notify is None


# --- round trips -------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(payload=clear_payloads)
def test_every_payload_round_trips(payload: Payload) -> None:
    first, data = encode(payload)
    assert decode(first, data) == (payload,)


@settings(max_examples=100, deadline=None)
@given(payload=encrypted_payloads)
def test_encrypted_payloads_round_trip(payload: Payload) -> None:
    first, data = encode(payload)
    assert decode(first, data) == (payload,)


def test_known_numbers_decode_as_enums_unknown_as_ints() -> None:
    sa = SecurityAssociation(
        proposals=(
            Proposal(
                number=1,
                protocol=ProtocolId.IKE,
                transforms=(
                    Transform(type=TransformType.ENCR, id=20),
                    Transform(type=TransformType.ENCR, id=1234),
                ),
            ),
        )
    )
    (decoded,) = decode(*encode(sa))
    assert isinstance(decoded, SecurityAssociation)
    known_transform, unknown_transform = decoded.proposals[0].transforms
    assert known_transform.id is EncrId.AES_GCM_16
    assert type(unknown_transform.id) is int and unknown_transform.id == 1234
    (notify,) = decode(*encode(Notify(notify_type=40000)))
    assert isinstance(notify, Notify) and type(notify.notify_type) is int


# --- RFC 7296 3.3.6: unknown transforms and attributes are tolerated -------------------------


def test_unknown_transform_type_and_attribute_decode_and_are_marked_not_understood() -> None:
    wire = h(
        """
        00 00 00 32
          00 00 00 2e  01 03 00 03
            03 00 00 08  63 00 00 07
            03 00 00 12  01 00 00 14  80 0e 00 80  00 2a 00 02 ab cd
            00 00 00 0c  05 00 00 00  c0 01 12 34
        """
    )
    (sa,) = decode(PayloadType.SA, wire)
    assert isinstance(sa, SecurityAssociation)
    proposal = sa.proposals[0]
    odd_type, odd_attribute, odd_tv = proposal.transforms
    assert odd_type.type == 99 and not isinstance(odd_type.type, TransformType) and not odd_type.understood
    assert odd_attribute.key_length == 128
    assert odd_attribute.other_attributes == (
        TransformAttribute(attribute_type=42, value=h("abcd"), tv=False),
    )
    assert not odd_attribute.understood
    assert odd_tv.other_attributes == (TransformAttribute(attribute_type=0x4001, value=h("1234"), tv=True),)
    assert not proposal.understood
    assert encode(sa)[1] == wire


def test_unknown_non_critical_payload_is_kept_and_critical_one_refused() -> None:
    kept = decode(PayloadType.NONCE, h("d2 00 00 14") + bytes(16) + h("00 00 00 06 0102"))
    assert kept == (Nonce(data=bytes(16)), UnknownPayload(payload_type=0xD2, body=h("0102")))
    with pytest.raises(UnsupportedCriticalPayload) as caught:
        decode(PayloadType.NONCE, h("d2 00 00 14") + bytes(16) + h("00 80 00 06 0102"))
    assert caught.value.payload_type == 0xD2
    assert caught.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD


def test_critical_bit_is_ignored_on_rfc7296_payloads_including_cp() -> None:
    assert decode(PayloadType.VENDOR_ID, h("00 80 00 05 aa")) == (VendorId(data=h("aa")),)
    assert decode(PayloadType.CP, h("00 80 00 05 aa")) == (
        UnknownPayload(payload_type=PayloadType.CP, critical=True, body=h("aa")),
    )


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 15, 257])
def test_nonce_outside_16_to_256_bytes_is_malformed(size: int) -> None:
    with pytest.raises(MalformedMessage):
        decode(PayloadType.NONCE, (4 + size).to_bytes(4, "big") + bytes(size))
    with pytest.raises(EncodingError):
        encode(Nonce(data=bytes(size)))


@pytest.mark.parametrize(
    ("first", "wire", "why"),
    [
        (PayloadType.NONCE, "00 00 00 03", "payload length below its header"),
        (PayloadType.NONCE, "00 00 00 40" + "00" * 16, "payload longer than the message"),
        (PayloadType.NONCE, "00 00 00 14" + "00" * 17, "trailing bytes after the last payload"),
        (PayloadType.CERTREQ, "00 00 00 0a 04 0102030405", "CERTREQ hashes not a multiple of 20"),
        (PayloadType.DELETE, "00 00 00 0c 03 04 00 02 11223344", "fewer SPIs than announced"),
        (
            PayloadType.TSi,
            "00 00 00 18 02 00 00 00 07 00 00 10 0000ffff 0a010000 0a0100ff",
            "TS count too high",
        ),
        (
            PayloadType.TSi,
            "00 00 00 1c 01 00 00 00 07 00 00 14 0000ffff 0a010000 0a0100ff 0000",
            "bad TS length",
        ),
        (PayloadType.KE, "00 00 00 06 00 13", "KE shorter than its fixed fields"),
        (PayloadType.SA, "00 00 00 04", "SA without proposals"),
        (PayloadType.SA, "00 00 00 10 01 00 00 0c 01 01 00 00 00 00 00 00", "bad Last Substruc"),
        (
            PayloadType.SA,
            "00 00 00 14 00 00 00 10 01 01 00 02 00 00 00 08 01 00 00 14",
            "transform count higher than present",
        ),
        (PayloadType.SA, "00 00 00 0c 00 00 00 07 01 01 00 00", "proposal length below its header"),
        (
            PayloadType.SA,
            "00 00 00 18 00 00 00 14 01 01 00 01 00 00 00 0c 01 00 00 14 00 0e 00 02",
            "Key Length attribute in TLV form",
        ),
        (PayloadType.NOTIFY, "00 00 00 08 03 04 40 09", "SPI size beyond the payload"),
    ],
)
def test_malformed_payloads_are_refused(first: int, wire: str, why: str) -> None:
    with pytest.raises(MalformedMessage):
        decode(first, h(wire))


def test_unknown_traffic_selector_type_is_ts_unacceptable() -> None:
    with pytest.raises(TsUnacceptable) as caught:
        decode(PayloadType.TSr, h("00 00 00 10 01 00 00 00 0a 00 00 08 00000000"))
    assert caught.value.notify == NotifyType.TS_UNACCEPTABLE


def test_bounds_on_counts_are_enforced() -> None:
    many_notifies = h("29 00 00 08 00 00 40 00") * MAX_PAYLOADS + h("00 00 00 08 00 00 40 00")
    with pytest.raises(MalformedMessage, match="bound"):
        decode(PayloadType.NOTIFY, many_notifies)

    proposal = "02 00 00 08 01 01 00 00"
    too_many_proposals = h(proposal * MAX_PROPOSALS + "00 00 00 08 01 01 00 00")
    with pytest.raises(MalformedMessage, match="bound"):
        decode(PayloadType.SA, (4 + len(too_many_proposals)).to_bytes(4, "big") + too_many_proposals)

    count = MAX_TRANSFORMS_PER_PROPOSAL + 1
    transforms = h("03 00 00 08 01 00 00 14") * (count - 1) + h("00 00 00 08 01 00 00 14")
    proposal_bytes = (8 + len(transforms)).to_bytes(4, "big") + bytes([1, 1, 0, count]) + transforms
    with pytest.raises(MalformedMessage, match="bound"):
        decode(PayloadType.SA, (4 + len(proposal_bytes)).to_bytes(4, "big") + proposal_bytes)

    count = MAX_TRAFFIC_SELECTORS + 1
    selectors = h("07 00 00 10 0000ffff 0a010000 0a0100ff") * count
    with pytest.raises(MalformedMessage, match="bound"):
        decode(PayloadType.TSi, (8 + len(selectors)).to_bytes(4, "big") + bytes([count, 0, 0, 0]) + selectors)

    hashes = bytes(20) * (MAX_CERTREQ_AUTHORITIES + 1)
    with pytest.raises(MalformedMessage, match="bound"):
        decode(PayloadType.CERTREQ, (5 + len(hashes)).to_bytes(4, "big") + b"\x04" + hashes)


def test_encrypted_payload_must_be_last() -> None:
    with pytest.raises(EncodingError):
        encode(Encrypted(next_payload=0, body=b""), Nonce(data=bytes(16)))
    with pytest.raises(MalformedMessage):
        decode(PayloadType.SK, h("00 00 00 05 aa 00 00 00 04"))


def test_encoder_refuses_what_the_wire_cannot_carry() -> None:
    mixed = TrafficSelector(
        start_address=ipaddress.IPv4Address("10.0.0.1"), end_address=ipaddress.IPv6Address("2001:db8::1")
    )
    with pytest.raises(EncodingError):
        encode(TsInitiator(selectors=(mixed,)))
    with pytest.raises(EncodingError):
        encode(CertificateRequest(encoding=CertEncoding.X509_SIGNATURE, authorities=(b"short",)))
    with pytest.raises(EncodingError):
        encode(Delete(protocol_id=ProtocolId.ESP, spis=(bytes(4), bytes(8))))
    with pytest.raises(EncodingError):
        encode(VendorId(data=bytes(70_000)))
    with pytest.raises(EncodingError):
        encode(KeyExchange(group=70_000, data=b""))
    with pytest.raises(EncodingError):
        encode(SecurityAssociation(proposals=()))
