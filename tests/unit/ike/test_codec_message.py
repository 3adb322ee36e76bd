"""Whole messages: the RFC 7296 section 3.1 header, byte-exact, and round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from tests.unit.ike.ike_codec_strategies import messages
from tests.unit.ike.ike_codec_support import SPI_I, SPI_R, ike_auth_request, ike_sa_init_request
from trellis.agent.ike.constants import ExchangeType, NotifyType
from trellis.agent.ike.errors import EncodingError, InvalidMajorVersion, MalformedMessage
from trellis.agent.ike.message import IkeHeader, Message, decode_header, decode_message, encode_message
from trellis.agent.ike.payloads import KeyExchange, Nonce, Notify, SecurityAssociation
from trellis.agent.ike.payloads.limits import MAX_MESSAGE_BYTES


def h(text: str) -> bytes:
    """Hex laid out like the RFC diagrams; '#' starts a comment."""
    return bytes.fromhex("".join(line.split("#")[0].replace(" ", "") for line in text.splitlines()))


HEADER = IkeHeader(
    spi_i=SPI_I,
    spi_r=SPI_R,
    exchange=ExchangeType.INFORMATIONAL,
    initiator=False,
    response=True,
    message_id=7,
)
# An empty INFORMATIONAL response (a liveness answer, before protection), field by field:
# SPIi, SPIr, Next Payload 0, Version 2.0, Exchange 37, Flags R (0x20), Message ID 7, Length 28.
EMPTY_INFORMATIONAL = "0102030405060708 a1a2a3a4a5a6a7a8 00 20 25 20 00000007 0000001c"


def test_header_vector() -> None:
    message = Message(header=HEADER)
    assert encode_message(message).hex() == h(EMPTY_INFORMATIONAL).hex()
    assert decode_message(h(EMPTY_INFORMATIONAL)) == message


def test_ike_sa_init_request_vector() -> None:
    """An IKE_SA_INIT request with SA, KE, Nonce and a notify, written out by hand."""
    wire = h(
        """
        0102030405060708 0000000000000000 21 20 22 08 00000000 00000070
        22 00 00 28                                     # SA, next KE
          00 00 00 24  01 01 00 03                      # proposal 1, IKE, no SPI, 3 transforms
            03 00 00 0c  01 00 00 14  80 0e 01 00       # ENCR AES-GCM-16, Key Length 256
            03 00 00 08  02 00 00 05                    # PRF HMAC-SHA2-256
            00 00 00 08  04 00 00 1f                    # DH Curve25519
        28 00 00 10  00 1f 00 00  1111111111111111      # KE, next Nonce
        29 00 00 14  22222222222222222222222222222222   # Nonce, next Notify
        00 00 00 08  00 00 40 2e                        # Notify IKEV2_FRAGMENTATION_SUPPORTED
        """
    )
    message = decode_message(wire)
    assert message.header == IkeHeader(
        spi_i=SPI_I, exchange=ExchangeType.IKE_SA_INIT, initiator=True, response=False, message_id=0
    )
    sa = message.find(SecurityAssociation)
    assert sa is not None and [t.id for t in sa.proposals[0].transforms] == [20, 5, 31]
    assert message.find(KeyExchange) == KeyExchange(group=31, data=b"\x11" * 8)
    assert message.find(Nonce) == Nonce(data=b"\x22" * 16)
    assert message.find_all(Notify) == (Notify(notify_type=NotifyType.IKEV2_FRAGMENTATION_SUPPORTED),)
    assert encode_message(message) == wire


def test_sample_messages_round_trip() -> None:
    for message in (ike_sa_init_request(), ike_auth_request()):
        assert decode_message(encode_message(message)) == message


@settings(max_examples=300, deadline=None)
@given(message=messages())
def test_any_message_round_trips(message: Message) -> None:
    assert decode_message(encode_message(message)) == message


def test_flags_and_reserved_bits() -> None:
    wire = bytearray(h(EMPTY_INFORMATIONAL))
    wire[19] = 0x08 | 0x10 | 0x01  # I, the Version flag and a reserved bit: only I counts
    header = decode_header(bytes(wire))
    assert header.initiator and not header.response


def test_higher_minor_version_is_accepted_other_major_versions_are_not() -> None:
    wire = bytearray(h(EMPTY_INFORMATIONAL))
    wire[17] = 0x21
    assert decode_header(bytes(wire)) == HEADER
    for version in (0x10, 0x30):
        wire[17] = version
        with pytest.raises(InvalidMajorVersion) as caught:
            decode_message(bytes(wire))
        assert caught.value.major_version == version >> 4
        assert caught.value.notify == NotifyType.INVALID_MAJOR_VERSION


def test_length_field_must_match_the_datagram() -> None:
    wire = h(EMPTY_INFORMATIONAL)
    with pytest.raises(MalformedMessage):
        decode_message(wire + b"\x00")
    with pytest.raises(MalformedMessage):
        decode_message(wire[:-1])
    with pytest.raises(MalformedMessage):
        decode_message(wire[:27])
    too_long = wire[:24] + (MAX_MESSAGE_BYTES + 1).to_bytes(4, "big") + bytes(MAX_MESSAGE_BYTES + 1 - 28)
    with pytest.raises(MalformedMessage):
        decode_message(too_long)


def test_unknown_exchange_type_decodes_as_int() -> None:
    wire = bytearray(h(EMPTY_INFORMATIONAL))
    wire[18] = 43  # IKE_INTERMEDIATE (RFC 9242), not one we name
    header = decode_header(bytes(wire))
    assert header.exchange == 43 and not isinstance(header.exchange, ExchangeType)


def test_encoder_refuses_bad_spis_and_oversized_messages() -> None:
    with pytest.raises(EncodingError):
        encode_message(
            Message(
                header=IkeHeader(spi_i=b"short", exchange=34, initiator=True, response=False, message_id=0)
            )
        )
    big = Message(
        header=HEADER, payloads=tuple(Notify(notify_type=16384, data=bytes(60_000)) for _ in range(2))
    )
    with pytest.raises(EncodingError):
        encode_message(big)
