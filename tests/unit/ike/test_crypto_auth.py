"""AUTH payloads: RFC 4754 and RFC 8032 vectors, RFC 7427 Digital Signature encoding, PSK, and
SIGNATURE_HASH_ALGORITHMS."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.agent.ike.constants import AuthMethod, HashAlgorithm, IdType, NotifyType, PrfId
from trellis.agent.ike.crypto.auth import (
    OUR_SIGNATURE_HASH_ALGORITHMS,
    VerifyingKey,
    choose_signature_hash,
    decode_signature_hash_algorithms,
    encode_signature_hash_algorithms,
    rest_of_id_payload,
    shared_key_auth,
    sign,
    sign_rfc4754,
    signed_octets,
    verify,
    verify_shared_key_auth,
)
from trellis.agent.ike.errors import AuthenticationFailed, IkeLocalError, MalformedMessage

h = bytes.fromhex

# RFC 4754 section 8.1 (ECDSA-256) and 8.2 (ECDSA-384): message "abc"
RFC4754 = {
    AuthMethod.ECDSA_SHA256_P256: {
        "curve": ec.SECP256R1(),
        "w": "DC51D3866A15BACDE33D96F992FCA99DA7E6EF0934E7097559C27F1614C88A7F",
        "gwx": "2442A5CC0ECD015FA3CA31DC8E2BBC70BF42D60CBCA20085E0822CB04235E970",
        "gwy": "6FC98BD7E50211A4A27102FA3549DF79EBCB4BF246B80945CDDFE7D509BBFD7D",
        "r": "CB28E0999B9C7715FD0A80D8E47A77079716CBBF917DD72E97566EA1C066957C",
        "s": "86FA3BB4E26CAD5BF90B7F81899256CE7594BB1EA0C89212748BFF3B3D5B0315",
    },
    AuthMethod.ECDSA_SHA384_P384: {
        "curve": ec.SECP384R1(),
        "w": "0BEB646634BA87735D77AE4809A0EBEA865535DE4C1E1DCB692E84708E81A5AF"
        "62E528C38B2A81B35309668D73524D9F",
        "gwx": "96281BF8DD5E0525CA049C048D345D3082968D10FEDF5C5ACA0C64E6465A97EA"
        "5CE10C9DFEC21797415710721F437922",
        "gwy": "447688BA94708EB6E2E4D59F6AB6D7EDFF9301D249FE49C33096655F5D502FAD"
        "3D383B91C5E7EDAA2B714CC99D5743CA",
        "r": "FB017B914E29149432D8BAC29A514640B46F53DDAB2C69948084E2930F1C8F7E"
        "08E07C9C63F2D21A07DCB56A6AF56EB3",
        "s": "B263A1305E057F984D38726A1B46874109F417BCA112674C528262A40A629AF1"
        "CBB9F516CE0FA7D2FF630863A00E8B9F",
    },
}
RFC4754_MESSAGE = b"abc"

# RFC 8032 section 7.1, TEST 1, TEST 2 and TEST 3: (secret key, public key, message, signature)
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c"
        "387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc659"
        "4a7c15e9716ed28dc027beceea1ec40a",
    ),
]

# RFC 7427 appendix A.3.1 / A.3.2 and RFC 8420 section 2: AlgorithmIdentifier DER
ECDSA_SHA256_ID = h("300a06082a8648ce3d040302")
ECDSA_SHA384_ID = h("300a06082a8648ce3d040303")
ED25519_ID = h("300506032b6570")
SHA256_WITH_RSA_ID = h("300d06092a864886f70d01010b0500")


def _rfc4754_public_key(method: AuthMethod) -> ec.EllipticCurvePublicKey:
    v = RFC4754[method]
    curve = v["curve"]
    assert isinstance(curve, ec.EllipticCurve) and isinstance(v["gwx"], str) and isinstance(v["gwy"], str)
    return ec.EllipticCurvePublicNumbers(int(v["gwx"], 16), int(v["gwy"], 16), curve).public_key()


def _rfc4754_raw_signature(method: AuthMethod) -> bytes:
    v = RFC4754[method]
    assert isinstance(v["r"], str) and isinstance(v["s"], str)
    return h(v["r"]) + h(v["s"])


@pytest.mark.parametrize("method", list(RFC4754))
def test_rfc4754_vectors_verify_as_methods_9_and_10(method: AuthMethod) -> None:
    v = RFC4754[method]
    assert isinstance(v["w"], str) and isinstance(v["curve"], ec.EllipticCurve)
    public_key = _rfc4754_public_key(method)
    # the published private value w really is the key of (gwx, gwy)
    assert ec.derive_private_key(int(v["w"], 16), v["curve"]).public_key() == public_key
    verify(method, _rfc4754_raw_signature(method), public_key, RFC4754_MESSAGE)


@pytest.mark.parametrize("method", list(RFC4754))
def test_rfc4754_failures(method: AuthMethod) -> None:
    public_key, raw = _rfc4754_public_key(method), _rfc4754_raw_signature(method)
    other = next(m for m in RFC4754 if m != method)
    cases: list[tuple[int, bytes, VerifyingKey, bytes]] = [
        (method, raw, public_key, b"abd"),  # other octets
        (method, raw[:-1] + bytes([raw[-1] ^ 1]), public_key, RFC4754_MESSAGE),  # altered s
        (method, raw[:-1], public_key, RFC4754_MESSAGE),  # wrong length
        (other, raw, public_key, RFC4754_MESSAGE),  # method for the other curve
        (method, raw, ed25519.Ed25519PrivateKey.generate().public_key(), RFC4754_MESSAGE),
        (method, bytes(len(raw)), public_key, RFC4754_MESSAGE),  # r = s = 0
    ]
    for args in cases:
        with pytest.raises(AuthenticationFailed) as caught:
            verify(*args)
        assert caught.value.notify == NotifyType.AUTHENTICATION_FAILED


@pytest.mark.parametrize(
    ("curve", "method", "length"),
    [
        (ec.SECP256R1(), AuthMethod.ECDSA_SHA256_P256, 64),
        (ec.SECP384R1(), AuthMethod.ECDSA_SHA384_P384, 96),
        (ec.SECP521R1(), AuthMethod.ECDSA_SHA512_P521, 132),
    ],
)
def test_rfc4754_signing_for_peers_without_rfc7427(
    curve: ec.EllipticCurve, method: AuthMethod, length: int
) -> None:
    key = ec.generate_private_key(curve)
    chosen, auth_data = sign_rfc4754(key, b"octets")
    assert (chosen, len(auth_data)) == (method, length)
    verify(chosen, auth_data, key.public_key(), b"octets")
    with pytest.raises(AuthenticationFailed):
        verify(chosen, auth_data, key.public_key(), b"octet")
    with pytest.raises(IkeLocalError):
        sign_rfc4754(ec.generate_private_key(ec.SECP224R1()), b"octets")


def test_method_14_carrying_the_rfc4754_signature() -> None:
    raw = _rfc4754_raw_signature(AuthMethod.ECDSA_SHA256_P256)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    auth_data = bytes((len(ECDSA_SHA256_ID),)) + ECDSA_SHA256_ID + der
    public_key = _rfc4754_public_key(AuthMethod.ECDSA_SHA256_P256)
    verify(AuthMethod.DIGITAL_SIGNATURE, auth_data, public_key, RFC4754_MESSAGE)
    # the same signature claimed as SHA-384 must not verify
    wrong_hash = bytes((len(ECDSA_SHA384_ID),)) + ECDSA_SHA384_ID + der
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        verify(AuthMethod.DIGITAL_SIGNATURE, wrong_hash, public_key, RFC4754_MESSAGE)


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_ed25519_rfc8032_under_method_14(secret: str, public: str, message: str, signature: str) -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(h(secret))
    assert key.public_key().public_bytes_raw() == h(public)
    auth_data = sign(key, h(message), HashAlgorithm.IDENTITY)
    assert auth_data == b"\x07" + ED25519_ID + h(signature)  # Ed25519 is deterministic
    verify(AuthMethod.DIGITAL_SIGNATURE, auth_data, key.public_key(), h(message))
    with pytest.raises(AuthenticationFailed):
        verify(AuthMethod.DIGITAL_SIGNATURE, auth_data, key.public_key(), h(message) + b"!")


@pytest.mark.parametrize(
    ("curve", "hash_algorithm", "algorithm_id"),
    [
        (ec.SECP256R1(), HashAlgorithm.SHA2_256, ECDSA_SHA256_ID),
        (ec.SECP256R1(), HashAlgorithm.SHA2_384, ECDSA_SHA384_ID),
        (ec.SECP384R1(), HashAlgorithm.SHA2_384, ECDSA_SHA384_ID),
        (ec.SECP384R1(), HashAlgorithm.SHA2_512, h("300a06082a8648ce3d040304")),
    ],
)
def test_ecdsa_method_14_round_trip(
    curve: ec.EllipticCurve, hash_algorithm: HashAlgorithm, algorithm_id: bytes
) -> None:
    key = ec.generate_private_key(curve)
    octets = b"InitiatorSignedOctets"
    auth_data = sign(key, octets, hash_algorithm)
    assert auth_data[0] == len(algorithm_id)
    assert auth_data[1 : 1 + len(algorithm_id)] == algorithm_id
    assert auth_data[1 + len(algorithm_id)] == 0x30  # DER Ecdsa-Sig-Value, not raw r | s
    verify(AuthMethod.DIGITAL_SIGNATURE, auth_data, key.public_key(), octets)
    with pytest.raises(AuthenticationFailed, match="does not verify"):
        verify(AuthMethod.DIGITAL_SIGNATURE, auth_data, ec.generate_private_key(curve).public_key(), octets)


def test_method_14_refusals() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ecdsa_auth = sign(ec_key, b"octets", HashAlgorithm.SHA2_256)
    ed_auth = sign(ed_key, b"octets", HashAlgorithm.IDENTITY)
    signature = ecdsa_auth[1 + len(ECDSA_SHA256_ID) :]
    cases: list[tuple[bytes, VerifyingKey, str]] = [
        (b"", ec_key.public_key(), "empty"),
        (b"\x0c" + ECDSA_SHA256_ID[:5], ec_key.public_key(), "shorter"),
        (
            bytes((len(SHA256_WITH_RSA_ID),)) + SHA256_WITH_RSA_ID + signature,
            ec_key.public_key(),
            "unsupported",
        ),
        (b"\x0b" + ECDSA_SHA256_ID[:11] + signature, ec_key.public_key(), "unsupported"),
        (ed_auth, ec_key.public_key(), "not Ed25519"),
        (ecdsa_auth, ed_key.public_key(), "not ECDSA"),
        (ecdsa_auth[:-3], ec_key.public_key(), "does not verify"),  # truncated DER
    ]
    for auth_data, public_key, reason in cases:
        with pytest.raises(AuthenticationFailed, match=reason):
            verify(AuthMethod.DIGITAL_SIGNATURE, auth_data, public_key, b"octets")


@pytest.mark.parametrize("method", [AuthMethod.RSA_DIGITAL_SIGNATURE, AuthMethod.SHARED_KEY_MIC, 201])
def test_other_methods_refused_for_certificates(method: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(AuthenticationFailed, match="unsupported AUTH method"):
        verify(method, sign(key, b"o", HashAlgorithm.SHA2_256), key.public_key(), b"o")


def test_sign_misuse_is_local_error() -> None:
    with pytest.raises(IkeLocalError):
        sign(ed25519.Ed25519PrivateKey.generate(), b"o", HashAlgorithm.SHA2_256)
    with pytest.raises(IkeLocalError):
        sign(ec.generate_private_key(ec.SECP256R1()), b"o", HashAlgorithm.SHA1)


def test_signed_octets_rfc7296_section_2_15() -> None:
    message, nonce, sk_pi = b"IKE_SA_INIT request bytes", b"\x11" * 32, b"\x22" * 32
    octets = signed_octets(
        real_message=message,
        peer_nonce=nonce,
        prf_id=PrfId.HMAC_SHA2_256,
        sk_p=sk_pi,
        id_type=IdType.ID_FQDN,
        id_data=b"branch-a.example.org",
    )
    rest_of_id = b"\x02\x00\x00\x00branch-a.example.org"
    assert rest_of_id_payload(IdType.ID_FQDN, b"branch-a.example.org") == rest_of_id
    assert octets == message + nonce + hmac.digest(sk_pi, rest_of_id, hashlib.sha256)


@pytest.mark.parametrize(
    ("prf_id", "digest"), [(PrfId.HMAC_SHA2_256, "sha256"), (PrfId.HMAC_SHA2_512, "sha512")]
)
def test_shared_key_auth(prf_id: PrfId, digest: str) -> None:
    secret, octets = b"correct horse battery staple", b"ResponderSignedOctets"
    expected = hmac.digest(hmac.digest(secret, b"Key Pad for IKEv2", digest), octets, digest)
    assert shared_key_auth(prf_id, secret, octets) == expected
    verify_shared_key_auth(prf_id, secret, octets, expected)
    for wrong in (expected[:-1] + bytes([expected[-1] ^ 1]), expected[:16], b""):
        with pytest.raises(AuthenticationFailed, match="pre-shared key"):
            verify_shared_key_auth(prf_id, secret, octets, wrong)
    with pytest.raises(AuthenticationFailed):
        verify_shared_key_auth(prf_id, b"wrong secret", octets, expected)


def test_signature_hash_algorithms_notify() -> None:
    assert encode_signature_hash_algorithms() == h("0002000300040005")
    assert OUR_SIGNATURE_HASH_ALGORITHMS[-1] == HashAlgorithm.IDENTITY
    decoded = decode_signature_hash_algorithms(h("000100020005fff0"))
    assert decoded == (HashAlgorithm.SHA1, HashAlgorithm.SHA2_256, HashAlgorithm.IDENTITY, 0xFFF0)
    assert decode_signature_hash_algorithms(b"") == ()
    with pytest.raises(MalformedMessage):
        decode_signature_hash_algorithms(h("000200"))
    with pytest.raises(MalformedMessage):
        decode_signature_hash_algorithms(h("0002") * 33)


def test_choose_signature_hash() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    everything = decode_signature_hash_algorithms(encode_signature_hash_algorithms())
    assert choose_signature_hash(p256, everything) == HashAlgorithm.SHA2_256
    assert choose_signature_hash(p384, everything) == HashAlgorithm.SHA2_384
    assert choose_signature_hash(p384.public_key(), (HashAlgorithm.SHA2_256,)) == HashAlgorithm.SHA2_256
    assert (
        choose_signature_hash(p256, (HashAlgorithm.SHA2_512, HashAlgorithm.SHA2_384))
        == HashAlgorithm.SHA2_384
    )
    assert choose_signature_hash(ed, everything) == HashAlgorithm.IDENTITY
    with pytest.raises(AuthenticationFailed, match="Ed25519"):
        choose_signature_hash(ed, (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_512))
    with pytest.raises(AuthenticationFailed, match="none of the SHA-2"):
        choose_signature_hash(p256, (HashAlgorithm.SHA1, HashAlgorithm.IDENTITY))


FUZZ_KEYS: list[VerifyingKey] = [
    ec.generate_private_key(ec.SECP256R1()).public_key(),
    ec.generate_private_key(ec.SECP384R1()).public_key(),
    ed25519.Ed25519PrivateKey.generate().public_key(),
]


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from([9, 10, 11, 14, 1, 2]),
    key_index=st.integers(0, 2),
    data=st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=120).map(lambda b: b"\x0c" + ECDSA_SHA256_ID + b),
        st.binary(max_size=80).map(lambda b: b"\x07" + ED25519_ID + b),
    ),
)
def test_fuzz_auth_data_verifies_or_fails_authentication(method: int, key_index: int, data: bytes) -> None:
    with pytest.raises(AuthenticationFailed):
        verify(method, data, FUZZ_KEYS[key_index], b"octets")
