"""Inner-packet surgery for the userspace data plane, sans-IO: bytes in, bytes out.

- the virtio-net header that a TUN device with IFF_VNET_HDR puts in front of every packet
  (include/uapi/linux/virtio_net.h), so that the kernel can hand us 64 KB TCP super-packets
  (TSO) and accept them from us (GRO);
- TSO segmentation of such a super-packet into MSS-sized TCP segments with full checksums;
- coalescing of consecutive TCP segments of one flow back into one super-packet;
- TCP MSS clamping on SYNs (RFC 879, RFC 6691), with the incremental checksum update of
  RFC 1624;
- ICMP "fragmentation needed" (RFC 792, RFC 1191) and ICMPv6 "packet too big" (RFC 4443).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from trellis.agent.esp.inet import checksum, fold, ones_sum, pseudo_header_sum, set_ipv4_checksum
from trellis.agent.esp.transforms import Buffer

# ---- virtio-net header ----------------------------------------------------------------

VNET_HEADER = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HEADER_LENGTH = VNET_HEADER.size
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_ECN = 0x80
PLAIN_VNET_HEADER = bytes(VNET_HEADER_LENGTH)  # no offload: the kernel checks everything

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_ICMPV6 = 58
IPV4_HEADER = 20
IPV6_HEADER = 40
TCP_HEADER = 20
TCP_CHECKSUM_OFFSET = 16

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

# Bounds of what we build: the IPv4/IPv6 length fields, and the kernel's segment limit.
MAX_SUPER_PACKET = 65535
MAX_COALESCED_SEGMENTS = 64

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class VnetHeader:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return VNET_HEADER.pack(
            self.flags, self.gso_type, self.hdr_len, self.gso_size, self.csum_start, self.csum_offset
        )


def pull_vnet_header(frame: Buffer) -> VnetHeader:
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HEADER.unpack_from(frame)
    return VnetHeader(
        flags=flags,
        gso_type=gso_type,
        hdr_len=hdr_len,
        gso_size=gso_size,
        csum_start=csum_start,
        csum_offset=csum_offset,
    )


class PacketError(ValueError):
    """A packet from the local stack we cannot process (counted as malformed, dropped)."""


def complete_checksum(packet: bytearray, csum_start: int, csum_offset: int) -> None:
    """Finish a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field already holds the
    pseudo-header sum; add everything from ``csum_start`` and store the complement."""
    field = csum_start + csum_offset
    if field + 2 > len(packet) or csum_start >= len(packet):
        raise PacketError("checksum offsets beyond the packet")
    _U16.pack_into(packet, field, checksum(memoryview(packet)[csum_start:]))


def _ip_layout(packet: Buffer) -> tuple[int, int, int]:
    """(version, IP header length, L4 protocol) of a packet without IPv6 extension headers."""
    version = packet[0] >> 4
    if version == 4:
        return 4, (packet[0] & 0x0F) * 4, packet[9]
    if version == 6:
        return 6, IPV6_HEADER, packet[6]
    raise PacketError(f"IP version {version}")


def _addresses(packet: Buffer, version: int) -> tuple[bytes, bytes]:
    if version == 4:
        return bytes(packet[12:16]), bytes(packet[16:20])
    return bytes(packet[8:24]), bytes(packet[24:40])


# ---- TSO: one super-packet -> MSS-sized segments ---------------------------------------


def tso_segments(packet: Buffer, gso_size: int) -> list[bytes]:
    """Cut a TCP super-packet (TUN read with GSO_TCPV4/6) into segments of ``gso_size`` payload
    bytes, each with its own IP length/ID and TCP sequence number, flags and full checksum.

    Checksums are incremental: the sums of the constant parts of both headers are computed once,
    the per-segment fields (lengths, IP ID, sequence number, flags) are added as numbers, so
    that only the payload is summed per segment."""
    version, ip_length, protocol = _ip_layout(packet)
    if protocol != IPPROTO_TCP or gso_size <= 0:
        raise PacketError("TSO for a non-TCP packet")
    tcp_length = (packet[ip_length + 12] >> 4) * 4
    header_length = ip_length + tcp_length
    if tcp_length < TCP_HEADER or len(packet) < header_length:
        raise PacketError("truncated TCP super-packet")
    payload = memoryview(packet)[header_length:]
    template = bytearray(packet[:header_length])
    src, dst = _addresses(packet, version)
    first_seq = _U32.unpack_from(template, ip_length + 4)[0]
    flags = template[ip_length + 13]
    # Zero the per-segment fields and sum what stays.
    template[ip_length + 4 : ip_length + 8] = b"\x00\x00\x00\x00"  # sequence number
    template[ip_length + 13] = 0  # flags
    template[ip_length + 16 : ip_length + 18] = b"\x00\x00"  # TCP checksum
    tcp_sum = ones_sum(src) + ones_sum(dst) + IPPROTO_TCP + ones_sum(template[ip_length:])
    if version == 4:
        first_id = _U16.unpack_from(template, 4)[0]
        template[2:6] = b"\x00\x00\x00\x00"  # total length, identification
        template[10:12] = b"\x00\x00"  # header checksum
        ip_sum = ones_sum(template[:ip_length])
    segments = []
    count = max(1, -(-len(payload) // gso_size))
    last = count - 1
    for i in range(count):
        chunk = payload[i * gso_size : (i + 1) * gso_size]
        seq = (first_seq + i * gso_size) & 0xFFFFFFFF
        segment_flags = flags if i == last else flags & ~(TCP_FIN | TCP_PSH)
        if i:
            segment_flags &= ~TCP_CWR
        l4_length = tcp_length + len(chunk)
        header = bytearray(template)
        _U32.pack_into(header, ip_length + 4, seq)
        header[ip_length + 13] = segment_flags
        total = tcp_sum + l4_length + (seq >> 16) + (seq & 0xFFFF) + segment_flags + ones_sum(chunk)
        _U16.pack_into(header, ip_length + 16, ~fold(total) & 0xFFFF)
        if version == 4:
            ident = (first_id + i) & 0xFFFF
            length = ip_length + l4_length
            _U16.pack_into(header, 2, length)
            _U16.pack_into(header, 4, ident)
            _U16.pack_into(header, 10, ~fold(ip_sum + length + ident) & 0xFFFF)
        else:
            _U16.pack_into(header, 4, l4_length)
        segments.append(b"".join((header, chunk)))
    return segments


# ---- GRO: consecutive segments -> one super-packet --------------------------------------


def tcp_checksum_valid(packet: Buffer, version: int, ip_length: int) -> bool:
    src, dst = _addresses(packet, version)
    segment = memoryview(packet)[ip_length:]
    return fold(pseudo_header_sum(src, dst, IPPROTO_TCP, len(segment)) + ones_sum(segment)) == 0xFFFF


@dataclass(slots=True)
class _Run:
    """Consecutive segments of one flow being merged."""

    version: int
    ip_length: int
    header_length: int
    flow: bytes  # addresses and ports
    same: bytes  # TCP ack, data offset, window, urgent pointer and options: must not change
    next_seq: int
    segment_size: int
    first: bytes
    payloads: list[memoryview]
    total: int


_ACK = TCP_ACK
_ACK_PSH = TCP_ACK | TCP_PSH


class TcpCoalescer:
    """Merge consecutive in-order TCP segments of a flow into super-packets for one TUN write
    each (the kernel then forwards or delivers one skb instead of dozens).

    With ``verify``, segments must have valid TCP checksums to be merged: the merged packet is
    handed over with a partial checksum that nobody verifies again, so a segment damaged
    before it was encrypted would otherwise be delivered. Others pass through unchanged (and
    the receiving stack drops them as it would have). ``add`` queues, ``flush`` returns what to
    write, in arrival order, as I/O vectors for writev: the virtio-net header, then the packet
    in pieces (a merged packet is never copied together).
    """

    def __init__(self, *, verify: bool = True) -> None:
        self.verify = verify
        self._out: list[_Run | bytes] = []
        self._run: _Run | None = None  # the run the next packet may extend (the last queued)

    def add(self, packet: bytes) -> None:
        size = len(packet)
        first_byte = packet[0] if size else 0
        if (
            first_byte == 0x45
            and size >= 40
            and packet[9] == IPPROTO_TCP
            and not (packet[6] & 0x3F | packet[7])
        ):
            version, ip_length = 4, IPV4_HEADER
        elif first_byte >> 4 == 6 and size >= 60 and packet[6] == IPPROTO_TCP:
            version, ip_length = 6, IPV6_HEADER
        else:
            self._pass(packet)
            return
        flags = packet[ip_length + 13]
        header_length = ip_length + (packet[ip_length + 12] >> 4) * 4
        payload_length = size - header_length
        if flags not in (_ACK, _ACK_PSH) or header_length < ip_length + TCP_HEADER or payload_length <= 0:
            self._pass(packet)
            return
        if self.verify:
            # addresses and TCP segment are contiguous: one sum covers pseudo-header and segment
            start = 12 if version == 4 else 8
            l4_length = size - ip_length
            if fold(ones_sum(packet[start:]) + IPPROTO_TCP + l4_length) != 0xFFFF:
                self._pass(packet)
                return
        if version == 4:
            flow = packet[12:24]
            same = bytes((packet[1], packet[6] & 0x40, packet[8]))
        else:
            flow = packet[8:44]
            same = packet[0:4] + packet[7:8]
        same += packet[ip_length + 8 : ip_length + 13] + packet[ip_length + 14 : ip_length + 16]
        same += packet[ip_length + 18 : header_length]
        seq = _U32.unpack_from(packet, ip_length + 4)[0]
        run = self._run
        if (
            run is not None
            and run.next_seq == seq
            and run.flow == flow
            and run.same == same
            and payload_length <= run.segment_size
            and run.total + payload_length <= MAX_SUPER_PACKET
            and len(run.payloads) < MAX_COALESCED_SEGMENTS
        ):
            run.payloads.append(memoryview(packet)[header_length:])
            run.total += payload_length
            run.next_seq = (seq + payload_length) & 0xFFFFFFFF
            if flags & TCP_PSH:
                run.first = _with_psh(run.first, ip_length)
            if flags & TCP_PSH or payload_length < run.segment_size:
                self._run = None
            return
        run = _Run(
            version=version,
            ip_length=ip_length,
            header_length=header_length,
            flow=flow,
            same=same,
            next_seq=(seq + payload_length) & 0xFFFFFFFF,
            segment_size=payload_length,
            first=packet,
            payloads=[memoryview(packet)[header_length:]],
            total=size,
        )
        self._out.append(run)
        self._run = None if flags & TCP_PSH else run

    def _pass(self, packet: bytes) -> None:
        self._out.append(packet)
        self._run = None

    def flush(self) -> list[list[Buffer]]:
        out: list[list[Buffer]] = [
            _emit(item) if isinstance(item, _Run) else [PLAIN_VNET_HEADER, item] for item in self._out
        ]
        self._out.clear()
        self._run = None
        return out


def _with_psh(packet: bytes, ip_length: int) -> bytes:
    data = bytearray(packet)
    data[ip_length + 13] |= TCP_PSH
    return bytes(data)


def _emit(run: _Run) -> list[Buffer]:
    if len(run.payloads) == 1:
        return [PLAIN_VNET_HEADER, run.first]
    header = bytearray(run.first[: run.header_length])
    l4_length = run.total - run.ip_length
    if run.version == 4:
        _U16.pack_into(header, 2, run.total)
        set_ipv4_checksum(memoryview(header)[: run.ip_length])
        gso_type = GSO_TCPV4
    else:
        _U16.pack_into(header, 4, l4_length)
        gso_type = GSO_TCPV6
    src, dst = _addresses(header, run.version)
    # NEEDS_CSUM: the field carries the folded pseudo-header sum, the kernel adds the rest.
    _U16.pack_into(
        header, run.ip_length + TCP_CHECKSUM_OFFSET, fold(pseudo_header_sum(src, dst, IPPROTO_TCP, l4_length))
    )
    vnet = VnetHeader(
        flags=VNET_F_NEEDS_CSUM,
        gso_type=gso_type,
        hdr_len=run.header_length,
        gso_size=run.segment_size,
        csum_start=run.ip_length,
        csum_offset=TCP_CHECKSUM_OFFSET,
    )
    return [vnet.pack(), header, *run.payloads]


# ---- MSS clamping ----------------------------------------------------------------------

_TCP_OPTION_END = 0
_TCP_OPTION_NOP = 1
_TCP_OPTION_MSS = 2


def clamp_mss(packet: bytearray, max_mss: int) -> bool:
    """Lower the MSS option of a TCP SYN to ``max_mss``; True if the packet changed."""
    try:
        version, ip_length, protocol = _ip_layout(packet)
    except PacketError:
        return False
    if protocol != IPPROTO_TCP or len(packet) < ip_length + TCP_HEADER:
        return False
    if version == 4 and (packet[6] & 0x1F) | packet[7]:
        return False
    if not packet[ip_length + 13] & TCP_SYN:
        return False
    end = min(len(packet), ip_length + (packet[ip_length + 12] >> 4) * 4)
    at = ip_length + TCP_HEADER
    while at < end:
        kind = packet[at]
        if kind == _TCP_OPTION_END:
            return False
        if kind == _TCP_OPTION_NOP:
            at += 1
            continue
        if at + 1 >= end or packet[at + 1] < 2:
            return False
        length = packet[at + 1]
        if kind == _TCP_OPTION_MSS and length == 4 and at + 4 <= end:
            old = _U16.unpack_from(packet, at + 2)[0]
            if old <= max_mss:
                return False
            _U16.pack_into(packet, at + 2, max_mss)
            field = ip_length + TCP_CHECKSUM_OFFSET
            old_check = _U16.unpack_from(packet, field)[0]
            # RFC 1624 equation 3: HC' = ~(~HC + ~m + m')
            new_check = ~fold((~old_check & 0xFFFF) + (~old & 0xFFFF) + max_mss) & 0xFFFF
            _U16.pack_into(packet, field, new_check)
            return True
        at += length
    return False


def is_tcp_syn(packet: Buffer) -> bool:
    """Cheap pre-check before clamp_mss (IPv4 without options or IPv6 without extensions)."""
    version = packet[0] >> 4
    if version == 4:
        offset = (packet[0] & 0x0F) * 4
        return packet[9] == IPPROTO_TCP and len(packet) > offset + 13 and bool(packet[offset + 13] & TCP_SYN)
    if version == 6:
        return packet[6] == IPPROTO_TCP and len(packet) > 53 and bool(packet[53] & TCP_SYN)
    return False


# ---- ICMP errors for packets too big ----------------------------------------------------

ICMP_DEST_UNREACHABLE = 3
ICMP_FRAG_NEEDED = 4
ICMP_ERROR_TYPES = frozenset((3, 4, 5, 11, 12))
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_MIN_MTU = 1280
ICMP_QUOTE_V4 = 548  # RFC 1812 4.3.2.3: quote as much as fits a 576-byte datagram
ERROR_TTL = 64


def dont_fragment(packet: Buffer) -> bool:
    """IPv6 is never fragmented by routers; IPv4 only without DF."""
    return packet[0] >> 4 == 6 or bool(packet[6] & 0x40)


def packet_too_big(packet: Buffer, mtu: int, source: bytes) -> bytes | None:
    """The ICMP error telling the sender of ``packet`` to use ``mtu``, from ``source`` (4 or 16
    bytes); None where RFC 1122/4443 forbid an error (ICMP errors, non-first fragments)."""
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < IPV4_HEADER or len(source) != 4 or (packet[6] & 0x1F) | packet[7]:
            return None
        ip_length = (packet[0] & 0x0F) * 4
        if packet[9] == IPPROTO_ICMP and len(packet) > ip_length and packet[ip_length] in ICMP_ERROR_TYPES:
            return None
        quote = bytes(packet[:ICMP_QUOTE_V4])
        icmp = bytearray(struct.pack(">BBHHH", ICMP_DEST_UNREACHABLE, ICMP_FRAG_NEEDED, 0, 0, mtu) + quote)
        _U16.pack_into(icmp, 2, checksum(icmp))
        ip_header = bytearray(
            struct.pack(
                ">BBHHHBBH4s4s",
                0x45,
                0,
                IPV4_HEADER + len(icmp),
                0,
                0,
                ERROR_TTL,
                IPPROTO_ICMP,
                0,
                source,
                bytes(packet[12:16]),
            )
        )
        set_ipv4_checksum(ip_header)
        return bytes(ip_header + icmp)
    if version == 6:
        if len(packet) < IPV6_HEADER or len(source) != 16:
            return None
        if packet[6] == IPPROTO_ICMPV6 and len(packet) > IPV6_HEADER and packet[IPV6_HEADER] < 128:
            return None  # an ICMPv6 error message
        quote = bytes(packet[: ICMPV6_MIN_MTU - IPV6_HEADER - 8])
        icmp = bytearray(struct.pack(">BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, max(mtu, ICMPV6_MIN_MTU)) + quote)
        dst = bytes(packet[8:24])
        _U16.pack_into(icmp, 2, checksum(icmp, pseudo_header_sum(source, dst, IPPROTO_ICMPV6, len(icmp))))
        ip = struct.pack(">IHBB16s16s", 6 << 28, len(icmp), IPPROTO_ICMPV6, ERROR_TTL, source, dst)
        return ip + bytes(icmp)
    return None
