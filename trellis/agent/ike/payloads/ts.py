"""Traffic Selector payloads TSi and TSr (RFC 7296 section 3.13).

Only address ranges (TS_IPV4_ADDR_RANGE, TS_IPV6_ADDR_RANGE) exist for us. Any other selector
type (e.g. the RFC 9478 security label) raises ``TsUnacceptable``: the message is well formed, we
just cannot accept what it asks for, which is exactly what that Notify says.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import PayloadType, TsType
from trellis.agent.ike.errors import EncodingError, MalformedMessage, TsUnacceptable
from trellis.agent.ike.payloads.common import (
    check_bound,
    check_encodable,
    pull_reserved,
    push_reserved,
    require_eof,
)
from trellis.agent.ike.payloads.limits import MAX_TRAFFIC_SELECTORS

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ANY_PROTOCOL = 0
_SELECTOR_LENGTHS = {TsType.TS_IPV4_ADDR_RANGE: 16, TsType.TS_IPV6_ADDR_RANGE: 40}


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficSelector:
    """An address range with an IP protocol (0 = any) and a port range (0..65535 = any; for ICMP
    the ports carry type and code, RFC 7296 section 3.13.1)."""

    start_address: IpAddress
    end_address: IpAddress
    ip_protocol: int = ANY_PROTOCOL
    start_port: int = 0
    end_port: int = 65535

    @property
    def ts_type(self) -> TsType:
        if self.start_address.version == 4:
            return TsType.TS_IPV4_ADDR_RANGE
        return TsType.TS_IPV6_ADDR_RANGE


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficSelectors:
    """TSi or TSr; use the two subclasses."""

    payload_type: ClassVar[PayloadType]
    selectors: tuple[TrafficSelector, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class TsInitiator(TrafficSelectors):
    payload_type: ClassVar[PayloadType] = PayloadType.TSi


@dataclass(frozen=True, slots=True, kw_only=True)
class TsResponder(TrafficSelectors):
    payload_type: ClassVar[PayloadType] = PayloadType.TSr


TrafficSelectorsT = TypeVar("TrafficSelectorsT", bound=TrafficSelectors)


def pull_traffic_selector(buf: Buffer) -> TrafficSelector:
    ts_type = buf.pull_uint8()
    ip_protocol = buf.pull_uint8()
    length = buf.pull_uint16()
    if ts_type not in _SELECTOR_LENGTHS:
        raise TsUnacceptable(f"traffic selector type {ts_type} is not supported")
    if length != _SELECTOR_LENGTHS[TsType(ts_type)]:
        raise MalformedMessage(f"traffic selector of type {ts_type} with length {length}")
    address_length = (length - 8) // 2
    start_port = buf.pull_uint16()
    end_port = buf.pull_uint16()
    start = ipaddress.ip_address(buf.pull_bytes(address_length))
    end = ipaddress.ip_address(buf.pull_bytes(address_length))
    return TrafficSelector(
        ip_protocol=ip_protocol,
        start_port=start_port,
        end_port=end_port,
        start_address=start,
        end_address=end,
    )


def push_traffic_selector(buf: Buffer, selector: TrafficSelector) -> None:
    if selector.start_address.version != selector.end_address.version:
        raise EncodingError("a traffic selector's start and end addresses are of one family")
    buf.push_uint8(selector.ts_type)
    buf.push_uint8(selector.ip_protocol)
    buf.push_uint16(_SELECTOR_LENGTHS[selector.ts_type])
    buf.push_uint16(selector.start_port)
    buf.push_uint16(selector.end_port)
    buf.push_bytes(selector.start_address.packed)
    buf.push_bytes(selector.end_address.packed)


def pull_traffic_selectors(buf: Buffer, kind: type[TrafficSelectorsT]) -> TrafficSelectorsT:
    count = buf.pull_uint8()
    pull_reserved(buf, 3)
    check_bound(count, MAX_TRAFFIC_SELECTORS, "traffic selectors")
    selectors = tuple(pull_traffic_selector(buf) for _ in range(count))
    require_eof(buf, "the traffic selectors")
    return kind(selectors=selectors)


def push_traffic_selectors(buf: Buffer, payload: TrafficSelectors) -> None:
    check_encodable(len(payload.selectors), 255, "traffic selectors")
    buf.push_uint8(len(payload.selectors))
    push_reserved(buf, 3)
    for selector in payload.selectors:
        push_traffic_selector(buf, selector)
