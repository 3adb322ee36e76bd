"""Test support: IPv4/IPv6 packet builders (checksums included) and a matching SA pair."""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from trellis.agent.dataplane.hooks import ALLOW, Verdict
from trellis.agent.esp import Cipher, Direction, Lifetime, Mode, SaParams, TrafficSelector
from trellis.agent.esp.inet import checksum, pseudo_header_sum, set_ipv4_checksum
from trellis.agent.esp.transforms import Buffer

TCP_SYN = 0x02
TCP_ACK = 0x10
TCP_PSH = 0x08
TCP_FIN = 0x01


def _addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def ipv4(src: str, dst: str, protocol: int, payload: bytes, *, df: bool = True, ident: int = 1) -> bytes:
    header = bytearray(
        struct.pack(
            ">BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(payload),
            ident,
            0x4000 if df else 0,
            64,
            protocol,
            0,
            _addr(src),
            _addr(dst),
        )
    )
    set_ipv4_checksum(header)
    return bytes(header) + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    return (
        struct.pack(">IHBB16s16s", 6 << 28, len(payload), next_header, 64, _addr(src), _addr(dst)) + payload
    )


def _with_l4_checksum(src: str, dst: str, protocol: int, segment: bytearray, offset: int) -> bytes:
    initial = pseudo_header_sum(_addr(src), _addr(dst), protocol, len(segment))
    struct.pack_into(">H", segment, offset, checksum(segment, initial))
    return bytes(segment)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    segment = bytearray(struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload)
    return _with_l4_checksum(src, dst, 17, segment, 6)


def tcp(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    *,
    flags: int = TCP_ACK,
    seq: int = 1000,
    ack: int = 0,
    options: bytes = b"",
    payload: bytes = b"",
) -> bytes:
    offset_words = (20 + len(options)) // 4
    header = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, offset_words << 4, flags, 65535, 0, 0)
    segment = bytearray(header + options + payload)
    return _with_l4_checksum(src, dst, 6, segment, 16)


def icmp_echo(ident: int = 7, seq: int = 1, payload: bytes = b"ping") -> bytes:
    message = bytearray(struct.pack(">BBHHH", 8, 0, 0, ident, seq) + payload)
    struct.pack_into(">H", message, 2, checksum(message))
    return bytes(message)


def udp4(src: str, dst: str, sport: int = 1000, dport: int = 2000, payload: bytes = b"x" * 32) -> bytes:
    return ipv4(src, dst, 17, udp(src, dst, sport, dport, payload))


def udp6(src: str, dst: str, sport: int = 1000, dport: int = 2000, payload: bytes = b"x" * 32) -> bytes:
    return ipv6(src, dst, 17, udp(src, dst, sport, dport, payload))


def tcp6(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    *,
    flags: int = TCP_ACK,
    seq: int = 1000,
    options: bytes = b"",
    payload: bytes = b"",
) -> bytes:
    return ipv6(
        src, dst, 6, tcp(src, dst, sport, dport, flags=flags, seq=seq, options=options, payload=payload)
    )


def tcp4(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    *,
    flags: int = TCP_ACK,
    seq: int = 1000,
    options: bytes = b"",
    payload: bytes = b"",
    df: bool = True,
) -> bytes:
    segment = tcp(src, dst, sport, dport, flags=flags, seq=seq, options=options, payload=payload)
    return ipv4(src, dst, 6, segment, df=df)


KEYS = {
    Cipher.AES_GCM_16: bytes(range(36)),
    Cipher.CHACHA20_POLY1305: bytes(range(100, 136)),
    Cipher.NULL_AUTH_AES_GMAC: bytes(range(50, 70)),
}
LAN_A, LAN_B = "10.1.0.0/24", "10.2.0.0/24"
LAN6_A, LAN6_B = "fd00:a::/64", "fd00:b::/64"


def pair(
    cipher: Cipher = Cipher.AES_GCM_16,
    *,
    esn: bool = False,
    lifetime: Lifetime | None = None,
    local: tuple[str, ...] = (LAN_A, LAN6_A),
    remote: tuple[str, ...] = (LAN_B, LAN6_B),
    mode: Mode = Mode.TUNNEL,
) -> tuple[SaParams, SaParams]:
    """The outbound SA at site A and the matching inbound SA at site B."""
    out = SaParams(
        spi=0x1000,
        direction=Direction.OUTBOUND,
        cipher=cipher,
        key=KEYS[cipher],
        local_ts=tuple(TrafficSelector.from_network(n) for n in local),
        remote_ts=tuple(TrafficSelector.from_network(n) for n in remote),
        local_address=ipaddress.ip_address("192.0.2.1"),
        remote_address=ipaddress.ip_address("198.51.100.1"),
        esn=esn,
        lifetime=lifetime or Lifetime(),
        mode=mode,
        tag="a->b",
    )
    inbound = dataclasses.replace(
        out,
        direction=Direction.INBOUND,
        local_ts=out.remote_ts,
        remote_ts=out.local_ts,
        local_address=out.remote_address,
        remote_address=out.local_address,
    )
    return out, inbound


class DropPort(dict[str, int]):
    """A filter that refuses one destination port (picklable, as the workers need)."""

    def check(self, packet: Buffer, direction: Direction, now: float) -> Verdict:
        if packet[9] in (6, 17) and struct.unpack_from(">H", packet, 22)[0] == self["port"]:
            return Verdict(allowed=False, reason=f"port {self['port']} {direction}")
        return ALLOW
