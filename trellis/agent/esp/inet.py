"""The Internet checksum (RFC 1071) and IPv4 header rewriting shared by ESP and the data plane.

The ones' complement sum of 16-bit words equals the value of the bytes, read as one big-endian
integer, modulo 0xFFFF (because 2**16 == 1 mod 0xFFFF); CPython's big integers do that in C,
which beats a Python loop over words by two orders of magnitude.
"""

from __future__ import annotations

import struct

from trellis.agent.esp.transforms import Buffer

_U16 = struct.Struct(">H")
_FOLD_BITS = 4096  # fold big sums in halves of at most this many bits before the modulo


def ones_sum(data: Buffer) -> int:
    """Ones' complement sum of ``data`` (odd length: padded with a zero byte), in 0..0xFFFF."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8
    # Folding at 16-bit-aligned boundaries keeps the value mod 0xFFFF and is cheaper than a
    # long division by 0xFFFF on a long number.
    bits = value.bit_length()
    while bits > _FOLD_BITS:
        half = (bits // 2 + 15) & ~15
        value = (value >> half) + (value & ((1 << half) - 1))
        bits = value.bit_length()
    if not value:
        return 0
    return value % 0xFFFF or 0xFFFF


def fold(total: int) -> int:
    """Reduce an integer sum of ones' complement sums to 16 bits (0 stays 0)."""
    if not total:
        return 0
    return total % 0xFFFF or 0xFFFF


def checksum(data: Buffer, initial: int = 0) -> int:
    """The Internet checksum field value for ``data`` plus ``initial`` (e.g. a pseudo-header sum)."""
    return ~fold(ones_sum(data) + initial) & 0xFFFF


def ipv4_header_valid(header: Buffer) -> bool:
    return ones_sum(header) == 0xFFFF


def set_ipv4_checksum(header: bytearray | memoryview) -> None:
    header[10:12] = b"\x00\x00"
    _U16.pack_into(header, 10, checksum(header))


def pseudo_header_sum(src: Buffer, dst: Buffer, protocol: int, length: int) -> int:
    """Sum (not folded) of the TCP/UDP pseudo-header (RFC 793; IPv6: RFC 8200 section 8.1)."""
    return ones_sum(src) + ones_sum(dst) + protocol + length
