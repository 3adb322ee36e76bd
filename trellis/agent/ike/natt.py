"""NAT detection (RFC 7296 section 2.23): the NAT_DETECTION_*_IP notify data.

Each side hashes the addresses and ports it believes the packet carries; a hash that does not
match what the receiver sees means a NAT rewrote that end. Faking our source hash (strongSwan's
``encap = yes``, and what kernel-libipsec always does) makes the peer believe we are behind a NAT,
so that ESP is UDP-encapsulated whatever the path.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets

from trellis.agent.ike.config import Address

NAT_DETECTION_HASH_LENGTH = 20  # SHA-1


def nat_detection_hash(spi_i: bytes, spi_r: bytes, address: Address) -> bytes:
    """SHA-1(SPIi | SPIr | IP | port); SPIr is zero in an IKE_SA_INIT request."""
    host, port = address
    packed = ipaddress.ip_address(host).packed
    return hashlib.sha1(spi_i + spi_r + packed + port.to_bytes(2, "big"), usedforsecurity=False).digest()


def fake_nat_detection_hash() -> bytes:
    """A source hash that matches no address: the peer will see a NAT in front of us."""
    return secrets.token_bytes(NAT_DETECTION_HASH_LENGTH)


def nat_in_front(hashes: tuple[bytes, ...], spi_i: bytes, spi_r: bytes, address: Address) -> bool:
    """Whether the address at one end was rewritten: none of the peer's hashes for that end (it
    may send several source hashes, one per local address) matches what we see."""
    return nat_detection_hash(spi_i, spi_r, address) not in hashes
