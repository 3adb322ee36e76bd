"""IKE_AUTH authentication: the octets each side signs and the AUTH payload data.

RFC 7296 section 2.15 defines what is signed; RFC 7427 the Digital Signature method (14) whose
AUTH data names its own algorithm; RFC 4754 the older ECDSA methods (9, 10, 11) with raw r | s;
RFC 8420 Ed25519 under method 14. Every failure raises AuthenticationFailed with a reason.
"""

from __future__ import annotations

import hmac as constant_time
from collections.abc import Callable, Collection, Iterable, Mapping
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from trellis.agent.ike.constants import AuthMethod, HashAlgorithm, PrfId
from trellis.agent.ike.crypto.prf import prf
from trellis.agent.ike.errors import AuthenticationFailed, IkeLocalError, MalformedMessage

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 section 2.15
ID_RESERVED = b"\x00\x00\x00"

# SIGNATURE_HASH_ALGORITHMS notify data: 2 octets per algorithm (RFC 7427 section 4). Real peers
# send a handful; more than this is garbage.
SIGNATURE_HASH_ALGORITHM_LENGTH = 2
MAX_SIGNATURE_HASH_ALGORITHMS = 32

# What we advertise: every hash we can verify with, Identity for Ed25519 (RFC 8420 section 2).
OUR_SIGNATURE_HASH_ALGORITHMS: tuple[HashAlgorithm, ...] = (
    HashAlgorithm.SHA2_256,
    HashAlgorithm.SHA2_384,
    HashAlgorithm.SHA2_512,
    HashAlgorithm.IDENTITY,
)

# DER AlgorithmIdentifiers, parameters absent (RFC 7427 appendix A.3, RFC 8420 section 2)
_ECDSA_ALGORITHM_IDS: Mapping[HashAlgorithm, bytes] = MappingProxyType(
    {
        HashAlgorithm.SHA2_256: bytes.fromhex("300a06082a8648ce3d040302"),  # ecdsa-with-SHA256
        HashAlgorithm.SHA2_384: bytes.fromhex("300a06082a8648ce3d040303"),  # ecdsa-with-SHA384
        HashAlgorithm.SHA2_512: bytes.fromhex("300a06082a8648ce3d040304"),  # ecdsa-with-SHA512
    }
)
_ED25519_ALGORITHM_ID = bytes.fromhex("300506032b6570")  # id-Ed25519
_ALGORITHMS_BY_ID: Mapping[bytes, HashAlgorithm] = MappingProxyType(
    {**{der: h for h, der in _ECDSA_ALGORITHM_IDS.items()}, _ED25519_ALGORITHM_ID: HashAlgorithm.IDENTITY}
)
_HASHES: Mapping[HashAlgorithm, type[hashes.HashAlgorithm]] = MappingProxyType(
    {
        HashAlgorithm.SHA2_256: hashes.SHA256,
        HashAlgorithm.SHA2_384: hashes.SHA384,
        HashAlgorithm.SHA2_512: hashes.SHA512,
    }
)

# RFC 4754 section 7: each method fixes curve, hash and the r | s length.
_RFC4754_METHODS: Mapping[int, tuple[type[ec.EllipticCurve], type[hashes.HashAlgorithm], int]] = (
    MappingProxyType(
        {
            AuthMethod.ECDSA_SHA256_P256: (ec.SECP256R1, hashes.SHA256, 32),
            AuthMethod.ECDSA_SHA384_P384: (ec.SECP384R1, hashes.SHA384, 48),
            AuthMethod.ECDSA_SHA512_P521: (ec.SECP521R1, hashes.SHA512, 66),
        }
    )
)

# Preferred hash per curve: the one of matching strength first (RFC 5656 section 6.2.1 style).
_CURVE_HASH_PREFERENCE: Mapping[str, tuple[HashAlgorithm, ...]] = MappingProxyType(
    {
        "secp256r1": (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512),
        "secp384r1": (HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512, HashAlgorithm.SHA2_256),
        "secp521r1": (HashAlgorithm.SHA2_512, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_256),
    }
)


