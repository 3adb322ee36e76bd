"""The filter's packet codec against hand-checked bytes and against scapy (an encoder nobody here wrote)."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.agent.filter.packet import (
    EXT_DEST_OPTIONS,
    EXT_FRAGMENT,
    EXT_HOP_BY_HOP,
    MAX_EXTENSION_HEADERS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_SYN,
    DropReason,
    MalformedPacket,
    pull_packet,
    push_icmp,
    push_ipv4,
    push_ipv6,
    push_ipv6_fragment,
    push_ipv6_options,
    push_tcp,
    push_udp,
)

scapy = pytest.importorskip("scapy.all")

A4, B4 = ipaddress.IPv4Address("10.1.0.5"), ipaddress.IPv4Address("10.10.3.4")
A6, B6 = ipaddress.IPv6Address("fd00:1::5"), ipaddress.IPv6Address("fd00:10::4")

# The IPv4 header used to illustrate the header checksum on Wikipedia ("IPv4 header checksum"):
# version 4, IHL 5, total length 0x73, DF, TTL 64, UDP, checksum 0xb861, 192.168.0.1 -> 192.168.0.199.
WIKIPEDIA_HEADER = bytes.fromhex("45000073000040004011b861c0a80001c0a800c7")


def wikipedia_packet() -> bytes:
    # A UDP header (port 53 -> 33000, length 0x5f, checksum 0: none, allowed over IPv4) and payload.
    udp = bytes.fromhex("003580e8005f0000")
    return WIKIPEDIA_HEADER + udp + b"\x00" * (0x73 - 20 - 8)


def test_hand_checked_ipv4_header() -> None:
    packet = pull_packet(wikipedia_packet())
    assert packet.version == 4
    assert packet.src == int(ipaddress.IPv4Address("192.168.0.1"))
    assert packet.dst == int(ipaddress.IPv4Address("192.168.0.199"))
    assert (packet.protocol, packet.length, packet.src_port, packet.dst_port) == (PROTO_UDP, 0x73, 53, 33000)
    assert packet.fragment is None
    # Our encoder produces the same header, checksum included.
    udp_payload = wikipedia_packet()[20:]
    built = push_ipv4(
        src=ipaddress.IPv4Address("192.168.0.1"),
        dst=ipaddress.IPv4Address("192.168.0.199"),
        protocol=PROTO_UDP,
        payload=udp_payload,
        dont_fragment=True,
    )
    assert built[:20] == WIKIPEDIA_HEADER


def test_header_checksum_is_verified() -> None:
    damaged = bytearray(wikipedia_packet())
    damaged[8] = 63  # TTL changed without updating the checksum
    with pytest.raises(MalformedPacket) as caught:
        pull_packet(bytes(damaged))
    assert caught.value.reason is DropReason.BAD_CHECKSUM


# --- our encoder == scapy's encoder ---------------------------------------------------------------


def test_ipv4_tcp_matches_scapy() -> None:
    ours = push_ipv4(
        src=A4,
        dst=B4,
        protocol=PROTO_TCP,
        payload=push_tcp(src=A4, dst=B4, src_port=40000, dst_port=443, flags=TCP_SYN, seq=7, payload=b"hi"),
    )
    theirs = (
        scapy.IP(src=str(A4), dst=str(B4), id=0)
        / scapy.TCP(sport=40000, dport=443, flags="S", seq=7, window=65535)
        / b"hi"
    )
    assert ours == bytes(theirs)


def test_ipv4_udp_and_icmp_match_scapy() -> None:
    udp = push_ipv4(
        src=A4, dst=B4, protocol=PROTO_UDP, payload=push_udp(src=A4, dst=B4, src_port=5, dst_port=53)
    )
    assert udp == bytes(scapy.IP(src=str(A4), dst=str(B4), id=0) / scapy.UDP(sport=5, dport=53))
    echo = push_ipv4(
        src=A4, dst=B4, protocol=PROTO_ICMP, payload=push_icmp(src=A4, dst=B4, icmp_type=8, ident=77, seq=3)
    )
    assert echo == bytes(scapy.IP(src=str(A4), dst=str(B4), id=0) / scapy.ICMP(type=8, id=77, seq=3))


def test_ipv6_tcp_udp_icmpv6_match_scapy() -> None:
    tcp = push_ipv6(
        src=A6,
        dst=B6,
        next_header=PROTO_TCP,
        payload=push_tcp(src=A6, dst=B6, src_port=1, dst_port=22, flags=TCP_SYN | TCP_ACK, ack=9),
    )
    assert tcp == bytes(
        scapy.IPv6(src=str(A6), dst=str(B6)) / scapy.TCP(sport=1, dport=22, flags="SA", ack=9, window=65535)
    )
    udp = push_ipv6(
        src=A6, dst=B6, next_header=PROTO_UDP, payload=push_udp(src=A6, dst=B6, src_port=9, dst_port=53)
    )
    assert udp == bytes(scapy.IPv6(src=str(A6), dst=str(B6)) / scapy.UDP(sport=9, dport=53))
    echo = push_ipv6(
        src=A6,
        dst=B6,
        next_header=PROTO_ICMPV6,
        payload=push_icmp(src=A6, dst=B6, icmp_type=128, ident=4, seq=1),
    )
    assert echo == bytes(scapy.IPv6(src=str(A6), dst=str(B6)) / scapy.ICMPv6EchoRequest(id=4, seq=1))


def test_ipv6_extension_headers_match_scapy() -> None:
    udp = push_udp(src=A6, dst=B6, src_port=1, dst_port=2, payload=b"x" * 16)
    ours = push_ipv6(
        src=A6,
        dst=B6,
        next_header=EXT_HOP_BY_HOP,
        payload=push_ipv6_options(next_header=EXT_FRAGMENT)
        + push_ipv6_fragment(next_header=PROTO_UDP, ident=5, offset=0, more=True)
        + udp,
    )
    theirs = (
        scapy.IPv6(src=str(A6), dst=str(B6))
        / scapy.IPv6ExtHdrHopByHop(options=[scapy.PadN(optdata=b"\x00" * 4)])
        / scapy.IPv6ExtHdrFragment(id=5, offset=0, m=1, nh=PROTO_UDP)
        / scapy.Raw(udp)
    )
    assert ours == bytes(theirs)


# --- our parser reads what scapy builds -----------------------------------------------------------


def test_parse_scapy_ipv4_fragments() -> None:
    datagram = scapy.IP(src=str(A4), dst=str(B4), id=99) / scapy.UDP(sport=7, dport=53) / (b"z" * 64)
    first, second = scapy.fragment(datagram, fragsize=40)
    head = pull_packet(bytes(first))
    assert head.fragment is not None and (head.fragment.ident, head.fragment.offset, head.fragment.more) == (
        99,
        0,
        True,
    )
    assert (head.src_port, head.dst_port, head.has_l4) == (7, 53, True)
    tail = pull_packet(bytes(second))
    assert tail.fragment is not None and (tail.fragment.offset, tail.fragment.more) == (40, False)
    assert not tail.has_l4 and tail.protocol == PROTO_UDP


def test_parse_scapy_ipv6_fragments_and_options() -> None:
    datagram = (
        scapy.IPv6(src=str(A6), dst=str(B6))
        / scapy.IPv6ExtHdrDestOpt()
        / scapy.IPv6ExtHdrFragment(id=0xABCDEF01)
        / scapy.TCP(sport=4, dport=80)
        / (b"q" * 100)
    )
    pieces = scapy.fragment6(datagram, 100)
    parsed = [pull_packet(bytes(piece)) for piece in pieces]
    assert len(parsed) >= 2
    assert parsed[0].fragment is not None and parsed[0].fragment.ident == 0xABCDEF01
    assert (parsed[0].protocol, parsed[0].dst_port, parsed[0].has_l4) == (PROTO_TCP, 80, True)
    assert all(p.fragment is not None and not p.has_l4 and p.fragment.offset > 0 for p in parsed[1:])


def test_parse_scapy_icmp_errors_with_quotes() -> None:
    original = scapy.IP(src=str(A4), dst=str(B4)) / scapy.UDP(sport=5000, dport=53)
    error = scapy.IP(src="10.10.0.1", dst=str(A4)) / scapy.ICMP(type=3, code=3) / bytes(original)[:28]
    packet = pull_packet(bytes(error))
    assert packet.icmp_error and (packet.icmp_type, packet.icmp_code) == (3, 3)
    assert packet.quoted is not None
    assert (packet.quoted.src, packet.quoted.dst) == (int(A4), int(B4))
    assert (packet.quoted.src_port, packet.quoted.dst_port) == (5000, 53)
    original6 = scapy.IPv6(src=str(A6), dst=str(B6)) / scapy.TCP(sport=33000, dport=443) / (b"d" * 1400)
    too_big = (
        scapy.IPv6(src="fd00:10::1", dst=str(A6))
        / scapy.ICMPv6PacketTooBig(mtu=1280)
        / bytes(original6)[:1232]
    )
    packet = pull_packet(bytes(too_big))
    assert packet.icmp_error and packet.icmp_type == 2
    assert packet.quoted is not None and (packet.quoted.src_port, packet.quoted.dst_port) == (33000, 443)
    reply = pull_packet(bytes(scapy.IPv6(src=str(B6), dst=str(A6)) / scapy.ICMPv6EchoReply(id=9, seq=1)))
    assert reply.echo_reply and (reply.src_port, reply.dst_port) == (9, 9)


def test_tcp_flags_and_options_from_scapy() -> None:
    segment = scapy.IP(src=str(A4), dst=str(B4)) / scapy.TCP(
        sport=1, dport=2, flags="FA", options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]
    )
    packet = pull_packet(bytes(segment))
    assert packet.tcp_flags == 0x11


# --- malformed packets ----------------------------------------------------------------------------


def good_v4() -> bytes:
    return push_ipv4(
        src=A4,
        dst=B4,
        protocol=PROTO_TCP,
        payload=push_tcp(src=A4, dst=B4, src_port=1, dst_port=2, flags=TCP_SYN),
    )


def good_v6(next_header: int, payload: bytes) -> bytes:
    return push_ipv6(src=A6, dst=B6, next_header=next_header, payload=payload)


def patched(data: bytes, offset: int, value: bytes, *, fix_v4_checksum: bool = True) -> bytes:
    out = bytearray(data)
    out[offset : offset + len(value)] = value
    if fix_v4_checksum and out[0] >> 4 == 4:
        rebuilt = scapy.IP(bytes(out))
        rebuilt.chksum = None
        header = bytes(rebuilt)[: (out[0] & 0x0F) * 4]
        out[10:12] = header[10:12]
    return bytes(out)


UDP6 = push_udp(src=A6, dst=B6, src_port=1, dst_port=2)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", DropReason.TRUNCATED),
        (good_v4()[:19], DropReason.TRUNCATED),
        (b"\x55" + good_v4()[1:], DropReason.BAD_HEADER),  # version 5
        (patched(good_v4(), 0, b"\x44"), DropReason.BAD_HEADER),  # IHL 4
        (patched(good_v4(), 2, b"\x00\x50"), DropReason.BAD_LENGTH),  # total length past the end
        (patched(good_v4(), 6, b"\x80\x00"), DropReason.BAD_HEADER),  # reserved flag
        (patched(good_v4(), 2, b"\x00\x20")[:32], DropReason.TRUNCATED),  # TCP header cut short
        (patched(good_v4(), 32, b"\x40"), DropReason.BAD_HEADER),  # TCP data offset 4
        (
            patched(patched(good_v4(), 6, b"\x20\x00"), 2, b"\x00\x1c")[:28],
            DropReason.TINY_FRAGMENT,
        ),  # RFC 1858
        (patched(good_v4(), 6, b"\x00\x01"), DropReason.TINY_FRAGMENT),  # TCP at fragment offset 8
        (good_v6(PROTO_UDP, UDP6)[:39], DropReason.TRUNCATED),
        (patched(good_v6(PROTO_UDP, UDP6), 4, b"\x00\x00"), DropReason.UNSUPPORTED),  # jumbogram
        (patched(good_v6(PROTO_UDP, UDP6), 4, b"\x00\x09"), DropReason.BAD_LENGTH),
        (patched(good_v6(PROTO_UDP, UDP6), 44, b"\x00\x04"), DropReason.BAD_LENGTH),  # UDP length 4
        (
            good_v6(
                EXT_DEST_OPTIONS,
                push_ipv6_options(next_header=EXT_HOP_BY_HOP) + push_ipv6_options(next_header=17) + UDP6,
            ),
            DropReason.BAD_HEADER,
        ),
        (
            good_v6(
                EXT_DEST_OPTIONS,
                b"".join(
                    push_ipv6_options(next_header=EXT_DEST_OPTIONS) for _ in range(MAX_EXTENSION_HEADERS)
                )
                + UDP6,
            ),
            DropReason.UNSUPPORTED,
        ),
        (
            good_v6(
                EXT_FRAGMENT,
                push_ipv6_fragment(next_header=EXT_FRAGMENT, ident=1, offset=0, more=True)
                + push_ipv6_fragment(next_header=PROTO_UDP, ident=1, offset=0, more=True)
                + UDP6,
            ),
            DropReason.BAD_HEADER,
        ),
        (good_v6(EXT_DEST_OPTIONS, bytes([17, 9]) + b"\x00" * 14), DropReason.TRUNCATED),  # claims 80 bytes
    ],
)
def test_malformed(data: bytes, reason: DropReason) -> None:
    with pytest.raises(MalformedPacket) as caught:
        pull_packet(data)
    assert caught.value.reason is reason


def test_atomic_fragment_is_a_whole_packet() -> None:
    packet = pull_packet(
        good_v6(EXT_FRAGMENT, push_ipv6_fragment(next_header=PROTO_UDP, ident=3, offset=0, more=False) + UDP6)
    )
    assert packet.fragment is None and packet.dst_port == 2


def test_unparseable_quote_is_just_unrelated() -> None:
    error = push_ipv4(
        src=B4,
        dst=A4,
        protocol=PROTO_ICMP,
        payload=push_icmp(src=B4, dst=A4, icmp_type=11, payload=b"\x45\x00"),
    )
    packet = pull_packet(error)
    assert packet.icmp_error and packet.quoted is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_garbage_parses_or_raises_the_typed_error(data: bytes) -> None:
    try:
        pull_packet(data)
    except MalformedPacket as malformed:
        assert isinstance(malformed.reason, DropReason)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=47), st.integers(min_value=0, max_value=255))
def test_every_single_byte_corruption_is_handled(offset: int, value: int) -> None:
    base = good_v6(
        EXT_FRAGMENT,
        push_ipv6_fragment(next_header=PROTO_TCP, ident=1, offset=0, more=True)
        + push_tcp(src=A6, dst=B6, src_port=1, dst_port=2, flags=TCP_SYN),
    )
    data = bytearray(base)
    data[offset % len(data)] = value
    with contextlib.suppress(MalformedPacket):  # anything else escaping fails the test
        pull_packet(bytes(data))
