"""Inner-packet surgery of the userspace data plane: TSO, GRO, MSS clamping, ICMP errors."""

from __future__ import annotations

import os
import struct

import pytest

from tests.unit.esp.esp_support import TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN, icmp_echo, ipv4, tcp4, tcp6
from trellis.agent.dataplane.packets import (
    GSO_TCPV4,
    GSO_TCPV6,
    PLAIN_VNET_HEADER,
    TCP_CWR,
    VNET_F_NEEDS_CSUM,
    TcpCoalescer,
    VnetHeader,
    clamp_mss,
    complete_checksum,
    is_tcp_syn,
    packet_too_big,
    pull_vnet_header,
    tcp_checksum_valid,
    tso_segments,
)
from trellis.agent.esp.inet import checksum, fold, ipv4_header_valid, pseudo_header_sum

MSS = 1000


def test_tcp_checksums_of_real_packets() -> None:
    # Two TCP/IPv4 packets from draft-mcgrew-gcm-test-01 (captured traffic): checksums valid.
    for text in (
        "45000028a4ad4000400678800a01038f0a010612802306b8cb712602dd6bb03e501016d075680000",
        "45080028732c00004006e9f90a0106120a01038f06b88023dd6bafbecb71260250101f646d540000",
    ):
        packet = bytes.fromhex(text)
        assert ipv4_header_valid(packet[:20])
        assert tcp_checksum_valid(packet, 4, 20)
        damaged = bytearray(packet)
        damaged[30] ^= 0x10
        assert not tcp_checksum_valid(damaged, 4, 20)


def test_vnet_header_round_trip() -> None:
    header = VnetHeader(flags=1, gso_type=GSO_TCPV4, hdr_len=52, gso_size=1386, csum_start=20, csum_offset=16)
    assert pull_vnet_header(header.pack() + b"rest") == header
    assert len(PLAIN_VNET_HEADER) == 10


def super_packet(version: int, payload: bytes, flags: int) -> bytes:
    if version == 4:
        return tcp4("10.1.0.10", "10.2.0.10", 40000, 5201, flags=flags, seq=0xFFFFF000, payload=payload)
    return tcp6("fd00:a::10", "fd00:b::10", 40000, 5201, flags=flags, seq=0xFFFFF000, payload=payload)


@pytest.mark.parametrize("version", [4, 6])
def test_tso_segments_are_valid_tcp_segments(version: int) -> None:
    payload = os.urandom(5 * MSS + 123)
    packet = super_packet(version, payload, TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR)
    segments = tso_segments(packet, MSS)
    assert len(segments) == 6
    ip_length = 20 if version == 4 else 40
    for i, segment in enumerate(segments):
        body = segment[ip_length + 20 :]
        assert body == payload[i * MSS : (i + 1) * MSS]
        assert tcp_checksum_valid(segment, version, ip_length)
        seq = struct.unpack_from(">I", segment, ip_length + 4)[0]
        assert seq == (0xFFFFF000 + i * MSS) & 0xFFFFFFFF  # wraps around 2^32
        flags = segment[ip_length + 13]
        assert bool(flags & (TCP_FIN | TCP_PSH)) is (i == 5)
        assert bool(flags & TCP_CWR) is (i == 0)
        if version == 4:
            assert ipv4_header_valid(segment[:20])
            assert struct.unpack_from(">H", segment, 2)[0] == len(segment)
            assert struct.unpack_from(">H", segment, 4)[0] == 1 + i  # IP ID counts up
        else:
            assert struct.unpack_from(">H", segment, 4)[0] == len(segment) - 40


def test_complete_partial_checksum() -> None:
    packet = bytearray(tcp4("10.1.0.10", "10.2.0.10", 1, 2, payload=b"partial checksum"))
    valid = bytes(packet)
    # What the kernel hands over with NEEDS_CSUM: the folded pseudo-header sum in the field.
    struct.pack_into(
        ">H", packet, 36, fold(pseudo_header_sum(packet[12:16], packet[16:20], 6, len(packet) - 20))
    )
    complete_checksum(packet, 20, 16)
    assert bytes(packet) == valid


@pytest.mark.parametrize("version", [4, 6])
def test_coalescing_restores_the_super_packet(version: int) -> None:
    payload = os.urandom(7 * MSS)
    original = super_packet(version, payload, TCP_ACK | TCP_PSH)
    coalescer = TcpCoalescer()
    for segment in tso_segments(original, MSS):
        coalescer.add(segment)
    [iov] = coalescer.flush()
    vnet, merged = pull_vnet_header(iov[0]), b"".join(iov[1:])
    ip_length = 20 if version == 4 else 40
    assert vnet == VnetHeader(
        flags=VNET_F_NEEDS_CSUM,
        gso_type=GSO_TCPV4 if version == 4 else GSO_TCPV6,
        hdr_len=ip_length + 20,
        gso_size=MSS,
        csum_start=ip_length,
        csum_offset=16,
    )
    assert merged[ip_length + 20 :] == payload
    completed = bytearray(merged)
    complete_checksum(completed, vnet.csum_start, vnet.csum_offset)
    assert bytes(completed) == original  # headers, PSH, lengths: as the sender made them


