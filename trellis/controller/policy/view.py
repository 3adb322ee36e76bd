"""What the policy compiles to: for each site, its peers, their IKE traffic selectors and the
packet-filter rules for each direction. Plain immutable values; ``wire`` turns them into protobuf.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from trellis.controller.policy.model import (
    PORT_MAX,
    PROTO_ANY,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    IPNetwork,
)

_PROTOCOL_TEXT = {
    PROTO_TCP: "tcp",
    PROTO_UDP: "udp",
    PROTO_ICMP: "icmp",
    PROTO_ICMPV6: "icmpv6",
    PROTO_ANY: "any",
}


def protocol_text(protocol: int, port_start: int = 0, port_end: int = PORT_MAX) -> str:
    """``tcp/443``, ``udp/5000-5010``, ``icmp``, ``any``, ``proto-47``."""
    name = _PROTOCOL_TEXT.get(protocol, f"proto-{protocol}")
    if protocol not in (PROTO_TCP, PROTO_UDP) or (port_start == 0 and port_end == PORT_MAX):
        return name
    if port_start == port_end:
        return f"{name}/{port_start}"
    return f"{name}/{port_start}-{port_end}"


def collapse(prefixes: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Merge overlapping and adjacent prefixes; IPv4 first, each family sorted."""
    v4 = [p for p in prefixes if isinstance(p, ipaddress.IPv4Network)]
    v6 = [p for p in prefixes if isinstance(p, ipaddress.IPv6Network)]
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


@dataclass(frozen=True, slots=True)
class FlowRule:
    """Flows from ``src_prefixes`` to ``dst_prefixes`` of ``protocol`` (0: any) to destination
    ports ``port_start..port_end`` (TCP/UDP only) may be opened; replies follow by state."""

    rule: str
    src_prefixes: tuple[IPNetwork, ...]
    dst_prefixes: tuple[IPNetwork, ...]
    protocol: int
    port_start: int = 0
    port_end: int = PORT_MAX
    expires_at: dt.datetime | None = None  # the end of the rule's current window

    def __str__(self) -> str:
        dst = ", ".join(str(p) for p in self.dst_prefixes)
        return f"{protocol_text(self.protocol, self.port_start, self.port_end)} to {dst}"


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One IKE traffic selector (RFC 7296 section 3.13.1) written as a prefix."""

    prefix: IPNetwork
    protocol: int = PROTO_ANY
    port_start: int = 0
    port_end: int = PORT_MAX

    def __str__(self) -> str:
        return f"{self.prefix} {protocol_text(self.protocol, self.port_start, self.port_end)}"

    def sort_key(self) -> tuple[int, int, int, int, int, int]:
        prefix = self.prefix
        return (
            prefix.version,
            int(prefix.network_address),
            prefix.prefixlen,
            self.protocol,
            self.port_start,
            self.port_end,
        )


@dataclass(frozen=True, slots=True)
class PeerView:
    """What one site may exchange with one peer, from the site's point of view."""

    identity: str
    local_selectors: tuple[TrafficSelector, ...]
    remote_selectors: tuple[TrafficSelector, ...]
    outbound: tuple[FlowRule, ...]  # flows this site may open towards the peer
    inbound: tuple[FlowRule, ...]  # flows the peer may open towards this site
    selectors_exact: bool


@dataclass(frozen=True, slots=True)
class View:
    """One site's compiled policy. ``peers`` is sorted by identity; a site absent is denied."""

    identity: str
    peers: tuple[PeerView, ...]
    next_change: dt.datetime | None

    def peer(self, identity: str) -> PeerView | None:
        for peer in self.peers:
            if peer.identity == identity:
                return peer
        return None