def rest_of_id_payload(id_type: int, id_data: bytes) -> bytes:
    """The ID payload body after its generic header: ID Type | RESERVED | Identification Data."""
    return bytes((id_type,)) + ID_RESERVED + id_data


def signed_octets(
    *, real_message: bytes, peer_nonce: bytes, prf_id: PrfId, sk_p: bytes, id_type: int, id_data: bytes
) -> bytes:
    """InitiatorSignedOctets / ResponderSignedOctets (RFC 7296 section 2.15):
    our first message of the exchange as sent | the peer's Nonce data | prf(SK_p, RestOfIDPayload).

    The initiator passes its IKE_SA_INIT request, Nr, SK_pi and its IDi; the responder its
    IKE_SA_INIT response, Ni, SK_pr and its IDr. To verify the peer, pass the peer's message, our
    nonce, the peer's SK_p and the peer's ID.
    """
    maced_id = prf(prf_id, sk_p, rest_of_id_payload(id_type, id_data))
    return real_message + peer_nonce + maced_id


# --- digital signatures ---------------------------------------------------------------------


def choose_signature_hash(key: SigningKey | VerifyingKey, peer_supported: Collection[int]) -> HashAlgorithm:
    """The hash to sign with under method 14, given the peer's SIGNATURE_HASH_ALGORITHMS."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        if HashAlgorithm.IDENTITY in peer_supported:
            return HashAlgorithm.IDENTITY
        raise AuthenticationFailed("peer does not accept Ed25519 signatures (no Identity hash, RFC 8420)")
    preference = _CURVE_HASH_PREFERENCE.get(key.curve.name)
    if preference is None:
        raise IkeLocalError(f"unsupported signing curve {key.curve.name}")
    for candidate in preference:
        if candidate in peer_supported:
            return candidate
    raise AuthenticationFailed("peer supports none of the SHA-2 hashes we sign with")


def sign(key: SigningKey, octets: bytes, hash_algorithm: HashAlgorithm) -> bytes:
    """AUTH data for method 14 (Digital Signature, RFC 7427 section 3):
    length of the AlgorithmIdentifier (1 octet) | AlgorithmIdentifier | signature."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        if hash_algorithm != HashAlgorithm.IDENTITY:
            raise IkeLocalError("Ed25519 signs with the Identity hash only (RFC 8420)")
        algorithm_id, signature = _ED25519_ALGORITHM_ID, key.sign(octets)
    else:
        hash_class = _HASHES.get(hash_algorithm)
        if hash_class is None:
            raise IkeLocalError(f"ECDSA cannot sign with hash {hash_algorithm!r}")
        algorithm_id = _ECDSA_ALGORITHM_IDS[hash_algorithm]
        signature = key.sign(octets, ec.ECDSA(hash_class()))  # DER Ecdsa-Sig-Value
    return bytes((len(algorithm_id),)) + algorithm_id + signature


def sign_rfc4754(key: ec.EllipticCurvePrivateKey, octets: bytes) -> tuple[AuthMethod, bytes]:
    """(method, AUTH data) for a peer that sent no SIGNATURE_HASH_ALGORITHMS: RFC 4754 fixes
    the hash by curve and carries the signature as raw r | s."""
    for method, (curve, hash_class, half) in _RFC4754_METHODS.items():
        if isinstance(key.curve, curve):
            r, s = decode_dss_signature(key.sign(octets, ec.ECDSA(hash_class())))
            return AuthMethod(method), r.to_bytes(half, "big") + s.to_bytes(half, "big")
    raise IkeLocalError(f"RFC 4754 has no AUTH method for curve {key.curve.name}")


def verify(method: int, auth_data: bytes, public_key: VerifyingKey, octets: bytes) -> None:
    """Check a peer's signature AUTH payload (methods 9, 10, 11 and 14) over ``octets``."""
    if method == AuthMethod.DIGITAL_SIGNATURE:
        _verify_digital_signature(auth_data, public_key, octets)
    elif method in _RFC4754_METHODS:
        _verify_rfc4754(method, auth_data, public_key, octets)
    else:
        raise AuthenticationFailed(f"unsupported AUTH method {method} for a certificate")


