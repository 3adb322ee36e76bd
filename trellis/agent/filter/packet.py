"""Codec for the inner IP packets the filter looks at: pull (parse headers) and push (build).

``pull_packet`` reads IPv4/IPv6 headers (RFC 791, RFC 8200 with extension headers and
fragments), TCP/UDP ports and flags, ICMP/ICMPv6 type, code and echo identifier, and the packet
quoted inside an ICMP error (RFC 792, RFC 4443 section 2.4 c). It raises ``MalformedPacket``
for anything it cannot read, never another error. The push functions build valid packets
(checksums included); the data plane may use them, the tests check them against scapy.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct
from dataclasses import dataclass

IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
IPV6_HEADER = struct.Struct("!IHBB16s16s")
TCP_HEADER = struct.Struct("!HHIIBBHHH")
UDP_HEADER = struct.Struct("!HHHH")
ICMP_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence (echo)
IPV6_FRAGMENT = struct.Struct("!BBHI")

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

# IPv6 extension headers we walk (RFC 8200 section 4; AH RFC 4302). No Next Header (59) ends it.
EXT_HOP_BY_HOP = 0
EXT_ROUTING = 43
EXT_FRAGMENT = 44
EXT_AH = 51
EXT_DEST_OPTIONS = 60
EXT_NO_NEXT = 59
# Bound on the extension-header chain: a longer chain is refused rather than walked.
MAX_EXTENSION_HEADERS = 8

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP_ERRORS = frozenset({3, 4, 11, 12})  # unreachable, source quench, time exceeded, parameter problem
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
ICMPV6_ERRORS = frozenset({1, 2, 3, 4})  # unreachable, packet too big, time exceeded, parameter problem

# What a quoted packet must hold to be matched to a flow: its IP header and 8 bytes of L4.
QUOTED_L4_BYTES = 8


class DropReason(enum.StrEnum):
    """Why a packet was refused. The first group are malformations (``MalformedPacket``)."""

    TRUNCATED = "truncated"
    BAD_HEADER = "bad-header"
    BAD_CHECKSUM = "bad-checksum"
    BAD_LENGTH = "bad-length"
    UNSUPPORTED = "unsupported"
    TINY_FRAGMENT = "tiny-fragment"
    NO_RULE = "no-rule"
    EXPIRED = "expired"  # only rules (or a flow's rule) whose time window has ended allow it
    FLOW_TABLE_FULL = "flow-table-full"
    FRAGMENT_UNKNOWN = "fragment-unknown"


class MalformedPacket(Exception):
    """A packet that does not parse (a peer fault); ``reason`` is what the counters record."""

    def __init__(self, reason: DropReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Fragment:
    ident: int
    offset: int  # in bytes
    more: bool


@dataclass(frozen=True, slots=True)
class Packet:
    """The header fields the filter uses. Addresses are integers of the family's width."""

    version: int
    src: int
    dst: int
    protocol: int  # the upper-layer protocol after IPv6 extension headers
    length: int  # bytes of the IP packet
    src_port: int = 0  # TCP/UDP ports; the identifier of ICMP echo messages (in both)
    dst_port: int = 0
    tcp_flags: int = 0
    icmp_type: int = -1  # -1: not ICMP (or no L4 header: a non-first fragment)
    icmp_code: int = 0
    fragment: Fragment | None = None  # set when the packet is a fragment
    has_l4: bool = True  # False for non-first fragments and No Next Header
    quoted: Packet | None = None  # the packet an ICMP error is about

    @property
    def is_icmp(self) -> bool:
        return self.icmp_type >= 0

    @property
    def icmp_error(self) -> bool:
        errors = ICMP_ERRORS if self.version == 4 else ICMPV6_ERRORS
        return self.is_icmp and self.icmp_type in errors

    @property
    def echo_request(self) -> bool:
        return self.icmp_type == (ICMP_ECHO_REQUEST if self.version == 4 else ICMPV6_ECHO_REQUEST)

    @property
    def echo_reply(self) -> bool:
        return self.icmp_type == (ICMP_ECHO_REPLY if self.version == 4 else ICMPV6_ECHO_REPLY)


# --- pull ---------------------------------------------------------------------------------------


PacketBytes = bytes | bytearray | memoryview


def pull_packet(data: PacketBytes) -> Packet:
    """Parse one inner IP packet. Raises MalformedPacket, nothing else."""
    return _pull(memoryview(data), quoted=False)


def _pull(data: memoryview, *, quoted: bool) -> Packet:
    if not data:
        raise MalformedPacket(DropReason.TRUNCATED, "empty packet")
    version = data[0] >> 4
    if version == 4:
        return _pull_ipv4(data, quoted=quoted)
    if version == 6:
        return _pull_ipv6(data, quoted=quoted)
    raise MalformedPacket(DropReason.BAD_HEADER, f"IP version {version}")


