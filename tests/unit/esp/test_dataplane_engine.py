"""The data-plane pipelines without I/O: SA choice, policy hook, MTU, IKE/keepalive split,
counters, lifetimes."""

from __future__ import annotations

import dataclasses
import os
import struct

import pytest

from tests.unit.esp.esp_support import TCP_ACK, TCP_SYN, DropPort, icmp_echo, ipv4, pair, tcp4, udp4
from trellis.agent.dataplane.engine import EngineConfig, InboundEngine, OutboundEngine
from trellis.agent.dataplane.packets import (
    GSO_TCPV4,
    PLAIN_VNET_HEADER,
    VNET_F_NEEDS_CSUM,
    VnetHeader,
    pull_vnet_header,
)
from trellis.agent.esp import (
    Direction,
    DropReason,
    EspLocalError,
    InboundSa,
    Lifetime,
    LifetimeTrigger,
    SaParams,
    TrafficSelector,
)
from trellis.agent.esp.inet import fold, pseudo_header_sum
from trellis.agent.esp.transforms import Buffer

PEER = ("198.51.100.1", 4500)
ME = ("192.0.2.1", 4500)


def engines(
    config: EngineConfig | None = None, *, lifetime: Lifetime | None = None
) -> tuple[OutboundEngine, InboundEngine, SaParams, SaParams]:
    out_params, in_params = pair(lifetime=lifetime)
    out, inbound = OutboundEngine(config or EngineConfig()), InboundEngine(config or EngineConfig())
    out.install(out_params, 0.0)
    inbound.install(in_params, 0.0)
    out.tun_mtu = inbound.tun_mtu = out.inner_mtu()
    return out, inbound, out_params, in_params


def send(out: OutboundEngine, *packets: Buffer) -> list[bytes]:
    for packet in packets:
        out.handle_frame(packet, 1.0)
    batches = out.take_datagrams()
    assert all(endpoint == PEER for endpoint, _ in batches)
    return [datagram for _, batch in batches for datagram in batch]


def receive(inbound: InboundEngine, *datagrams: bytes) -> list[bytes]:
    for datagram in datagrams:
        inbound.handle_datagram(datagram, ME, 1.0)
    return [b"".join(iov) for iov in inbound.take_tun_writes()]  # no virtio-net headers here


def test_a_packet_through_both_engines() -> None:
    out, inbound, _, _ = engines()
    packet = udp4("10.1.0.5", "10.2.0.7")
    datagrams = send(out, packet)
    assert len(datagrams) == 1
    assert receive(inbound, *datagrams) == [packet]
    counters = {(c.direction, c.packets) for c in out.snapshot(2.0) + inbound.snapshot(2.0)}
    assert counters == {(Direction.OUTBOUND, 1), (Direction.INBOUND, 1)}


def test_no_sa_outside_the_selectors() -> None:
    out, _, _, _ = engines()
    assert send(out, udp4("10.1.0.5", "10.9.0.7"), udp4("10.8.0.5", "10.2.0.7"), b"\x60garbage") == []
    assert out.stats.drops == {DropReason.NO_SA: 2, DropReason.MALFORMED: 1}


def test_longest_prefix_then_selectors_then_newest() -> None:
    out = OutboundEngine(EngineConfig())
    base, _ = pair()
    wide = dataclasses.replace(base, spi=0x2000, remote_ts=(TrafficSelector.from_network("10.2.0.0/16"),))
    narrow = dataclasses.replace(base, spi=0x3000, remote_ts=(TrafficSelector.from_network("10.2.5.0/24"),))
    web = dataclasses.replace(
        base,
        spi=0x4000,
        remote_ts=(TrafficSelector.from_network("10.2.6.0/24", protocol=6, start_port=443, end_port=443),),
    )
    for params in (wide, narrow, web):
        out.install(params, 0.0)

    def spi_for(packet: bytes) -> int:
        [datagram] = send(out, packet)
        return int.from_bytes(datagram[:4], "big")

    assert spi_for(udp4("10.1.0.5", "10.2.5.9")) == 0x3000
    assert spi_for(udp4("10.1.0.5", "10.2.7.9")) == 0x2000
    assert spi_for(tcp4("10.1.0.5", "10.2.6.9", 5000, 443)) == 0x4000
    assert spi_for(tcp4("10.1.0.5", "10.2.6.9", 5000, 80)) == 0x2000  # /24 exists, selector fails
    rekeyed = dataclasses.replace(narrow, spi=0x5000)
    out.install(rekeyed, 0.0)
    assert spi_for(udp4("10.1.0.5", "10.2.5.9")) == 0x5000  # make before break
    out.remove(0x5000)
    assert spi_for(udp4("10.1.0.5", "10.2.5.9")) == 0x3000


