"""The two packet pipelines of the userspace data plane, without I/O.

``OutboundEngine``: TUN frames in (with a virtio-net header when TSO/GRO are on), ESP-in-UDP
datagrams per peer out, plus ICMP errors to write back into the TUN device.
``InboundEngine``: UDP datagrams from port 4500 in, inner packets for the TUN device out, plus
IKE messages (non-ESP marker) for the IKE daemon.

The worker processes own the I/O and the clock; these classes own SAs, counters and the policy
hook, and are what the unit tests drive.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from trellis.agent.dataplane.hooks import MAX_POLICY_REASON, PacketFilter
from trellis.agent.dataplane.lookup import OutboundTable
from trellis.agent.dataplane.packets import (
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    PLAIN_VNET_HEADER,
    VNET_F_NEEDS_CSUM,
    VNET_HEADER_LENGTH,
    PacketError,
    TcpCoalescer,
    clamp_mss,
    complete_checksum,
    dont_fragment,
    is_tcp_syn,
    packet_too_big,
    pull_vnet_header,
    tso_segments,
)
from trellis.agent.esp.constants import Direction, DropReason
from trellis.agent.esp.errors import EspLocalError, EspPeerError, SaExhausted
from trellis.agent.esp.sa import InboundSa, LifetimeEvent, OutboundSa, SaCounters, SaParams
from trellis.agent.esp.transforms import Buffer

NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 section 2.2: an IKE message follows
NAT_KEEPALIVE = b"\xff"  # RFC 3948 section 2.3
TCP_IPV4_HEADERS = 40
TCP_IPV6_HEADERS = 60
MAX_POLICY_REASONS = 64  # distinct filter reasons counted; the rest are lumped together
OTHER_POLICY_REASON = "other"

Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """``tso``: TUN reads may be TCP super-packets (segmented here); ``gro``: TCP segments are
    merged into super-packets for TUN writes (``gro_verify_checksums``: only segments whose TCP
    checksum verifies, since the kernel will not check a merged packet again). Either needs
    virtio-net headers on the TUN device.
    ``icmp_source_v4/v6``: the source of ICMP errors we generate (default: the SA's local
    underlay address, or none for the other IP version)."""

    underlay_mtu: int = 1500
    tso: bool = False
    gro: bool = False
    gro_verify_checksums: bool = True
    udp_gso: bool = True
    udp_gro: bool = True
    clamp_mss: bool = True
    icmp_source_v4: ipaddress.IPv4Address | None = None
    icmp_source_v6: ipaddress.IPv6Address | None = None

    @property
    def vnet_header(self) -> bool:
        return self.tso or self.gro


class Stats:
    """Counters shared by one worker's engine."""

    def __init__(self) -> None:
        self.drops: Counter[DropReason] = Counter()
        self.policy_reasons: Counter[str] = Counter()
        self.traffic: Counter[str] = Counter()

    def policy_drop(self, reason: str) -> None:
        self.drops[DropReason.POLICY] += 1
        reason = reason[:MAX_POLICY_REASON] or OTHER_POLICY_REASON
        if reason not in self.policy_reasons and len(self.policy_reasons) >= MAX_POLICY_REASONS:
            reason = OTHER_POLICY_REASON
        self.policy_reasons[reason] += 1


def mss_for(packet: Buffer, mtu: int) -> int:
    return mtu - (TCP_IPV4_HEADERS if packet[0] >> 4 == 4 else TCP_IPV6_HEADERS)