def _pull_ipv4(data: memoryview, *, quoted: bool) -> Packet:
    if len(data) < IPV4_HEADER.size:
        raise MalformedPacket(DropReason.TRUNCATED, "IPv4 header truncated")
    ver_ihl, _tos, total, ident, frag, _ttl, protocol, _csum, src, dst = IPV4_HEADER.unpack_from(data)
    header_len = (ver_ihl & 0x0F) * 4
    if header_len < IPV4_HEADER.size or header_len > len(data):
        raise MalformedPacket(DropReason.BAD_HEADER, f"IPv4 header length {header_len}")
    if quoted:
        end = len(data)  # a quote is cut short: its total length says how long the original was
    else:
        if total < header_len or total > len(data):
            raise MalformedPacket(DropReason.BAD_LENGTH, f"IPv4 total length {total} for {len(data)} bytes")
        if _checksum(data[:header_len]) != 0:
            raise MalformedPacket(DropReason.BAD_CHECKSUM, "IPv4 header checksum")
        end = total
    if frag & 0x8000:
        raise MalformedPacket(DropReason.BAD_HEADER, "IPv4 reserved flag set")
    more, offset = bool(frag & 0x2000), (frag & 0x1FFF) * 8
    fragment = Fragment(ident=ident, offset=offset, more=more) if more or offset else None
    base = Packet(
        version=4,
        src=int.from_bytes(src),
        dst=int.from_bytes(dst),
        protocol=protocol,
        length=end,
        fragment=fragment,
        has_l4=offset == 0,
    )
    if offset:
        if protocol == PROTO_TCP and offset == 8:
            raise MalformedPacket(DropReason.TINY_FRAGMENT, "TCP fragment at offset 8 (RFC 1858)")
        return base
    return _pull_l4(base, data[header_len:end], quoted=quoted, first_fragment=more)


def _pull_ipv6(data: memoryview, *, quoted: bool) -> Packet:
    if len(data) < IPV6_HEADER.size:
        raise MalformedPacket(DropReason.TRUNCATED, "IPv6 header truncated")
    _vtf, payload_len, next_header, _hops, src, dst = IPV6_HEADER.unpack_from(data)
    if quoted:
        end = len(data)
    else:
        if payload_len == 0:
            raise MalformedPacket(DropReason.UNSUPPORTED, "IPv6 jumbogram or empty payload")
        end = IPV6_HEADER.size + payload_len
        if end > len(data):
            raise MalformedPacket(
                DropReason.BAD_LENGTH, f"IPv6 payload length {payload_len} for {len(data)} bytes"
            )
    offset = IPV6_HEADER.size
    fragment: Fragment | None = None
    for count in range(MAX_EXTENSION_HEADERS + 1):
        if next_header not in (EXT_HOP_BY_HOP, EXT_ROUTING, EXT_FRAGMENT, EXT_AH, EXT_DEST_OPTIONS):
            break
        if count == MAX_EXTENSION_HEADERS:
            raise MalformedPacket(
                DropReason.UNSUPPORTED, f"more than {MAX_EXTENSION_HEADERS} extension headers"
            )
        if next_header == EXT_HOP_BY_HOP and count != 0:
            raise MalformedPacket(
                DropReason.BAD_HEADER, "hop-by-hop options not first (RFC 8200 section 4.1)"
            )
        if offset + 8 > end:
            raise MalformedPacket(DropReason.TRUNCATED, "IPv6 extension header truncated")
        if next_header == EXT_FRAGMENT:
            if fragment is not None:
                raise MalformedPacket(DropReason.BAD_HEADER, "two IPv6 fragment headers")
            following, _reserved, offset_flags, ident = IPV6_FRAGMENT.unpack_from(data, offset)
            fragment = Fragment(ident=ident, offset=(offset_flags >> 3) * 8, more=bool(offset_flags & 1))
            length = 8
        elif next_header == EXT_AH:
            following, length = data[offset], (data[offset + 1] + 2) * 4
        else:
            following, length = data[offset], (data[offset + 1] + 1) * 8
        offset += length
        if offset > end:
            raise MalformedPacket(DropReason.TRUNCATED, "IPv6 extension header truncated")
        next_header = following
    if fragment is not None and fragment.offset == 0 and not fragment.more:
        fragment = None  # an atomic fragment (RFC 6946) is a whole packet
    has_l4 = next_header != EXT_NO_NEXT and (fragment is None or fragment.offset == 0)
    base = Packet(
        version=6,
        src=int.from_bytes(src),
        dst=int.from_bytes(dst),
        protocol=next_header,
        length=end,
        fragment=fragment,
        has_l4=has_l4,
    )
    if not has_l4:
        return base
    return _pull_l4(base, data[offset:end], quoted=quoted, first_fragment=fragment is not None)


