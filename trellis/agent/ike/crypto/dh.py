"""Ephemeral Diffie-Hellman for the KE payload.

KE data formats: X25519 is the 32-byte u-coordinate (RFC 8031 section 2); ECP groups are x | y,
each padded to the field size, without the 0x04 point-format octet (RFC 5903 section 7). The
shared secret g^ir is the 32-byte X25519 output, or the x-coordinate of the ECDH result
(RFC 5903 section 7). Any peer value we cannot use raises InvalidKeyExchangeData (a peer fault,
INVALID_SYNTAX), never an exception from the crypto library.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from trellis.agent.ike.constants import DhId
from trellis.agent.ike.errors import IkeLocalError, InvalidKeyExchangeData

X25519_KE_LENGTH = 32
_ECP_CURVES: Mapping[DhId, type[ec.EllipticCurve]] = MappingProxyType(
    {DhId.ECP_256: ec.SECP256R1, DhId.ECP_384: ec.SECP384R1}
)
_ECP_FIELD_LENGTHS: Mapping[DhId, int] = MappingProxyType({DhId.ECP_256: 32, DhId.ECP_384: 48})
_UNCOMPRESSED_POINT = b"\x04"  # SEC1 2.3.3; IKE leaves it off the wire


def ke_data_length(group: DhId) -> int:
    """The exact length of KE payload data for ``group`` (IkeLocalError if unsupported)."""
    if group == DhId.CURVE25519:
        return X25519_KE_LENGTH
    try:
        return 2 * _ECP_FIELD_LENGTHS[group]
    except KeyError:
        raise IkeLocalError(f"unsupported DH group {group!r}") from None


class KeyExchange:
    """Our private value for one exchange. ``public_data`` goes in our KE payload;
    ``shared_secret(peer_data)`` takes the peer's KE payload data and returns g^ir.

    The private key never leaves this object and is not shown by repr().
    """

    __slots__ = ("_private", "group", "public_data")

    group: DhId
    public_data: bytes

    def __init__(self, group: DhId, private: x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
        self.group = group
        self._private = private
        if isinstance(private, x25519.X25519PrivateKey):
            self.public_data = private.public_key().public_bytes_raw()
        else:
            point = private.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            self.public_data = point[1:]

    @classmethod
    def generate(cls, group: DhId) -> KeyExchange:
        if group == DhId.CURVE25519:
            return cls(group, x25519.X25519PrivateKey.generate())
        curve = _ECP_CURVES.get(group)
        if curve is None:
            raise IkeLocalError(f"unsupported DH group {group!r}")
        return cls(group, ec.generate_private_key(curve()))

    @classmethod
    def from_private_value(cls, group: DhId, value: bytes) -> KeyExchange:
        """A known private value (test vectors): the X25519 scalar bytes (RFC 7748) or the ECP
        private integer, big-endian (RFC 5903)."""
        try:
            if group == DhId.CURVE25519:
                return cls(group, x25519.X25519PrivateKey.from_private_bytes(value))
            curve = _ECP_CURVES.get(group)
            if curve is None:
                raise IkeLocalError(f"unsupported DH group {group!r}")
            return cls(group, ec.derive_private_key(int.from_bytes(value, "big"), curve()))
        except ValueError as e:
            raise IkeLocalError(f"invalid private value for {group.name}: {e}") from None

    def shared_secret(self, peer_data: bytes) -> bytes:
        expected = ke_data_length(self.group)
        if len(peer_data) != expected:
            raise InvalidKeyExchangeData(
                f"{self.group.name} KE data must be {expected} bytes, got {len(peer_data)}"
            )
        if isinstance(self._private, x25519.X25519PrivateKey):
            return _x25519_shared(self._private, peer_data)
        return _ecp_shared(self._private, self.group, peer_data)

    def __repr__(self) -> str:
        return f"KeyExchange(group={self.group.name})"


def _x25519_shared(private: x25519.X25519PrivateKey, peer_data: bytes) -> bytes:
    try:
        secret = private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_data))
    except ValueError:
        # OpenSSL refuses low-order points, whose result would be all zero (RFC 7748 section 6.1).
        raise InvalidKeyExchangeData("X25519 KE data gives an all-zero shared secret") from None
    if not any(secret):  # RFC 8031 asks receivers to check this, whatever the library did
        raise InvalidKeyExchangeData("X25519 KE data gives an all-zero shared secret")
    return secret


def _ecp_shared(private: ec.EllipticCurvePrivateKey, group: DhId, peer_data: bytes) -> bytes:
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(private.curve, _UNCOMPRESSED_POINT + peer_data)
    except ValueError:
        raise InvalidKeyExchangeData(f"{group.name} KE data is not a point on the curve") from None
    try:
        return private.exchange(ec.ECDH(), peer)
    except ValueError:
        raise InvalidKeyExchangeData(f"{group.name} KE data gives no shared secret") from None