def test_coalescing_keeps_order_and_breaks_runs() -> None:
    segments = tso_segments(super_packet(4, os.urandom(4 * MSS), TCP_ACK), MSS)
    other_flow = tso_segments(
        tcp4("10.1.0.11", "10.2.0.10", 40001, 5201, flags=TCP_ACK, payload=os.urandom(2 * MSS)), MSS
    )
    ping = ipv4("10.1.0.10", "10.2.0.10", 1, icmp_echo())
    damaged = bytearray(segments[3])
    damaged[-1] ^= 0xFF
    coalescer = TcpCoalescer()
    for packet in (segments[0], segments[1], ping, segments[2], *other_flow, bytes(damaged)):
        coalescer.add(packet)
    out = coalescer.flush()
    assert [len(b"".join(iov[1:])) for iov in out] == [
        40 + 2 * MSS,
        len(ping),
        40 + MSS,
        40 + 2 * MSS,
        len(damaged),
    ]
    assert out[1] == [PLAIN_VNET_HEADER, ping]
    assert out[2] == [PLAIN_VNET_HEADER, segments[2]]  # a lone segment stays as it was
    assert out[4] == [PLAIN_VNET_HEADER, bytes(damaged)]  # a bad checksum is not merged
    assert coalescer.flush() == []


def test_coalescing_stops_at_gaps_and_short_segments() -> None:
    segments = tso_segments(super_packet(4, os.urandom(3 * MSS + 10), TCP_ACK), MSS)
    coalescer = TcpCoalescer()
    for packet in (segments[0], segments[2], segments[3], segments[1]):
        coalescer.add(packet)
    sizes = [len(b"".join(iov[1:])) - 40 for iov in coalescer.flush()]
    assert sizes == [MSS, MSS + 10, MSS]  # 0 | 2+3 (short one ends the run) | 1 (out of order)


def test_syn_and_fin_segments_are_not_merged() -> None:
    coalescer = TcpCoalescer()
    syn = tcp4("10.1.0.10", "10.2.0.10", 1, 2, flags=TCP_SYN)
    fin = tcp4("10.1.0.10", "10.2.0.10", 1, 2, flags=TCP_ACK | TCP_FIN, seq=1001, payload=b"x")
    coalescer.add(syn)
    coalescer.add(fin)
    assert coalescer.flush() == [[PLAIN_VNET_HEADER, syn], [PLAIN_VNET_HEADER, fin]]


MSS_OPTION = b"\x02\x04\x05\xb4"  # MSS 1460
OPTIONS = b"\x01\x01\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00" + MSS_OPTION  # NOP NOP timestamps MSS


@pytest.mark.parametrize("version", [4, 6])
def test_mss_clamping_on_syn(version: int) -> None:
    build = tcp4 if version == 4 else tcp6
    src, dst = ("10.1.0.10", "10.2.0.10") if version == 4 else ("fd00:a::1", "fd00:b::1")
    syn = bytearray(build(src, dst, 40000, 443, flags=TCP_SYN, options=OPTIONS))
    assert is_tcp_syn(syn)
    ip_length = 20 if version == 4 else 40
    assert clamp_mss(syn, 1398)
    assert struct.unpack_from(">H", syn, ip_length + 20 + len(OPTIONS) - 2)[0] == 1398
    assert tcp_checksum_valid(syn, version, ip_length)  # RFC 1624 incremental update
    assert not clamp_mss(syn, 1400)  # already smaller
    ack = bytearray(build(src, dst, 40000, 443, flags=TCP_ACK, options=OPTIONS))
    assert not is_tcp_syn(ack) and not clamp_mss(ack, 500)


def test_packet_too_big_ipv4() -> None:
    original = tcp4("10.1.0.10", "10.2.0.10", 40000, 443, payload=os.urandom(1500))
    error = packet_too_big(original, 1438, bytes([192, 0, 2, 1]))
    assert error is not None
    assert ipv4_header_valid(error[:20]) and error[9] == 1
    assert error[12:16] == bytes([192, 0, 2, 1]) and error[16:20] == original[12:16]
    icmp = error[20:]
    assert (icmp[0], icmp[1], struct.unpack_from(">H", icmp, 6)[0]) == (3, 4, 1438)
    assert checksum(icmp) == 0
    assert icmp[8:] == original[:548]
    # no ICMP error about an ICMP error
    assert packet_too_big(error, 1000, bytes(4)) is None


def test_packet_too_big_ipv6() -> None:
    original = tcp6("fd00:a::10", "fd00:b::10", 40000, 443, payload=os.urandom(1500))
    source = bytes.fromhex("fd00000a000000000000000000000001")
    error = packet_too_big(original, 1418, source)
    assert error is not None and error[6] == 58 and error[24:40] == original[8:24]
    icmp = error[40:]
    assert (icmp[0], icmp[1], struct.unpack_from(">I", icmp, 4)[0]) == (2, 0, 1418)
    assert len(error) <= 1280
    assert checksum(icmp, pseudo_header_sum(error[8:24], error[24:40], 58, len(icmp))) == 0
