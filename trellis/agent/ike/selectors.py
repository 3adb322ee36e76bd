"""Traffic selectors: written forms, and narrowing (RFC 7296 section 2.9).

A responder answers with the intersection of what the initiator proposed and what its own policy
allows, never more; an initiator accepts an answer only if it lies within what it proposed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from trellis.agent.ike.errors import IkeLocalError
from trellis.agent.ike.payloads import TrafficSelector
from trellis.agent.ike.payloads.ts import IpAddress

ANY_PORT_RANGE = (0, 65535)
_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132, "gre": 47}
_WRITTEN = re.compile(r"^(?P<addr>[^\[\]]+?)\s*(?:\[(?P<proto>[^/\]]*)(?:/(?P<ports>[^\]]*))?\])?$")


def parse_selector(text: str) -> TrafficSelector:
    """``10.1.0.0/24``, ``10.1.0.7``, ``10.1.0.1-10.1.0.9``, ``2001:db8::/64``, optionally with a
    protocol and ports in strongSwan's way: ``10.1.0.0/24[tcp/443]``, ``0.0.0.0/0[udp/1000-2000]``,
    ``10.1.0.0/16[icmp]``. IkeLocalError when unreadable."""
    match = _WRITTEN.match(text.strip())
    if match is None:
        raise IkeLocalError(f"{text!r} is not a traffic selector")
    start, end = _address_range(match["addr"].strip())
    protocol = _protocol(match["proto"]) if match["proto"] else 0
    ports = _ports(match["ports"]) if match["ports"] else ANY_PORT_RANGE
    return TrafficSelector(
        start_address=start, end_address=end, ip_protocol=protocol, start_port=ports[0], end_port=ports[1]
    )


def _address_range(text: str) -> tuple[IpAddress, IpAddress]:
    try:
        if "-" in text:
            first, last = (ipaddress.ip_address(part.strip()) for part in text.split("-", 1))
            if first.version != last.version or first.packed > last.packed:
                raise IkeLocalError(f"{text!r}: the range must run upwards within one address family")
            return first, last
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise IkeLocalError(f"{text!r} is not an address, range or network: {e}") from None
    return network.network_address, network.broadcast_address


def _protocol(text: str) -> int:
    value = text.strip().lower()
    if value in ("", "any"):
        return 0
    if value in _PROTOCOLS:
        return _PROTOCOLS[value]
    if value.isdigit() and int(value) < 256:
        return int(value)
    raise IkeLocalError(f"unknown IP protocol {text!r}")


def _ports(text: str) -> tuple[int, int]:
    value = text.strip().lower()
    if value in ("", "any", "%any"):
        return ANY_PORT_RANGE
    first, _, last = value.partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        raise IkeLocalError(f"{text!r} is not a port or port range")
    low, high = int(first), int(last or first)
    if not 0 <= low <= high <= 65535:
        raise IkeLocalError(f"port range {text!r} is out of order or out of range")
    return low, high


def format_selector(selector: TrafficSelector) -> str:
    if selector.start_address == selector.end_address:
        addr = str(selector.start_address)
    else:
        try:
            networks = list(ipaddress.summarize_address_range(selector.start_address, selector.end_address))
        except (TypeError, ValueError):
            networks = []
        addr = str(networks[0]) if len(networks) == 1 else f"{selector.start_address}-{selector.end_address}"
    ports = (selector.start_port, selector.end_port)
    if selector.ip_protocol == 0 and ports == ANY_PORT_RANGE:
        return addr
    port_text = (
        ""
        if ports == ANY_PORT_RANGE
        else f"/{ports[0]}"
        if ports[0] == ports[1]
        else f"/{ports[0]}-{ports[1]}"
    )
    return f"{addr}[{selector.ip_protocol}{port_text}]"


def _packed(address: IpAddress) -> bytes:
    return address.packed  # same family here, so byte order is numeric order


def intersect(a: TrafficSelector, b: TrafficSelector) -> TrafficSelector | None:
    if a.ts_type != b.ts_type:
        return None
    if a.ip_protocol and b.ip_protocol and a.ip_protocol != b.ip_protocol:
        return None
    start = max(a.start_address, b.start_address, key=_packed)
    end = min(a.end_address, b.end_address, key=_packed)
    low, high = max(a.start_port, b.start_port), min(a.end_port, b.end_port)
    if start.packed > end.packed or low > high:
        return None
    return TrafficSelector(
        start_address=start,
        end_address=end,
        ip_protocol=a.ip_protocol or b.ip_protocol,
        start_port=low,
        end_port=high,
    )


def narrow(
    proposed: Sequence[TrafficSelector], allowed: Sequence[TrafficSelector]
) -> tuple[TrafficSelector, ...]:
    """Every non-empty intersection of a proposed selector with an allowed one, in proposal order."""
    result: list[TrafficSelector] = []
    for offer in proposed:
        for rule in allowed:
            common = intersect(offer, rule)
            if common is not None and common not in result:
                result.append(common)
    return tuple(result)


def contains(outer: TrafficSelector, inner: TrafficSelector) -> bool:
    return intersect(outer, inner) == inner


def within(answer: Sequence[TrafficSelector], proposed: Sequence[TrafficSelector]) -> bool:
    """Whether every selector of a responder's answer lies inside one we proposed."""
    return bool(answer) and all(any(contains(offer, ts) for offer in proposed) for ts in answer)