class OutboundEngine:
    def __init__(self, config: EngineConfig, stats: Stats | None = None) -> None:
        self.config = config
        self.stats = stats or Stats()
        self.table = OutboundTable()
        self.filter: PacketFilter | None = None
        self.tun_mtu = 0  # what the TUN device is set to; 0 until an SA is installed
        self.events: list[LifetimeEvent] = []
        self._datagrams: dict[Endpoint, list[bytes]] = {}
        self._to_tun: list[bytes] = []
        self._mtu: dict[int, int] = {}  # spi -> largest inner packet
        self._endpoint: dict[int, Endpoint] = {}

    # ---- SAs --------------------------------------------------------------------------

    def install(self, params: SaParams, now: float) -> None:
        if params.direction is not Direction.OUTBOUND:
            raise EspLocalError("not an outbound SA")
        sa = OutboundSa(params, now)
        self.table.add(sa)
        self._mtu[sa.spi] = params.inner_mtu(self.config.underlay_mtu)
        self._endpoint[sa.spi] = (str(params.remote_address), params.remote_port)

    def remove(self, spi: int) -> bool:
        self._mtu.pop(spi, None)
        self._endpoint.pop(spi, None)
        return self.table.remove(spi) is not None

    def inner_mtu(self) -> int:
        """The TUN MTU the installed SAs allow (the smallest of them)."""
        return min(self._mtu.values(), default=0)

    def snapshot(self, now: float) -> list[SaCounters]:
        return [sa.snapshot(now) for sa in self.table]

    def poll(self, now: float) -> None:
        """Time-based lifetimes without traffic; forget SAs past their hard limit."""
        for sa in self.table:
            sa.poll(now)
            self._collect(sa)
        for sa in self.table.forget_expired():
            self._mtu.pop(sa.spi, None)
            self._endpoint.pop(sa.spi, None)

    def _collect(self, sa: OutboundSa | InboundSa) -> None:
        if sa.has_events:
            self.events.extend(sa.take_events())

    # ---- packets ----------------------------------------------------------------------

    def handle_frame(self, frame: Buffer, now: float) -> None:
        """One read from the TUN device."""
        self.stats.traffic["tun_rx"] += 1
        if not self.config.vnet_header:
            self._handle_packets(frame, None, now)
            return
        if len(frame) <= VNET_HEADER_LENGTH:
            self.stats.drops[DropReason.MALFORMED] += 1
            return
        vnet = pull_vnet_header(frame)
        packet = memoryview(frame)[VNET_HEADER_LENGTH:]
        try:
            gso_type = vnet.gso_type & ~GSO_ECN
            if gso_type in (GSO_TCPV4, GSO_TCPV6):
                self.stats.traffic["tso_in"] += 1
                self._handle_packets(packet, tso_segments(packet, vnet.gso_size), now)
                return
            if gso_type != GSO_NONE:
                raise PacketError(f"GSO type {vnet.gso_type} not enabled")
            if vnet.flags & VNET_F_NEEDS_CSUM:
                data = bytearray(packet)
                complete_checksum(data, vnet.csum_start, vnet.csum_offset)
                self._handle_packets(data, None, now)
                return
        except PacketError:
            self.stats.drops[DropReason.MALFORMED] += 1
            return
        self._handle_packets(packet, None, now)

    def _handle_packets(self, packet: Buffer, segments: list[bytes] | None, now: float) -> None:
        """``packet`` (for lookup and policy) is sent as itself or as ``segments``."""
        try:
            sa = self.table.lookup_packet(packet)
        except EspPeerError:
            self.stats.drops[DropReason.MALFORMED] += 1
            return
        if sa is None:
            self.stats.drops[DropReason.NO_SA] += 1
            return
        if self.filter is not None:
            verdict = self.filter.check(packet, Direction.OUTBOUND, now)
            if not verdict.allowed:
                self.stats.policy_drop(verdict.reason)
                sa.drops[DropReason.POLICY] += 1
                return
        mtu = self._mtu[sa.spi]
        batch = self._datagrams.setdefault(self._endpoint[sa.spi], [])
        for inner in segments if segments is not None else (packet,):
            if len(inner) > mtu and dont_fragment(inner):
                self._too_big(inner, mtu, sa)
                continue
            payload: Buffer = inner
            if self.config.clamp_mss and is_tcp_syn(inner):
                payload = bytearray(inner)
                if clamp_mss(payload, mss_for(inner, min(mtu, self.tun_mtu or mtu))):
                    self.stats.traffic["mss_clamped"] += 1
            try:
                batch.append(sa.seal_packet(payload, now))
            except SaExhausted:
                self.stats.drops[DropReason.EXPIRED] += 1
                self._collect(sa)
                self.table.forget_expired()
                return
            except EspLocalError:
                self.stats.drops[DropReason.MALFORMED] += 1
                continue
        if sa.has_events:
            self._collect(sa)

    def _too_big(self, inner: Buffer, mtu: int, sa: OutboundSa) -> None:
        self.stats.drops[DropReason.TOO_BIG] += 1
        sa.drops[DropReason.TOO_BIG] += 1
        version = inner[0] >> 4
        source: ipaddress.IPv4Address | ipaddress.IPv6Address | None
        source = self.config.icmp_source_v4 if version == 4 else self.config.icmp_source_v6
        if source is None and sa.params.local_address.version == version:
            source = sa.params.local_address
        if source is None:
            return
        error = packet_too_big(inner, mtu, source.packed)
        if error is not None:
            self._to_tun.append(error)
            self.stats.traffic["icmp_too_big"] += 1

    def take_datagrams(self) -> list[tuple[Endpoint, list[bytes]]]:
        """ESP packets to send, grouped per peer endpoint, each group in order."""
        out = [(endpoint, batch) for endpoint, batch in self._datagrams.items() if batch]
        self._datagrams.clear()
        return out

    def take_tun_writes(self) -> list[bytes]:
        """Packets (ICMP errors) to write into the TUN device."""
        out, self._to_tun = self._to_tun, []
        return out


