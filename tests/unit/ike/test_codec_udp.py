"""Port 4500 framing (RFC 3948 sections 2.2 and 2.3)."""

from __future__ import annotations

import pytest

from tests.unit.ike.ike_codec_support import ike_sa_init_request
from trellis.agent.ike.errors import MalformedMessage
from trellis.agent.ike.message import decode_message, encode_message
from trellis.agent.ike.udp import (
    EspDatagram,
    IkeDatagram,
    NatKeepalive,
    classify_nat_t_datagram,
    frame_ike_for_nat_t,
    max_ike_message_size,
)


def test_ike_behind_the_non_esp_marker() -> None:
    message = encode_message(ike_sa_init_request())
    framed = frame_ike_for_nat_t(message)
    assert framed[:4] == b"\x00\x00\x00\x00"
    classified = classify_nat_t_datagram(framed)
    assert classified == IkeDatagram(message=message)
    assert isinstance(classified, IkeDatagram)
    assert decode_message(classified.message) == ike_sa_init_request()


def test_keepalive_and_esp() -> None:
    assert classify_nat_t_datagram(b"\xff") == NatKeepalive()
    esp = bytes.fromhex("c0ffee01 00000001") + bytes(32)
    assert classify_nat_t_datagram(esp) == EspDatagram(packet=esp)


@pytest.mark.parametrize("datagram", [b"", b"\x00", b"\xfe", b"\x00\x00\x00", b"\xc0\xff\xee\x01\x00"])
def test_neither_ike_nor_esp_nor_keepalive(datagram: bytes) -> None:
    with pytest.raises(MalformedMessage):
        classify_nat_t_datagram(datagram)


def test_max_message_size_for_fragments() -> None:
    # strongSwan's fragment_size 1280 is the whole IP datagram.
    assert max_ike_message_size(1280, ipv6=False, nat_t=False) == 1280 - 20 - 8
    assert max_ike_message_size(1280, ipv6=True, nat_t=True) == 1280 - 40 - 8 - 4