def _pull_l4(base: Packet, l4: memoryview, *, quoted: bool, first_fragment: bool) -> Packet:
    protocol = base.protocol
    icmp = (base.version == 4 and protocol == PROTO_ICMP) or (base.version == 6 and protocol == PROTO_ICMPV6)
    if protocol not in (PROTO_TCP, PROTO_UDP) and not icmp:
        return base
    if quoted:
        if len(l4) < QUOTED_L4_BYTES:
            raise MalformedPacket(
                DropReason.TRUNCATED, "ICMP error quotes less than 8 bytes of transport header"
            )
    else:
        needed = TCP_HEADER.size if protocol == PROTO_TCP else UDP_HEADER.size
        if len(l4) < needed:
            reason = DropReason.TINY_FRAGMENT if first_fragment else DropReason.TRUNCATED
            raise MalformedPacket(reason, f"transport header truncated ({len(l4)} bytes)")
    if protocol == PROTO_TCP:
        src_port, dst_port = struct.unpack_from("!HH", l4)
        flags = 0
        if not quoted:
            flags = l4[13]
            data_offset = (l4[12] >> 4) * 4
            if data_offset < TCP_HEADER.size or data_offset > len(l4):
                raise MalformedPacket(DropReason.BAD_HEADER, f"TCP data offset {data_offset}")
        return dataclasses.replace(base, src_port=src_port, dst_port=dst_port, tcp_flags=flags)
    if protocol == PROTO_UDP:
        src_port, dst_port, udp_len, _csum = UDP_HEADER.unpack_from(l4)
        if not quoted and not first_fragment and (udp_len < UDP_HEADER.size or udp_len > len(l4)):
            raise MalformedPacket(DropReason.BAD_LENGTH, f"UDP length {udp_len} for {len(l4)} bytes")
        return dataclasses.replace(base, src_port=src_port, dst_port=dst_port)
    icmp_type, code, _csum, ident, _seq = ICMP_HEADER.unpack_from(l4)
    packet = dataclasses.replace(base, icmp_type=icmp_type, icmp_code=code)
    if packet.echo_request or packet.echo_reply:
        return dataclasses.replace(packet, src_port=ident, dst_port=ident)
    if packet.icmp_error and not quoted:
        inner = l4[ICMP_HEADER.size :]
        try:
            quote = _pull(inner, quoted=True)
        except MalformedPacket:
            return packet  # not related to any flow; rules decide alone
        if quote.version == base.version and not quote.icmp_error:
            return dataclasses.replace(packet, quoted=quote)
    return packet


# TCP flags that change a flow's state: such segments always take the full path.
_STATE_FLAGS = TCP_FIN | TCP_SYN | TCP_RST
_ECHOES_V4 = (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
_ECHOES_V6 = (ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY)


def peek_established(data: PacketBytes) -> tuple[bytes, int] | None:
    """For the filter's fast path: a plain TCP, UDP or ICMP echo packet's addresses and ports (or
    echo type and identifier) as one ``bytes`` key, and its protocol; None for anything else
    (options, extension headers, fragments, a length that does not add up, a bad IPv4 header
    checksum, TCP SYN/FIN/RST, ICMP errors), which ``pull_packet`` must judge. A packet that
    passes here passes ``pull_packet`` too, with the same fields."""
    size = len(data)
    if size < 28:
        return None
    first = data[0]
    if first == 0x45:  # IPv4 without options
        protocol, l4, icmp, echoes, addresses = data[9], 20, PROTO_ICMP, _ECHOES_V4, 12
        if data[6] & 0xBF or data[7] or (data[2] << 8 | data[3]) != size:
            return None  # reserved flag, MF, fragment offset, or trailing bytes
        # The header checksum verifies when the ones' complement sum of its 16-bit words is
        # 0xFFFF (RFC 1071), i.e. when the header read as one number is a multiple of 0xFFFF
        # (2**16 is 1 modulo 0xFFFF) and not 0 (its first byte is not).
        if int.from_bytes(data[:20]) % 0xFFFF:
            return None
    elif first >> 4 == 6:
        protocol, l4, icmp, echoes, addresses = data[6], 40, PROTO_ICMPV6, _ECHOES_V6, 8
        if size < 48 or (data[4] << 8 | data[5]) != size - 40:
            return None
    else:
        return None
    if protocol == PROTO_TCP:
        if size - l4 < TCP_HEADER.size or data[l4 + 13] & _STATE_FLAGS:
            return None
        offset = (data[l4 + 12] >> 4) * 4
        if offset < TCP_HEADER.size or offset > size - l4:
            return None
        return bytes(data[addresses : l4 + 4]), protocol  # addresses and ports
    if protocol == PROTO_UDP:
        length = data[l4 + 4] << 8 | data[l4 + 5]
        if length < UDP_HEADER.size or length > size - l4:
            return None
        return bytes(data[addresses : l4 + 4]), protocol
    if protocol == icmp and data[l4] in echoes:  # 8 bytes are there: size >= l4 + 8
        return bytes(data[addresses : l4 + 2]) + bytes(data[l4 + 4 : l4 + 6]), protocol  # type, identifier
    return None


def _checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071); 0 when ``data`` includes a correct checksum field."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --- push ---------------------------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _pseudo_header(src: IPAddress, dst: IPAddress, protocol: int, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, protocol, length)
    return src.packed + dst.packed + struct.pack("!IxxxB", length, protocol)