def _verify_digital_signature(auth_data: bytes, public_key: VerifyingKey, octets: bytes) -> None:
    if not auth_data:
        raise AuthenticationFailed("empty Digital Signature AUTH data")
    id_length = auth_data[0]
    if len(auth_data) < 1 + id_length:
        raise AuthenticationFailed("Digital Signature AUTH data shorter than its AlgorithmIdentifier")
    algorithm = _ALGORITHMS_BY_ID.get(auth_data[1 : 1 + id_length])
    if algorithm is None:
        raise AuthenticationFailed("unsupported signature algorithm in AUTH payload")
    signature = auth_data[1 + id_length :]
    if algorithm == HashAlgorithm.IDENTITY:
        if not isinstance(public_key, ed25519.Ed25519PublicKey):
            raise AuthenticationFailed("Ed25519 signature but the certificate key is not Ed25519")
        _check(lambda: public_key.verify(signature, octets))
    else:
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise AuthenticationFailed("ECDSA signature but the certificate key is not ECDSA")
        ecdsa = ec.ECDSA(_HASHES[algorithm]())
        _check(lambda: public_key.verify(signature, octets, ecdsa))


def _verify_rfc4754(method: int, auth_data: bytes, public_key: VerifyingKey, octets: bytes) -> None:
    curve, hash_class, half = _RFC4754_METHODS[method]
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, curve):
        raise AuthenticationFailed(f"AUTH method {method} needs a {curve.name} key")
    if len(auth_data) != 2 * half:
        raise AuthenticationFailed(f"AUTH method {method} signature must be {2 * half} bytes")
    r = int.from_bytes(auth_data[:half], "big")
    s = int.from_bytes(auth_data[half:], "big")
    der = encode_dss_signature(r, s)
    _check(lambda: public_key.verify(der, octets, ec.ECDSA(hash_class())))


def _check(verify_call: Callable[[], None]) -> None:
    try:
        verify_call()
    except (InvalidSignature, ValueError):
        raise AuthenticationFailed("signature does not verify") from None


# --- pre-shared keys ------------------------------------------------------------------------


def shared_key_auth(prf_id: PrfId, secret: bytes, octets: bytes) -> bytes:
    """AUTH data for method 2: prf(prf(Shared Secret, "Key Pad for IKEv2"), SignedOctets)."""
    return prf(prf_id, prf(prf_id, secret, KEY_PAD), octets)


def verify_shared_key_auth(prf_id: PrfId, secret: bytes, octets: bytes, auth_data: bytes) -> None:
    if not constant_time.compare_digest(shared_key_auth(prf_id, secret, octets), auth_data):
        raise AuthenticationFailed("pre-shared key AUTH does not match")


# --- SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 section 4) ---------------------------------


def encode_signature_hash_algorithms(algorithms: Iterable[int] = OUR_SIGNATURE_HASH_ALGORITHMS) -> bytes:
    return b"".join(int(a).to_bytes(SIGNATURE_HASH_ALGORITHM_LENGTH, "big") for a in algorithms)


def decode_signature_hash_algorithms(data: bytes) -> tuple[int, ...]:
    """The peer's hash algorithms in its order; unknown values kept as plain ints."""
    if len(data) % SIGNATURE_HASH_ALGORITHM_LENGTH:
        raise MalformedMessage("SIGNATURE_HASH_ALGORITHMS data is not a list of 2-octet values")
    count = len(data) // SIGNATURE_HASH_ALGORITHM_LENGTH
    if count > MAX_SIGNATURE_HASH_ALGORITHMS:
        raise MalformedMessage(f"SIGNATURE_HASH_ALGORITHMS lists {count} algorithms")
    return tuple(
        _known_hash(int.from_bytes(data[i : i + SIGNATURE_HASH_ALGORITHM_LENGTH], "big"))
        for i in range(0, len(data), SIGNATURE_HASH_ALGORITHM_LENGTH)
    )


def _known_hash(value: int) -> int:
    try:
        return HashAlgorithm(value)
    except ValueError:
        return value
