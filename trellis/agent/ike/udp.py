"""Datagrams on UDP port 4500 (RFC 3948): IKE behind a non-ESP marker, ESP, or NAT keepalives.

Port 500 carries bare IKE messages; nothing here applies to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from trellis.agent.ike.constants import NAT_KEEPALIVE, NON_ESP_MARKER
from trellis.agent.ike.errors import MalformedMessage

IPV4_HEADER_LENGTH = 20
IPV6_HEADER_LENGTH = 40
UDP_HEADER_LENGTH = 8
# RFC 4303 section 2: SPI and Sequence Number come first; anything shorter cannot be ESP.
ESP_MIN_LENGTH = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeDatagram:
    message: bytes  # the IKE message, marker removed


@dataclass(frozen=True, slots=True, kw_only=True)
class EspDatagram:
    packet: bytes  # the ESP packet, starting with its non-zero SPI


@dataclass(frozen=True, slots=True, kw_only=True)
class NatKeepalive:
    pass


NatTDatagram = IkeDatagram | EspDatagram | NatKeepalive


def classify_nat_t_datagram(datagram: bytes) -> NatTDatagram:
    """What a datagram received on port 4500 carries (RFC 3948 sections 2.2 and 2.3).

    Raises ``MalformedMessage`` for a datagram that is none of the three (drop it).
    """
    if datagram == NAT_KEEPALIVE:
        return NatKeepalive()
    if len(datagram) < len(NON_ESP_MARKER):
        raise MalformedMessage(f"a {len(datagram)}-byte datagram on port 4500 is neither IKE nor ESP")
    if datagram.startswith(NON_ESP_MARKER):
        return IkeDatagram(message=datagram[len(NON_ESP_MARKER) :])
    if len(datagram) < ESP_MIN_LENGTH:
        raise MalformedMessage(f"ESP packet of {len(datagram)} bytes is shorter than its header")
    return EspDatagram(packet=datagram)


def frame_ike_for_nat_t(message: bytes) -> bytes:
    """An encoded IKE message as sent on port 4500: the non-ESP marker first."""
    return NON_ESP_MARKER + message


def max_ike_message_size(ip_datagram_size: int, *, ipv6: bool, nat_t: bool) -> int:
    """The largest IKE message whose IP datagram stays within ``ip_datagram_size`` (what
    strongSwan's ``fragment_size`` means), for sizing fragments."""
    overhead = (IPV6_HEADER_LENGTH if ipv6 else IPV4_HEADER_LENGTH) + UDP_HEADER_LENGTH
    return ip_datagram_size - overhead - (len(NON_ESP_MARKER) if nat_t else 0)