def test_policy_filter_in_both_directions() -> None:
    out, inbound, _, _ = engines()
    out.filter = DropPort(port=23)
    assert send(out, udp4("10.1.0.5", "10.2.0.7", dport=23)) == []
    assert out.stats.drops[DropReason.POLICY] == 1
    assert out.stats.policy_reasons == {"port 23 out": 1}
    datagrams = send(same_sas(out), udp4("10.1.0.5", "10.2.0.7", dport=23))
    inbound.filter = DropPort(port=23)
    assert receive(inbound, *datagrams) == []
    assert inbound.stats.policy_reasons == {"port 23 in": 1}
    [sa] = inbound.snapshot(1.0)
    assert sa.drops == {DropReason.POLICY: 1}


def same_sas(engine: OutboundEngine) -> OutboundEngine:
    """Another outbound engine with the same SAs and no filter."""
    fresh = OutboundEngine(EngineConfig())
    for sa in engine.table:
        fresh.install(sa.params, 0.0)
    return fresh


def test_too_big_with_df_gets_icmp_without_df_is_sent() -> None:
    out, inbound, _, _ = engines()
    big_df = tcp4("10.1.0.5", "10.2.0.7", 1, 2, payload=os.urandom(1500))
    assert send(out, big_df) == []
    [icmp] = out.take_tun_writes()
    assert icmp[12:16] == bytes([192, 0, 2, 1])  # the SA's local address speaks for us
    assert (icmp[20], icmp[21], struct.unpack_from(">H", icmp, 26)[0]) == (3, 4, 1438)
    assert out.stats.drops[DropReason.TOO_BIG] == 1
    big = ipv4("10.1.0.5", "10.2.0.7", 17, os.urandom(1500), df=False)
    [datagram] = send(out, big)
    assert receive(inbound, datagram) == [big]  # the outer UDP datagram gets fragmented


def test_mss_is_clamped_both_ways() -> None:
    out, inbound, _, _ = engines()
    syn = tcp4("10.1.0.5", "10.2.0.7", 40000, 443, flags=TCP_SYN, options=b"\x02\x04\x05\xb4")
    [inner] = receive(inbound, *send(out, syn))
    assert struct.unpack_from(">H", inner, 42)[0] == 1438 - 40
    assert out.stats.traffic["mss_clamped"] == 1


def test_ike_keepalive_and_garbage_on_port_4500() -> None:
    _, inbound, _, _ = engines()
    ike = bytes(8) + b"\x21\x20\x22\x08" + bytes(16)  # marker + an IKE header
    assert receive(inbound, b"\x00\x00\x00\x00" + ike, b"\xff", b"\x01\x02", os.urandom(40)) == []
    assert inbound.take_ike() == [(ike, ME)]
    assert inbound.stats.traffic["keepalive_rx"] == 1
    assert inbound.stats.drops[DropReason.MALFORMED] == 1
    assert inbound.stats.drops[DropReason.NO_SA] == 1


def test_authentication_failure_and_replay_counted_per_sa() -> None:
    out, inbound, _, _ = engines()
    [datagram] = send(out, udp4("10.1.0.5", "10.2.0.7"))
    forged = bytearray(datagram)
    forged[-1] ^= 1
    assert receive(inbound, bytes(forged), datagram, datagram) == [udp4("10.1.0.5", "10.2.0.7")]
    assert inbound.stats.drops == {DropReason.AUTHENTICATION: 1, DropReason.REPLAY: 1}
    [sa] = inbound.snapshot(1.0)
    assert sa.drops == {DropReason.AUTHENTICATION: 1, DropReason.REPLAY: 1}


