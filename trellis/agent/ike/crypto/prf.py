"""The IKEv2 pseudo-random function and its expansion prf+ (RFC 7296 section 2.13)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cryptography.hazmat.primitives import hashes, hmac

from trellis.agent.ike.constants import PrfId
from trellis.agent.ike.errors import IkeLocalError

# prf+ counts its iterations in one octet: T1 .. T255 (RFC 7296 section 2.13).
MAX_PRF_PLUS_ITERATIONS = 255

# HMAC-SHA1 is here only as a primitive (it is a registered IKEv2 PRF, and published KDF vectors
# use it); suites.py does not let us negotiate it.
_HASHES: Mapping[PrfId, type[hashes.HashAlgorithm]] = MappingProxyType(
    {
        PrfId.HMAC_SHA1: hashes.SHA1,
        PrfId.HMAC_SHA2_256: hashes.SHA256,
        PrfId.HMAC_SHA2_384: hashes.SHA384,
        PrfId.HMAC_SHA2_512: hashes.SHA512,
    }
)


def _hash_for(prf_id: PrfId) -> hashes.HashAlgorithm:
    try:
        return _HASHES[prf_id]()
    except KeyError:
        raise IkeLocalError(f"unsupported PRF {prf_id!r}") from None


def prf_output_length(prf_id: PrfId) -> int:
    return _hash_for(prf_id).digest_size


def prf(prf_id: PrfId, key: bytes, data: bytes) -> bytes:
    """prf(K, S): HMAC with the PRF's hash (RFC 2104, RFC 4868 section 2.1.2)."""
    mac = hmac.HMAC(key, _hash_for(prf_id))
    mac.update(data)
    return mac.finalize()


def prf_plus(prf_id: PrfId, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+(K, S) = T1 | T2 | ... truncated to ``length`` bytes, where
    T1 = prf(K, S | 0x01) and Tn = prf(K, Tn-1 | S | n)."""
    output_length = prf_output_length(prf_id)
    iterations = -(-length // output_length)
    if length < 0 or iterations > MAX_PRF_PLUS_ITERATIONS:
        raise IkeLocalError(
            f"prf+ cannot produce {length} bytes: at most {MAX_PRF_PLUS_ITERATIONS} x {output_length}"
        )
    out = bytearray()
    block = b""
    for counter in range(1, iterations + 1):
        block = prf(prf_id, key, block + seed + bytes((counter,)))
        out += block
    return bytes(out[:length])
