"""Stateful ESP SAs: sequence numbers, the replay window, lifetimes and rekey events.

Sans-IO: every call takes ``now`` (seconds, any monotonic origin); lifetime events collect on
the SA and are drained with ``take_events()``. One SA object is used by one thread only.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from collections import Counter
from dataclasses import dataclass, field

from trellis.agent.esp.codec import (
    esp_aad,
    max_payload,
    sealed_length,
    strip_trailer,
    trailer,
)
from trellis.agent.esp.constants import (
    DEFAULT_REPLAY_WINDOW,
    ESP_HEADER_LENGTH,
    IV_LENGTH,
    MAX_ESP_PACKET,
    MAX_SEQ_32,
    MAX_SEQ_64,
    MAX_SPI,
    MIN_ESP_PACKET,
    MIN_SPI,
    SEQ_SOFT_MARGIN,
    Cipher,
    Direction,
    DropReason,
    LifetimeTrigger,
    Mode,
    NextHeader,
)
from trellis.agent.esp.errors import (
    EspLocalError,
    EspPeerError,
    MalformedPacket,
    SaExhausted,
    SaExpired,
    SelectorMismatch,
)
from trellis.agent.esp.inet import set_ipv4_checksum
from trellis.agent.esp.replay import ReplayWindow
from trellis.agent.esp.selectors import IPAddress, SelectorPair, TrafficSelector
from trellis.agent.esp.transforms import AeadTransform, Buffer

_HEADER = struct.Struct(">II")  # SPI, low half of the sequence number
_HEADER_AND_IV = struct.Struct(">IIQ")  # ... followed by the IV we send: the 64-bit counter

IPV4_HEADER = 20
IPV6_HEADER = 40
UDP_HEADER = 8
NAT_T_PORT = 4500


@dataclass(frozen=True, slots=True)
class Lifetime:
    """Soft limits ask for a rekey, hard limits end the SA. None: no limit of that kind.

    Bytes count the payloads ESP carries (inner packets in tunnel mode); seconds run from
    installation.
    """

    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_packets: int | None = None
    hard_packets: int | None = None
    soft_seconds: float | None = None
    hard_seconds: float | None = None

    def __post_init__(self) -> None:
        for soft, hard in (
            (self.soft_bytes, self.hard_bytes),
            (self.soft_packets, self.hard_packets),
            (self.soft_seconds, self.hard_seconds),
        ):
            if (soft is not None and soft <= 0) or (hard is not None and hard <= 0):
                raise EspLocalError("lifetimes must be positive")
            if soft is not None and hard is not None and soft > hard:
                raise EspLocalError("a soft lifetime must not exceed its hard lifetime")


@dataclass(frozen=True, slots=True)
class SaParams:
    """Everything needed to install one direction of a CHILD SA.

    ``key`` is the keying material of RFC 7296 section 2.17 for this direction, salt included
    (AES: 16/24/32 + 4 bytes; ChaCha20-Poly1305: 32 + 4). ``local_ts``/``remote_ts`` are from
    our point of view in both directions (inbound packets go remote -> local).
    ``local_address``/``remote_address``/``*_port`` are the outer (underlay) UDP endpoints of
    the ESP-in-UDP encapsulation (RFC 3948). ``tag`` is an opaque label chosen by the installer
    (e.g. the peer identity and CHILD SA name), returned in events and counters.
    """

    spi: int
    direction: Direction
    cipher: Cipher
    key: bytes = field(repr=False)
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    local_address: IPAddress
    remote_address: IPAddress
    remote_port: int = NAT_T_PORT
    local_port: int = NAT_T_PORT
    mode: Mode = Mode.TUNNEL
    esn: bool = False
    replay_window: int = DEFAULT_REPLAY_WINDOW
    lifetime: Lifetime = field(default_factory=Lifetime)
    udp_encap: bool = True
    tag: str = ""

    def __post_init__(self) -> None:
        if not MIN_SPI <= self.spi <= MAX_SPI:
            raise EspLocalError(f"SPI {self.spi:#x} is reserved or out of range")
        if self.local_address.version != self.remote_address.version:
            raise EspLocalError("outer addresses of different IP versions")
        for port in (self.local_port, self.remote_port):
            if not 1 <= port <= 0xFFFF:
                raise EspLocalError(f"bad UDP port {port}")
        if not self.local_ts or not self.remote_ts:
            raise EspLocalError("an SA needs local and remote traffic selectors")
        AeadTransform(self.cipher, self.key)  # validates the key length early

    @property
    def outer_overhead(self) -> int:
        """Bytes the outer IP and UDP headers add."""
        ip = IPV4_HEADER if self.local_address.version == 4 else IPV6_HEADER
        return ip + (UDP_HEADER if self.udp_encap else 0)

    def inner_mtu(self, underlay_mtu: int) -> int:
        """The largest inner packet whose ESP-in-UDP datagram fits ``underlay_mtu``."""
        return max_payload(underlay_mtu - self.outer_overhead)

    @property
    def sa_id(self) -> tuple[int, Direction]:
        return self.spi, self.direction


@dataclass(frozen=True, slots=True)
class LifetimeEvent:
    """A lifetime limit was reached: soft (``hard`` False) means rekey now, hard means the SA
    no longer seals or opens anything."""

    spi: int
    direction: Direction
    tag: str
    trigger: LifetimeTrigger
    hard: bool


@dataclass(frozen=True, slots=True)
class SaCounters:
    spi: int
    direction: Direction
    tag: str
    cipher: Cipher
    remote_address: str
    remote_port: int
    packets: int
    bytes: int
    age_seconds: float
    drops: dict[DropReason, int]
    rekey_requested: bool
    expired: bool


_INF = math.inf


class _SaBase:
    """Counting and lifetimes shared by both directions."""

    def __init__(self, params: SaParams, now: float, direction: Direction) -> None:
        if params.direction is not direction:
            raise EspLocalError(f"SA {params.spi:#x} is {params.direction}, not {direction}")
        self.params = params
        self.spi = params.spi
        self.created = now
        self.transform = AeadTransform(params.cipher, params.key)
        self.packets = 0
        self.bytes = 0
        self.drops: Counter[DropReason] = Counter()
        self.soft_fired = False
        self.expired = False
        self._events: list[LifetimeEvent] = []
        lifetime = params.lifetime
        self._soft = (lifetime.soft_bytes, lifetime.soft_packets, lifetime.soft_seconds)
        self._hard = (lifetime.hard_bytes, lifetime.hard_packets, lifetime.hard_seconds)
        self._set_thresholds()

    def _set_thresholds(self) -> None:
        """The next limits to watch: the soft ones until they fire, then the hard ones."""
        limits = self._soft if not self.soft_fired else self._hard
        soft_or_hard = [
            limit if limit is not None else hard for limit, hard in zip(limits, self._hard, strict=True)
        ]
        nbytes, npackets, seconds = soft_or_hard
        self._next_bytes: float = nbytes if nbytes is not None else _INF
        self._next_packets: float = npackets if npackets is not None else _INF
        self._next_time: float = self.created + seconds if seconds is not None else _INF

    def _fire(self, trigger: LifetimeTrigger, *, hard: bool) -> None:
        if hard:
            if self.expired:
                return
            self.expired = True
            self.soft_fired = True
        elif self.soft_fired:
            return
        else:
            self.soft_fired = True
        event = LifetimeEvent(
            spi=self.spi, direction=self.params.direction, tag=self.params.tag, trigger=trigger, hard=hard
        )
        self._events.append(event)

    def _check_limits(self, now: float) -> None:
        """Fire whatever soft and hard limits the counters or the clock have reached."""
        for limits, hard in ((self._soft, False), (self._hard, True)):
            nbytes, npackets, seconds = limits
            if nbytes is not None and self.bytes >= nbytes:
                self._fire(LifetimeTrigger.BYTES, hard=hard)
            if npackets is not None and self.packets >= npackets:
                self._fire(LifetimeTrigger.PACKETS, hard=hard)
            if seconds is not None and now >= self.created + seconds:
                self._fire(LifetimeTrigger.TIME, hard=hard)
        self._set_thresholds()

    def poll(self, now: float) -> None:
        """Let time-based limits fire when no traffic flows."""
        if now >= self._next_time:
            self._check_limits(now)

    def take_events(self) -> list[LifetimeEvent]:
        events, self._events = self._events, []
        return events

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def snapshot(self, now: float) -> SaCounters:
        return SaCounters(
            spi=self.spi,
            direction=self.params.direction,
            tag=self.params.tag,
            cipher=self.params.cipher,
            remote_address=str(self.params.remote_address),
            remote_port=self.params.remote_port,
            packets=self.packets,
            bytes=self.bytes,
            age_seconds=now - self.created,
            drops=dict(self.drops),
            rekey_requested=self.soft_fired,
            expired=self.expired,
        )


class OutboundSa(_SaBase):
    """Seals packets. The IV is the 64-bit sequence number (unique per key, RFC 4106 3.1)."""

    def __init__(self, params: SaParams, now: float, *, next_seq: int = 1) -> None:
        """``next_seq`` is 1 for a new SA (RFC 4303 section 3.3.3); a larger value continues
        an SA whose earlier packets were sealed elsewhere (e.g. another worker)."""
        super().__init__(params, now, Direction.OUTBOUND)
        self.max_seq = MAX_SEQ_64 if params.esn else MAX_SEQ_32
        if not 1 <= next_seq <= self.max_seq:
            raise EspLocalError(f"next sequence number {next_seq} out of range")
        self.next_seq = next_seq
        self._soft_seq = self.max_seq - SEQ_SOFT_MARGIN
        self.selectors = SelectorPair(params.local_ts, params.remote_ts)
        self._esn = params.esn
        # trailers by payload length mod 4, for the next headers of tunnel mode
        self._trailers: dict[int, tuple[bytes, ...]] = {
            nh: tuple(trailer(n, nh) for n in range(4)) for nh in (NextHeader.IPV4, NextHeader.IPV6)
        }

    def seal(self, payload: Buffer, next_header: int, now: float) -> bytes:
        """One ESP packet carrying ``payload``; raises SaExhausted once a hard limit is reached.

        This is the per-packet hot path of the data plane: kept flat on purpose."""
        if now >= self._next_time or self.expired:
            self._check_limits(now)
            if self.expired:
                raise SaExhausted(f"SA {self.spi:#x} has expired")
        seq = self.next_seq
        self.next_seq = seq + 1
        length = len(payload)
        header = _HEADER_AND_IV.pack(self.spi, seq & 0xFFFFFFFF, seq)  # the IV is the counter
        aad = esp_aad(self.spi, seq, esn=True) if self._esn else header[:8]
        padding = self._trailers.get(next_header)
        trailer_bytes = padding[length & 3] if padding is not None else trailer(length, next_header)
        packet = header + self.transform.seal(header[8:], aad, bytes(payload) + trailer_bytes)
        self.packets += 1
        self.bytes += length
        if self.bytes >= self._next_bytes or self.packets >= self._next_packets:
            self._check_limits(now)
        if seq >= self._soft_seq:
            self._fire(LifetimeTrigger.SEQUENCE, hard=seq >= self.max_seq)
        return packet

    def seal_packet(self, packet: Buffer, now: float) -> bytes:
        """Tunnel mode: an inner IPv4/IPv6 packet in, its ESP packet out."""
        version = packet[0] >> 4 if packet else 0
        if version == 4:
            return self.seal(packet, NextHeader.IPV4, now)
        if version == 6:
            return self.seal(packet, NextHeader.IPV6, now)
        raise EspLocalError(f"not an IP packet (version {version})")

    def seal_transport(self, packet: Buffer, now: float) -> bytes:
        """Transport mode (RFC 4303 section 3.1.1): the IP header stays in front, its
        protocol becomes ESP and the transport payload moves inside. IPv6 packets must not
        carry extension headers."""
        header, protocol, payload = _split_transport(packet)
        esp = self.seal(payload, protocol, now)
        return _join_transport(header, NextHeader.ESP, esp)

    def sealed_length(self, payload_length: int) -> int:
        return sealed_length(payload_length)


class InboundSa(_SaBase):
    """Opens packets: replay window, ICV, trailer, then (tunnel mode) the traffic selectors."""

    def __init__(self, params: SaParams, now: float) -> None:
        super().__init__(params, now, Direction.INBOUND)
        self.window = ReplayWindow(params.replay_window, esn=params.esn)
        self.selectors = SelectorPair(params.local_ts, params.remote_ts)
        self._esn = params.esn

    def open(self, packet: Buffer, now: float) -> tuple[int, bytes]:
        """Next header and payload of an ESP packet for this SA. Raises EspPeerError.

        The per-packet hot path of the data plane (open_esp, inlined)."""
        try:
            if now >= self._next_time or self.expired:
                self._check_limits(now)
                if self.expired:
                    raise SaExpired(f"SA {self.spi:#x} has expired")
            if not MIN_ESP_PACKET <= len(packet) <= MAX_ESP_PACKET:
                raise MalformedPacket(f"ESP packet of {len(packet)} bytes")
            header = bytes(packet[: ESP_HEADER_LENGTH + IV_LENGTH])
            spi, seq_low = _HEADER.unpack_from(header)
            if spi != self.spi:
                raise MalformedPacket(f"SPI {spi:#x} is not {self.spi:#x}")
            seq = self.window.check(seq_low)
            aad = esp_aad(spi, seq, esn=True) if self._esn else header[:ESP_HEADER_LENGTH]
            plaintext = self.transform.open(
                header[ESP_HEADER_LENGTH:], aad, packet[ESP_HEADER_LENGTH + IV_LENGTH :]
            )
            next_header, payload = strip_trailer(plaintext)
        except EspPeerError as error:
            self.drops[error.reason] += 1
            raise
        self.window.accept(seq)
        self.packets += 1
        self.bytes += len(payload)
        if self.bytes >= self._next_bytes or self.packets >= self._next_packets:
            self._check_limits(now)
        return next_header, payload

    def open_packet(self, packet: Buffer, now: float) -> bytes | None:
        """Tunnel mode: the inner IP packet, or None for a dummy packet (next header 59,
        RFC 4303 section 2.6, discarded by design). Raises EspPeerError."""
        next_header, inner = self.open(packet, now)
        try:
            version = inner[0] >> 4 if inner else 0
            if not (next_header == 4 and version == 4) and not (next_header == 41 and version == 6):
                if next_header == NextHeader.NO_NEXT_HEADER:
                    self.drops[DropReason.DUMMY] += 1
                    return None
                raise MalformedPacket(f"next header {next_header} with an IPv{version} payload")
            if not self.selectors.covers_packet(inner, outbound=False):
                raise SelectorMismatch("inner packet outside the SA's traffic selectors")
        except EspPeerError as error:
            self.drops[error.reason] += 1
            raise
        return inner

    def check_selectors(self, inner: Buffer) -> None:
        if not self.selectors.covers_packet(inner, outbound=False):
            raise SelectorMismatch("inner packet outside the SA's traffic selectors")

    def open_transport(self, packet: Buffer, now: float) -> bytes:
        """Transport mode: an IP packet carrying ESP in, the original IP packet out."""
        header, protocol, esp = _split_transport(packet)
        if protocol != NextHeader.ESP:
            raise MalformedPacket(f"protocol {protocol} is not ESP")
        next_header, payload = self.open(esp, now)
        restored = _join_transport(header, next_header, payload)
        try:
            self.check_selectors(restored)
        except EspPeerError as error:
            self.drops[error.reason] += 1
            raise
        return restored


def _split_transport(packet: Buffer) -> tuple[bytes, int, bytes]:
    """(IP header, protocol, transport payload) of a packet without IPv6 extension headers."""
    data = bytes(packet)
    version = data[0] >> 4 if data else 0
    if version == 4 and len(data) >= IPV4_HEADER:
        header_length = (data[0] & 0x0F) * 4
        if header_length >= IPV4_HEADER and len(data) >= header_length:
            return data[:header_length], data[9], data[header_length:]
    elif version == 6 and len(data) >= IPV6_HEADER:
        return data[:IPV6_HEADER], data[6], data[IPV6_HEADER:]
    raise MalformedPacket("not an IP packet")


def _join_transport(header: bytes, protocol: int, payload: bytes) -> bytes:
    out = bytearray(header + payload)
    if header[0] >> 4 == 4:
        out[2:4] = len(out).to_bytes(2, "big")
        out[9] = protocol
        set_ipv4_checksum(memoryview(out)[: len(header)])
    else:
        out[4:6] = len(payload).to_bytes(2, "big")
        out[6] = protocol
    return bytes(out)


def address(value: str | IPAddress) -> IPAddress:
    """Convenience for building SaParams from strings."""
    return ipaddress.ip_address(value) if isinstance(value, str) else value