def _with_checksum(segment: bytearray, offset: int, pseudo: bytes) -> bytes:
    value = _checksum(pseudo + bytes(segment))
    struct.pack_into("!H", segment, offset, value)
    return bytes(segment)


def push_tcp(
    *,
    src: IPAddress,
    dst: IPAddress,
    src_port: int,
    dst_port: int,
    flags: int,
    seq: int = 0,
    ack: int = 0,
    window: int = 65535,
    payload: bytes = b"",
) -> bytes:
    """A TCP segment (no options) with its checksum over the pseudo-header of ``src``/``dst``."""
    segment = bytearray(TCP_HEADER.pack(src_port, dst_port, seq, ack, 5 << 4, flags, window, 0, 0) + payload)
    return _with_checksum(segment, 16, _pseudo_header(src, dst, PROTO_TCP, len(segment)))


def push_udp(*, src: IPAddress, dst: IPAddress, src_port: int, dst_port: int, payload: bytes = b"") -> bytes:
    datagram = bytearray(UDP_HEADER.pack(src_port, dst_port, UDP_HEADER.size + len(payload), 0) + payload)
    data = _with_checksum(datagram, 6, _pseudo_header(src, dst, PROTO_UDP, len(datagram)))
    if data[6:8] == b"\x00\x00":  # RFC 768: a computed 0 is sent as all ones
        data = data[:6] + b"\xff\xff" + data[8:]
    return data


def push_icmp(
    *,
    src: IPAddress,
    dst: IPAddress,
    icmp_type: int,
    code: int = 0,
    ident: int = 0,
    seq: int = 0,
    payload: bytes = b"",
) -> bytes:
    """An ICMP (IPv4) or ICMPv6 message; for errors pass ident=seq=0 and the quote as payload."""
    message = bytearray(ICMP_HEADER.pack(icmp_type, code, 0, ident, seq) + payload)
    pseudo = b"" if src.version == 4 else _pseudo_header(src, dst, PROTO_ICMPV6, len(message))
    return _with_checksum(message, 2, pseudo)


def push_ipv4(
    *,
    src: ipaddress.IPv4Address,
    dst: ipaddress.IPv4Address,
    protocol: int,
    payload: bytes,
    ident: int = 0,
    ttl: int = 64,
    dont_fragment: bool = False,
    more_fragments: bool = False,
    fragment_offset: int = 0,
) -> bytes:
    """An IPv4 packet without options; ``fragment_offset`` in bytes (a multiple of 8)."""
    frag = (0x4000 if dont_fragment else 0) | (0x2000 if more_fragments else 0) | (fragment_offset // 8)
    header = bytearray(
        IPV4_HEADER.pack(
            0x45, 0, IPV4_HEADER.size + len(payload), ident, frag, ttl, protocol, 0, src.packed, dst.packed
        )
    )
    struct.pack_into("!H", header, 10, _checksum(header))
    return bytes(header) + payload


def push_ipv6(
    *,
    src: ipaddress.IPv6Address,
    dst: ipaddress.IPv6Address,
    next_header: int,
    payload: bytes,
    hop_limit: int = 64,
    flow_label: int = 0,
) -> bytes:
    """An IPv6 packet; ``payload`` may start with extension headers (see push_ipv6_fragment)."""
    return (
        IPV6_HEADER.pack((6 << 28) | flow_label, len(payload), next_header, hop_limit, src.packed, dst.packed)
        + payload
    )


def push_ipv6_fragment(*, next_header: int, ident: int, offset: int, more: bool) -> bytes:
    """An IPv6 Fragment extension header (RFC 8200 section 4.5); ``offset`` in bytes."""
    return IPV6_FRAGMENT.pack(next_header, 0, (offset // 8) << 3 | int(more), ident)


def push_ipv6_options(*, next_header: int, padding: int = 0) -> bytes:
    """A Hop-by-Hop or Destination Options header of PadN options, 8 + 8*padding bytes."""
    body = bytes([1, 4 + 8 * padding]) + b"\x00" * (4 + 8 * padding)
    return bytes([next_header, padding]) + body
