"""Traffic selectors (RFC 7296 section 3.13.1, RFC 4301 section 4.4.1) and the 5-tuple of an
inner IP packet they are matched against.

An SA covers every combination of one local and one remote selector. For ICMP and ICMPv6 the
"port" is type << 8 | code (RFC 7296 section 3.13.1). Packets without ports (other
protocols, non-first fragments) have OPAQUE ports, which only a full 0-65535 range matches
(RFC 4301 section 4.4.1.1).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import NamedTuple

from trellis.agent.esp.constants import NextHeader
from trellis.agent.esp.errors import EspLocalError, MalformedPacket
from trellis.agent.esp.transforms import Buffer

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ANY_PROTOCOL = 0
OPAQUE_PORT = -1
MAX_PORT = 0xFFFF
IPV4_MIN_HEADER = 20
IPV6_HEADER = 40
MAX_IPV6_EXTENSION_HEADERS = 8  # bound on peer input: deeper chains are treated as malformed

_PORTED = frozenset((NextHeader.TCP, NextHeader.UDP, 132, 136))  # TCP, UDP, SCTP, UDP-Lite
_ICMPS = frozenset((NextHeader.ICMP, NextHeader.ICMPV6))
_IPV6_SKIPPABLE = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_IPV6_AH = 51
_PORTS = struct.Struct(">HH")
_FAST_PROTOCOLS = (NextHeader.TCP, NextHeader.UDP)


def fast_flow_key(packet: Buffer) -> bytes | None:
    """Raw bytes that identify the flow of a plain IPv4 TCP/UDP packet (protocol, addresses,
    ports), for caches; None for anything else (options, fragments, other protocols, IPv6)."""
    if (
        len(packet) >= 24
        and packet[0] == 0x45
        and packet[9] in _FAST_PROTOCOLS
        and not (packet[6] & 0x3F | packet[7])
    ):
        return bytes(packet[9:10]) + bytes(packet[12:24])
    return None


class Flow(NamedTuple):
    """What selectors look at; addresses as ints so that matching is integer compares."""

    version: int
    protocol: int
    src: int
    dst: int
    src_port: int  # OPAQUE_PORT when the packet has none
    dst_port: int


def _ports(packet: Buffer, offset: int, protocol: int) -> tuple[int, int]:
    if protocol in _PORTED and len(packet) >= offset + 4:
        sport, dport = _PORTS.unpack_from(packet, offset)
        return sport, dport
    if protocol in _ICMPS and len(packet) >= offset + 2:
        type_code = packet[offset] << 8 | packet[offset + 1]
        return type_code, type_code
    return OPAQUE_PORT, OPAQUE_PORT


def parse_flow(packet: Buffer) -> Flow:
    """The selector-relevant fields of an IPv4 or IPv6 packet; MalformedPacket if it is none."""
    if not packet:
        raise MalformedPacket("empty packet")
    version = packet[0] >> 4
    if version == 4:
        header_length = (packet[0] & 0x0F) * 4
        if header_length < IPV4_MIN_HEADER or len(packet) < header_length:
            raise MalformedPacket("truncated IPv4 header")
        protocol = packet[9]
        src = int.from_bytes(packet[12:16], "big")
        dst = int.from_bytes(packet[16:20], "big")
        if (packet[6] & 0x1F) | packet[7]:  # fragment offset != 0: no transport header here
            return Flow(4, protocol, src, dst, OPAQUE_PORT, OPAQUE_PORT)
        return Flow(4, protocol, src, dst, *_ports(packet, header_length, protocol))
    if version == 6:
        if len(packet) < IPV6_HEADER:
            raise MalformedPacket("truncated IPv6 header")
        src = int.from_bytes(packet[8:24], "big")
        dst = int.from_bytes(packet[24:40], "big")
        protocol, offset = packet[6], IPV6_HEADER
        for _ in range(MAX_IPV6_EXTENSION_HEADERS):
            if protocol in _IPV6_SKIPPABLE or protocol == _IPV6_AH:
                if len(packet) < offset + 2:
                    raise MalformedPacket("truncated IPv6 extension header")
                unit = 4 if protocol == _IPV6_AH else 8
                extra = 2 if protocol == _IPV6_AH else 1
                protocol, offset = packet[offset], offset + (packet[offset + 1] + extra) * unit
            elif protocol == _IPV6_FRAGMENT:
                if len(packet) < offset + 8:
                    raise MalformedPacket("truncated IPv6 fragment header")
                next_protocol = packet[offset]
                if (packet[offset + 2] << 8 | packet[offset + 3]) & 0xFFF8:
                    return Flow(6, next_protocol, src, dst, OPAQUE_PORT, OPAQUE_PORT)
                protocol, offset = next_protocol, offset + 8
            else:
                return Flow(6, protocol, src, dst, *_ports(packet, offset, protocol))
        raise MalformedPacket("IPv6 extension header chain too long")
    raise MalformedPacket(f"IP version {version}")


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """An address range, a protocol (0: any) and a port range (RFC 7296 section 3.13.1)."""

    start: IPAddress
    end: IPAddress
    protocol: int = ANY_PROTOCOL
    start_port: int = 0
    end_port: int = MAX_PORT

    def __post_init__(self) -> None:
        if self.start.version != self.end.version or int(self.start) > int(self.end):
            raise EspLocalError(f"bad address range {self.start}-{self.end}")
        if not 0 <= self.start_port <= self.end_port <= MAX_PORT:
            raise EspLocalError(f"bad port range {self.start_port}-{self.end_port}")
        if not 0 <= self.protocol <= 255:
            raise EspLocalError(f"bad protocol {self.protocol}")

    @classmethod
    def from_network(
        cls,
        network: str | IPNetwork,
        *,
        protocol: int = ANY_PROTOCOL,
        start_port: int = 0,
        end_port: int = MAX_PORT,
    ) -> TrafficSelector:
        net = ipaddress.ip_network(network) if isinstance(network, str) else network
        return cls(
            start=net.network_address,
            end=net.broadcast_address,
            protocol=protocol,
            start_port=start_port,
            end_port=end_port,
        )

    @property
    def version(self) -> int:
        return self.start.version

    def networks(self) -> list[IPNetwork]:
        """The prefixes that exactly cover the address range (for routes and prefix lookup)."""
        return list(ipaddress.summarize_address_range(self.start, self.end))

    def matches(self, version: int, protocol: int, address: int, port: int) -> bool:
        if version != self.start.version:
            return False
        if self.protocol not in (ANY_PROTOCOL, protocol):
            return False
        if not int(self.start) <= address <= int(self.end):
            return False
        if self.start_port == 0 and self.end_port == MAX_PORT:
            return True
        return self.start_port <= port <= self.end_port

    def __str__(self) -> str:
        net = self.networks()
        where = str(net[0]) if len(net) == 1 else f"{self.start}-{self.end}"
        proto = "" if self.protocol == ANY_PROTOCOL else f" proto {self.protocol}"
        full = self.start_port == 0 and self.end_port == MAX_PORT
        ports = "" if full else f" ports {self.start_port}-{self.end_port}"
        return where + proto + ports


class SelectorPair:
    """An SA's local and remote selectors, with a small cache of flows already judged.

    ``covers`` answers whether a packet going ``outbound`` (local -> remote) or inbound
    (remote -> local) lies inside the SA.
    """

    CACHE_LIMIT = 4096  # flows remembered; the cache is cleared when full

    def __init__(self, local: tuple[TrafficSelector, ...], remote: tuple[TrafficSelector, ...]) -> None:
        if not local or not remote:
            raise EspLocalError("an SA needs at least one local and one remote traffic selector")
        self.local = local
        self.remote = remote
        self._cache: dict[tuple[bool, Flow], bool] = {}
        self._fast: tuple[dict[bytes, bool], dict[bytes, bool]] = ({}, {})  # inbound, outbound

    def covers_packet(self, packet: Buffer, *, outbound: bool) -> bool:
        """``covers`` for a raw packet, cached by its header bytes (MalformedPacket if it is
        not IP)."""
        key = fast_flow_key(packet)
        if key is None:
            return self.covers(parse_flow(packet), outbound=outbound)
        cache = self._fast[outbound]
        known = cache.get(key)
        if known is None:
            known = self.covers(parse_flow(packet), outbound=outbound)
            if len(cache) >= self.CACHE_LIMIT:
                cache.clear()
            cache[key] = known
        return known

    def covers(self, flow: Flow, *, outbound: bool) -> bool:
        key = (outbound, flow)
        known = self._cache.get(key)
        if known is not None:
            return known
        if outbound:
            ours, theirs = (flow.src, flow.src_port), (flow.dst, flow.dst_port)
        else:
            ours, theirs = (flow.dst, flow.dst_port), (flow.src, flow.src_port)
        result = any(ts.matches(flow.version, flow.protocol, *ours) for ts in self.local) and any(
            ts.matches(flow.version, flow.protocol, *theirs) for ts in self.remote
        )
        if len(self._cache) >= self.CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = result
        return result