class InboundEngine:
    def __init__(self, config: EngineConfig, stats: Stats | None = None) -> None:
        self.config = config
        self.stats = stats or Stats()
        self.sas: dict[int, InboundSa] = {}
        self.filter: PacketFilter | None = None
        self.tun_mtu = 0
        self.events: list[LifetimeEvent] = []
        self._coalescer = TcpCoalescer(verify=config.gro_verify_checksums) if config.gro else None
        self._to_tun: list[list[Buffer]] = []
        self._ike: list[tuple[bytes, Endpoint]] = []

    def install(self, params: SaParams, now: float) -> None:
        if params.direction is not Direction.INBOUND:
            raise EspLocalError("not an inbound SA")
        self.sas[params.spi] = InboundSa(params, now)

    def remove(self, spi: int) -> bool:
        return self.sas.pop(spi, None) is not None

    def snapshot(self, now: float) -> list[SaCounters]:
        return [sa.snapshot(now) for sa in self.sas.values()]

    def poll(self, now: float) -> None:
        for sa in self.sas.values():
            sa.poll(now)
            if sa.has_events:
                self.events.extend(sa.take_events())

    def handle_datagram(self, data: Buffer, source: Endpoint, now: float) -> None:
        """One UDP datagram received on the port-4500 socket."""
        if len(data) < 8:
            if data == NAT_KEEPALIVE:
                self.stats.traffic["keepalive_rx"] += 1
            else:
                self.stats.drops[DropReason.MALFORMED] += 1
            return
        if data[:4] == NON_ESP_MARKER:
            self.stats.traffic["ike_rx"] += 1
            self._ike.append((bytes(data[4:]), source))
            return
        self.stats.traffic["esp_rx"] += 1
        spi = int.from_bytes(data[:4], "big")
        sa = self.sas.get(spi)
        if sa is None:
            self.stats.drops[DropReason.NO_SA] += 1
            return
        try:
            inner = sa.open_packet(data, now)
        except EspPeerError as error:
            self.stats.drops[error.reason] += 1
            return
        finally:
            if sa.has_events:
                self.events.extend(sa.take_events())
        if inner is None:
            self.stats.drops[DropReason.DUMMY] += 1
            return
        if self.filter is not None:
            verdict = self.filter.check(inner, Direction.INBOUND, now)
            if not verdict.allowed:
                self.stats.policy_drop(verdict.reason)
                sa.drops[DropReason.POLICY] += 1
                return
        if self.config.clamp_mss and self.tun_mtu and is_tcp_syn(inner):
            data_ = bytearray(inner)
            if clamp_mss(data_, mss_for(inner, self.tun_mtu)):
                self.stats.traffic["mss_clamped"] += 1
            inner = bytes(data_)
        if self._coalescer is not None:
            self._coalescer.add(inner)
        else:
            self._to_tun.append([PLAIN_VNET_HEADER, inner] if self.config.vnet_header else [inner])

    def take_tun_writes(self) -> list[list[Buffer]]:
        """One I/O vector (for writev) per packet to write, in order; it starts with the
        virtio-net header when the TUN device has them."""
        if self._coalescer is not None:
            out = self._coalescer.flush()
            self.stats.traffic["gro_out"] += sum(1 for iov in out if iov[0] is not PLAIN_VNET_HEADER)
            return out
        out, self._to_tun = self._to_tun, []
        return out

    def take_ike(self) -> list[tuple[bytes, Endpoint]]:
        """IKE messages (without the marker) and where they came from."""
        out, self._ike = self._ike, []
        return out