def test_selector_mismatch_after_decryption() -> None:
    _, inbound, out_params, _ = engines()
    sneaky = OutboundEngine(EngineConfig())
    sneaky.install(
        dataclasses.replace(out_params, local_ts=(TrafficSelector.from_network("10.0.0.0/8"),)), 0.0
    )
    assert receive(inbound, *send(sneaky, udp4("10.66.0.5", "10.2.0.7"))) == []
    assert inbound.stats.drops == {DropReason.SELECTOR: 1}


def test_tso_in_gro_out() -> None:
    config = EngineConfig(tso=True, gro=True)
    out, inbound, _, _ = engines(config)
    mss = 1386
    payload = os.urandom(10 * mss)
    original = tcp4("10.1.0.5", "10.2.0.7", 40000, 5201, flags=TCP_ACK, payload=payload)
    partial = bytearray(original)
    struct.pack_into(
        ">H", partial, 36, fold(pseudo_header_sum(original[12:16], original[16:20], 6, len(original) - 20))
    )
    vnet = VnetHeader(
        flags=VNET_F_NEEDS_CSUM, gso_type=GSO_TCPV4, hdr_len=40, gso_size=mss, csum_start=20, csum_offset=16
    )
    datagrams = send(out, vnet.pack() + bytes(partial))
    assert len(datagrams) == 10 and len({len(d) for d in datagrams}) == 1
    for datagram in datagrams:
        inbound.handle_datagram(datagram, ME, 1.0)
    [iov] = inbound.take_tun_writes()
    assert pull_vnet_header(iov[0]).gso_size == mss
    assert b"".join(iov[1:])[40:] == payload
    # a plain frame (no offload work) passes with an empty header
    inbound.handle_datagram(send(out, PLAIN_VNET_HEADER + udp4("10.1.0.5", "10.2.0.7"))[0], ME, 1.0)
    assert inbound.take_tun_writes() == [[PLAIN_VNET_HEADER, udp4("10.1.0.5", "10.2.0.7")]]


def test_lifetime_events_and_expiry_in_the_engine() -> None:
    out, inbound, _, _ = engines(lifetime=Lifetime(soft_packets=2, hard_packets=3))
    packet = ipv4("10.1.0.5", "10.2.0.7", 1, icmp_echo())
    datagrams = send(out, packet, packet, packet, packet)
    assert len(datagrams) == 3
    assert out.stats.drops == {DropReason.EXPIRED: 1}
    assert [(e.trigger, e.hard) for e in out.events] == [
        (LifetimeTrigger.PACKETS, False),
        (LifetimeTrigger.PACKETS, True),
    ]
    assert send(out, packet) == [] and out.stats.drops[DropReason.NO_SA] == 1  # expired SA is gone
    assert len(receive(inbound, *datagrams)) == 3
    assert [e.hard for e in inbound.events] == [False, True]


def test_time_lifetime_by_poll() -> None:
    out, inbound, _, _ = engines(lifetime=Lifetime(soft_seconds=10, hard_seconds=20))
    out.poll(15.0)
    inbound.poll(25.0)
    assert [(e.direction, e.hard) for e in out.events + inbound.events] == [
        (Direction.OUTBOUND, False),
        (Direction.INBOUND, False),
        (Direction.INBOUND, True),
    ]


def test_install_checks_direction() -> None:
    out_params, in_params = pair()
    with pytest.raises(EspLocalError, match="not an"):
        OutboundEngine(EngineConfig()).install(in_params, 0.0)
    with pytest.raises(EspLocalError, match="not an"):
        InboundEngine(EngineConfig()).install(out_params, 0.0)
    assert InboundSa(in_params, 0.0).spi == out_params.spi
