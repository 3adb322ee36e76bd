"""Stateful SAs: round trips, tampering, replay, selectors, lifetimes with an injected clock."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from tests.unit.esp.esp_support import KEYS, LAN_B, icmp_echo, ipv4, pair, udp4, udp6
from trellis.agent.esp import (
    AuthenticationFailed,
    Cipher,
    Direction,
    DropReason,
    EspLocalError,
    InboundSa,
    Lifetime,
    LifetimeEvent,
    LifetimeTrigger,
    MalformedPacket,
    Mode,
    NextHeader,
    OutboundSa,
    ReplayedPacket,
    SaExhausted,
    SaExpired,
    SelectorMismatch,
    TrafficSelector,
)
from trellis.agent.esp.constants import MAX_SEQ_32, SEQ_SOFT_MARGIN
from trellis.agent.esp.inet import ipv4_header_valid, ones_sum


@pytest.mark.parametrize("cipher", list(Cipher))
@pytest.mark.parametrize("esn", [False, True])
def test_round_trip_ipv4_and_ipv6(cipher: Cipher, esn: bool) -> None:
    out_params, in_params = pair(cipher, esn=esn)
    out, inbound = OutboundSa(out_params, 0.0), InboundSa(in_params, 0.0)
    for size in range(0, 9):
        packet = udp4("10.1.0.5", "10.2.0.7", payload=b"p" * size)
        esp = out.seal_packet(packet, 1.0)
        assert len(esp) == out.sealed_length(len(packet))
        assert (len(esp) - 8 - 8 - 16) % 4 == 0  # 4-byte aligned ciphertext
        assert inbound.open_packet(esp, 1.0) == packet
        assert (packet in esp) is (cipher is Cipher.NULL_AUTH_AES_GMAC)  # GMAC: cleartext
    packet6 = udp6("fd00:a::5", "fd00:b::7")
    assert inbound.open_packet(out.seal_packet(packet6, 2.0), 2.0) == packet6
    assert out.packets == inbound.packets == 10
    assert out.bytes == inbound.bytes
    assert out.next_seq == 11


def test_iv_is_the_sequence_number_and_never_repeats() -> None:
    out = OutboundSa(pair()[0], 0.0)
    ivs = {out.seal_packet(udp4("10.1.0.5", "10.2.0.7"), 0.0)[8:16] for _ in range(100)}
    assert ivs == {n.to_bytes(8, "big") for n in range(1, 101)}


@pytest.mark.parametrize("cipher", list(Cipher))
def test_every_tampered_byte_is_rejected(cipher: Cipher) -> None:
    out_params, in_params = pair(cipher)
    esp = OutboundSa(out_params, 0.0).seal_packet(icmp_packet(), 0.0)
    for index in range(len(esp)):
        inbound = InboundSa(in_params, 0.0)
        tampered = bytearray(esp)
        tampered[index] ^= 0x01
        with pytest.raises((AuthenticationFailed, MalformedPacket, ReplayedPacket)):
            inbound.open_packet(bytes(tampered), 0.0)
        assert inbound.packets == 0 and inbound.window.top == 0
    inbound = InboundSa(in_params, 0.0)
    assert inbound.open_packet(esp, 0.0) == icmp_packet()


def icmp_packet() -> bytes:
    return ipv4("10.1.0.5", "10.2.0.7", 1, icmp_echo())


def test_truncated_and_wrong_key_packets() -> None:
    out_params, in_params = pair()
    esp = OutboundSa(out_params, 0.0).seal_packet(icmp_packet(), 0.0)
    inbound = InboundSa(in_params, 0.0)
    for cut in (0, 7, 8, 20, 33, len(esp) - 1):
        with pytest.raises((MalformedPacket, AuthenticationFailed)):
            inbound.open_packet(esp[:cut], 0.0)
    other_key = InboundSa(dataclasses.replace(in_params, key=bytes(36)), 0.0)
    with pytest.raises(AuthenticationFailed):
        other_key.open_packet(esp, 0.0)
    assert other_key.drops[DropReason.AUTHENTICATION] == 1
    assert inbound.open_packet(esp, 0.0) == icmp_packet()


def test_replayed_packet_is_dropped_and_counted() -> None:
    out_params, in_params = pair()
    out, inbound = OutboundSa(out_params, 0.0), InboundSa(in_params, 0.0)
    first, second = (out.seal_packet(icmp_packet(), 0.0) for _ in range(2))
    assert inbound.open_packet(second, 0.0) is not None
    assert inbound.open_packet(first, 0.0) is not None  # late but inside the window
    for again in (first, second):
        with pytest.raises(ReplayedPacket):
            inbound.open_packet(again, 0.0)
    assert inbound.drops[DropReason.REPLAY] == 2
    assert inbound.packets == 2


def test_forged_high_sequence_number_does_not_block_real_traffic() -> None:
    out_params, in_params = pair()
    out, inbound = OutboundSa(out_params, 0.0), InboundSa(in_params, 0.0)
    forged = bytearray(out.seal_packet(icmp_packet(), 0.0))
    forged[4:8] = (1_000_000).to_bytes(4, "big")
    with pytest.raises(AuthenticationFailed):
        inbound.open_packet(bytes(forged), 0.0)
    assert inbound.open_packet(out.seal_packet(icmp_packet(), 0.0), 0.0) is not None


def test_inner_packet_outside_the_selectors_is_dropped() -> None:
    out_params, in_params = pair()
    # The peer's outbound SA is wider than what we accept on this SA.
    wide = dataclasses.replace(out_params, local_ts=(TrafficSelector.from_network("10.0.0.0/8"),))
    out, inbound = OutboundSa(wide, 0.0), InboundSa(in_params, 0.0)
    for packet in (udp4("10.9.0.5", "10.2.0.7"), udp4("10.1.0.5", "10.3.0.7")):
        with pytest.raises(SelectorMismatch):
            inbound.open_packet(out.seal_packet(packet, 0.0), 0.0)
    assert inbound.drops[DropReason.SELECTOR] == 2
    assert inbound.open_packet(out.seal_packet(udp4("10.1.0.5", "10.2.0.7"), 0.0), 0.0) is not None


def test_protocol_and_port_selectors() -> None:
    out_params, in_params = pair()
    dns_only = (TrafficSelector.from_network(LAN_B, protocol=17, start_port=53, end_port=53),)
    inbound = InboundSa(dataclasses.replace(in_params, local_ts=dns_only), 0.0)
    out = OutboundSa(out_params, 0.0)
    assert inbound.open_packet(out.seal_packet(udp4("10.1.0.5", "10.2.0.7", dport=53), 0.0), 0.0)
    with pytest.raises(SelectorMismatch):
        inbound.open_packet(out.seal_packet(udp4("10.1.0.5", "10.2.0.7", dport=54), 0.0), 0.0)
    with pytest.raises(SelectorMismatch):
        inbound.open_packet(out.seal_packet(icmp_packet(), 0.0), 0.0)


def test_next_header_must_match_the_inner_version() -> None:
    out_params, in_params = pair()
    esp = OutboundSa(out_params, 0.0).seal(udp4("10.1.0.5", "10.2.0.7"), NextHeader.IPV6, 0.0)
    with pytest.raises(MalformedPacket):
        InboundSa(in_params, 0.0).open_packet(esp, 0.0)


def test_dummy_packets_are_discarded() -> None:
    out_params, in_params = pair()
    inbound = InboundSa(in_params, 0.0)
    esp = OutboundSa(out_params, 0.0).seal(b"", NextHeader.NO_NEXT_HEADER, 0.0)
    assert inbound.open_packet(esp, 0.0) is None
    assert inbound.drops[DropReason.DUMMY] == 1


def test_transport_mode_round_trip() -> None:
    out_params, in_params = pair(local=("192.0.2.1/32",), remote=("198.51.100.1/32",), mode=Mode.TRANSPORT)
    packet = udp4("192.0.2.1", "198.51.100.1", payload=b"transport")
    out, inbound = OutboundSa(out_params, 0.0), InboundSa(in_params, 0.0)
    wire = out.seal_transport(packet, 0.0)
    assert wire[9] == NextHeader.ESP and int.from_bytes(wire[2:4], "big") == len(wire)
    assert ipv4_header_valid(wire[:20])
    assert wire[20:24] == (0x1000).to_bytes(4, "big")
    assert inbound.open_transport(wire, 0.0) == packet


def test_checksum_against_rfc1071_example() -> None:
    # RFC 1071 section 3: the ones' complement sum of 0001 f203 f4f5 f6f7 is ddf2.
    assert ones_sum(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    # An IPv4 header from draft-mcgrew-gcm-test-01 carries a valid checksum.
    assert ipv4_header_valid(bytes.fromhex("45000048699a000080114db7c0a80102c0a80101"))


# ---- lifetimes, with the clock injected through ``now`` ----


def events_of(*sas: OutboundSa | InboundSa) -> list[tuple[LifetimeTrigger, bool]]:
    return [(e.trigger, e.hard) for sa in sas for e in sa.take_events()]


def test_byte_lifetimes_fire_soft_then_hard_once() -> None:
    out_params, in_params = pair(lifetime=Lifetime(soft_bytes=1000, hard_bytes=2000))
    out, inbound = OutboundSa(out_params, 0.0), InboundSa(in_params, 0.0)
    packet = udp4("10.1.0.5", "10.2.0.7", payload=bytes(72))  # 100 bytes
    for n in range(1, 20):
        inbound.open_packet(out.seal_packet(packet, float(n)), float(n))
        if n < 10:
            assert not out.has_events
    assert events_of(out) == [(LifetimeTrigger.BYTES, False)]
    assert events_of(inbound) == [(LifetimeTrigger.BYTES, False)]
    inbound.open_packet(out.seal_packet(packet, 20.0), 20.0)  # the 2000th byte
    assert events_of(out, inbound) == [(LifetimeTrigger.BYTES, True)] * 2
    with pytest.raises(SaExhausted):
        out.seal_packet(packet, 21.0)
    assert out.expired and inbound.expired
    assert events_of(out, inbound) == []


def test_packet_lifetimes_and_event_contents() -> None:
    out_params, _ = pair(lifetime=Lifetime(soft_packets=3, hard_packets=5))
    out = OutboundSa(out_params, 0.0)
    for _ in range(3):
        out.seal_packet(icmp_packet(), 0.0)
    assert out.take_events() == [
        LifetimeEvent(
            spi=0x1000, direction=Direction.OUTBOUND, tag="a->b", trigger=LifetimeTrigger.PACKETS, hard=False
        )
    ]
    out.seal_packet(icmp_packet(), 0.0)
    out.seal_packet(icmp_packet(), 0.0)
    assert events_of(out) == [(LifetimeTrigger.PACKETS, True)]
    snapshot = out.snapshot(now=4.0)
    assert snapshot.packets == 5 and snapshot.expired and snapshot.rekey_requested
    assert snapshot.age_seconds == 4.0


def test_time_lifetimes_fire_by_poll_without_traffic() -> None:
    out_params, in_params = pair(lifetime=Lifetime(soft_seconds=60, hard_seconds=90))
    out, inbound = OutboundSa(out_params, 1000.0), InboundSa(in_params, 1000.0)
    out.poll(1059.9)
    inbound.poll(1059.9)
    assert events_of(out, inbound) == []
    out.poll(1060.0)
    inbound.poll(1075.0)
    assert events_of(out, inbound) == [(LifetimeTrigger.TIME, False)] * 2
    esp = out.seal_packet(icmp_packet(), 1080.0)
    assert inbound.open_packet(esp, 1080.0) is not None
    with pytest.raises(SaExpired):
        inbound.open_packet(out.seal_packet(icmp_packet(), 1089.0), 1090.0)
    assert inbound.drops[DropReason.EXPIRED] == 1
    with pytest.raises(SaExhausted):
        out.seal_packet(icmp_packet(), 1090.0)
    assert events_of(out, inbound) == [(LifetimeTrigger.TIME, True)] * 2


def test_hard_time_reached_without_soft_limit() -> None:
    out = OutboundSa(pair(lifetime=Lifetime(hard_seconds=10))[0], 0.0)
    out.poll(10.0)
    assert events_of(out) == [(LifetimeTrigger.TIME, True)]


def test_sequence_exhaustion_without_esn() -> None:
    out_params, _ = pair()
    out = OutboundSa(out_params, 0.0, next_seq=MAX_SEQ_32 - SEQ_SOFT_MARGIN - 1)
    out.seal_packet(icmp_packet(), 0.0)
    assert events_of(out) == []
    out.seal_packet(icmp_packet(), 0.0)
    assert events_of(out) == [(LifetimeTrigger.SEQUENCE, False)]
    last = OutboundSa(out_params, 0.0, next_seq=MAX_SEQ_32)
    esp = last.seal_packet(icmp_packet(), 0.0)
    assert esp[4:8] == b"\xff\xff\xff\xff"
    assert events_of(last) == [(LifetimeTrigger.SEQUENCE, True)]
    with pytest.raises(SaExhausted):  # the 32-bit counter must not cycle (RFC 4303 3.3.3)
        last.seal_packet(icmp_packet(), 0.0)


def test_esn_continues_past_32_bits() -> None:
    out = OutboundSa(pair(esn=True)[0], 0.0, next_seq=MAX_SEQ_32)
    out.seal_packet(icmp_packet(), 0.0)
    esp = out.seal_packet(icmp_packet(), 0.0)
    assert esp[4:8] == b"\x00\x00\x00\x00" and esp[8:16] == (1 << 32).to_bytes(8, "big")
    assert not out.has_events


def test_bad_parameters_are_local_errors() -> None:
    out_params, _ = pair()
    with pytest.raises(EspLocalError):
        dataclasses.replace(out_params, spi=255)
    with pytest.raises(EspLocalError):
        dataclasses.replace(out_params, key=bytes(17))
    with pytest.raises(EspLocalError):
        dataclasses.replace(out_params, cipher=Cipher.CHACHA20_POLY1305, key=bytes(20))
    with pytest.raises(EspLocalError):
        Lifetime(soft_bytes=10, hard_bytes=5)
    with pytest.raises(EspLocalError):
        InboundSa(out_params, 0.0)  # an outbound SA's parameters
    with pytest.raises(EspLocalError):
        OutboundSa(out_params, 0.0, next_seq=0)


def test_key_is_not_in_repr() -> None:
    out_params, _ = pair()
    assert KEYS[Cipher.AES_GCM_16].hex() not in repr(out_params)
    assert repr(KEYS[Cipher.AES_GCM_16]) not in repr(out_params)


def test_inner_mtu_from_overhead() -> None:
    out_params, _ = pair()
    mtu = out_params.inner_mtu(1500)
    # 20 IP + 8 UDP + 8 ESP header + 8 IV + 16 ICV + 2 trailer; 4-byte alignment.
    assert mtu == 1438
    assert OutboundSa(out_params, 0.0).sealed_length(mtu) + 28 == 1500
    assert OutboundSa(out_params, 0.0).sealed_length(mtu + 1) + 28 > 1500
    v6 = dataclasses.replace(
        out_params,
        local_address=ipaddress.ip_address("2001:db8::1"),
        remote_address=ipaddress.ip_address("2001:db8::2"),
    )
    assert v6.inner_mtu(1500) == 1418
