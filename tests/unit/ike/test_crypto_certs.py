"""Peer certificate checks with real certificates from the controller's CA, one test per refusal."""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.agent.ike.constants import AuthMethod, IdType, NotifyType, PrfId
from trellis.agent.ike.crypto.auth import (
    choose_signature_hash,
    decode_signature_hash_algorithms,
    encode_signature_hash_algorithms,
    sign,
    signed_octets,
    verify,
)
from trellis.agent.ike.crypto.certs import (
    MAX_CHAIN_LENGTH,
    REASON_CHAIN_TOO_LONG,
    REASON_EXPIRED,
    REASON_ID_MISMATCH,
    REASON_KEY_USAGE,
    REASON_MALFORMED,
    REASON_NOT_YET_VALID,
    REASON_REVOKED,
    REASON_UNEXPECTED_IDENTITY,
    REASON_UNSUPPORTED_KEY,
    REASON_UNTRUSTED,
    VerifiedPeer,
    ca_key_hash,
    certreq_data,
    choose_certificate,
    parse_certreq_data,
    verify_peer_certificate,
)
from trellis.agent.ike.errors import AuthenticationFailed, MalformedMessage
from trellis.controller.ca import CertificateAuthority, make_csr, serial_hex
from trellis.v1.identity import Identity

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
SITE = Identity.site("example.org", "branch-a")
SITE_DN = "O=example.org, OU=site, CN=branch-a"
SITE_FQDN = "branch-a.example.org"
SITE_IPV4 = ipaddress.IPv4Address("198.51.100.7")
SITE_IPV6 = ipaddress.IPv6Address("2001:db8::7")

Key = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _never_revoked(identity: str | None, serial: str) -> bool:
    return False


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("example.org", now=NOW)


@pytest.fixture(scope="module")
def leaf_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def leaf(ca: CertificateAuthority, leaf_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return ca.issue(
        make_csr(leaf_key, None),
        SITE,
        now=NOW,
        ttl=HOUR,
        dns_names=(SITE_FQDN,),
        ip_addresses=(SITE_IPV4, SITE_IPV6),
    )


def _check(
    chain: Sequence[x509.Certificate | bytes],
    anchors: Sequence[x509.Certificate],
    *,
    at: dt.datetime = NOW,
    id_type: int = IdType.ID_DER_ASN1_DN,
    id_data: bytes | None = None,
    expected: str | None = SITE.uri,
    revoked: bool = False,
) -> VerifiedPeer:
    ders = [c if isinstance(c, bytes) else _der(c) for c in chain]
    first = chain[0]
    if id_data is None:
        assert isinstance(first, x509.Certificate)
        id_data = first.subject.public_bytes()
    return verify_peer_certificate(
        ders,
        anchors,
        now=at.timestamp(),
        id_type=id_type,
        id_data=id_data,
        expected=expected,
        is_revoked=lambda identity, serial: revoked,
    )


def _refused(reason: str, *args: object, **kwargs: object) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        _check(*args, **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason.startswith(reason), caught.value.reason
    assert caught.value.notify == NotifyType.AUTHENTICATION_FAILED
    return caught.value


def _custom_cert(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
    subject_key: Key | ec.EllipticCurvePublicKey,
    subject: x509.Name,
    *,
    ca: bool = False,
    path_length: int | None = None,
    valid: tuple[dt.datetime, dt.datetime] = (NOW - dt.timedelta(minutes=1), NOW + HOUR),
    key_usage: x509.KeyUsage | None = None,
    san: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    public_key = (
        subject_key if isinstance(subject_key, ec.EllipticCurvePublicKey) else subject_key.public_key()
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    )
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _key_usage(
    *, digital_signature: bool = False, content_commitment: bool = False, cert_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=not (digital_signature or content_commitment or cert_sign),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "example.org"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _site_leaf_from(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    *,
    extra_san: Sequence[x509.GeneralName] = (),
    valid: tuple[dt.datetime, dt.datetime] = (NOW - dt.timedelta(minutes=1), NOW + HOUR),
    key_usage: x509.KeyUsage | None = None,
) -> x509.Certificate:
    """A Trellis-like leaf (URI SAN) built by hand, to vary what the CA would never issue."""
    return _custom_cert(
        issuer_key,
        issuer,
        ec.generate_private_key(ec.SECP256R1()),
        _name("branch-a"),
        san=[x509.UniformResourceIdentifier(SITE.uri), *extra_san],
        valid=valid,
        key_usage=key_usage,
    )


# --- accepted --------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["p256", "ed25519"])
def test_trellis_leaf_is_accepted(ca: CertificateAuthority, key_type: str) -> None:
    key: Key = (
        ec.generate_private_key(ec.SECP256R1())
        if key_type == "p256"
        else ed25519.Ed25519PrivateKey.generate()
    )
    leaf = ca.issue(make_csr(key, None), SITE, now=NOW, ttl=HOUR)
    seen: list[tuple[str | None, str]] = []

    def is_revoked(identity: str | None, serial: str) -> bool:
        seen.append((identity, serial))
        return False

    peer = verify_peer_certificate(
        [_der(leaf)],
        [ca.certificate],
        now=(NOW + dt.timedelta(minutes=30)).timestamp(),
        id_type=IdType.ID_DER_ASN1_DN,
        id_data=leaf.subject.public_bytes(),
        expected=SITE.uri,
        is_revoked=is_revoked,
    )
    assert peer.identity == SITE.uri
    assert peer.subject == "CN=branch-a,OU=site,O=example.org"
    assert peer.serial == serial_hex(leaf)
    assert peer.not_after == leaf.not_valid_after_utc == NOW + HOUR
    assert peer.public_key == key.public_key()
    assert seen == [(SITE.uri, serial_hex(leaf))]


@pytest.mark.parametrize(
    ("id_type", "id_data"),
    [
        (IdType.ID_FQDN, SITE_FQDN.encode()),
        (IdType.ID_FQDN, b"BRANCH-A.Example.ORG"),
        (IdType.ID_IPV4_ADDR, SITE_IPV4.packed),
        (IdType.ID_IPV6_ADDR, SITE_IPV6.packed),
        # strongSwan encodes a configured DN with PrintableString; our CA wrote UTF8String
        (
            IdType.ID_DER_ASN1_DN,
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "example.org", _ASN1Type.PrintableString),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "site", _ASN1Type.PrintableString),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Branch-A", _ASN1Type.PrintableString),
                ]
            ).public_bytes(),
        ),
    ],
)
def test_id_payload_named_by_the_certificate(
    ca: CertificateAuthority, leaf: x509.Certificate, id_type: int, id_data: bytes
) -> None:
    assert _check([leaf], [ca.certificate], id_type=id_type, id_data=id_data).identity == SITE.uri


def test_rfc822_id_payload(ca: CertificateAuthority) -> None:
    leaf = _site_leaf_from(
        ca.key, ca.certificate.subject, extra_san=[x509.RFC822Name("ops@branch-a.example.org")]
    )
    _check(
        [leaf],
        [ca.certificate],
        id_type=IdType.ID_RFC822_ADDR,
        id_data=b"ops@branch-a.example.org",
        expected=None,
    )
    _refused(
        REASON_ID_MISMATCH,
        [leaf],
        [ca.certificate],
        id_type=IdType.ID_RFC822_ADDR,
        id_data=b"root@branch-a.example.org",
        expected=None,
    )


@pytest.mark.parametrize(
    "expected",
    [
        SITE.uri,
        SITE_DN,
        "CN=branch-a,OU=site,O=example.org",
        "o=EXAMPLE.org,ou=site,cn=branch-a",
        SITE_FQDN,
        None,
    ],
)
def test_expected_identity_forms(
    ca: CertificateAuthority, leaf: x509.Certificate, expected: str | None
) -> None:
    _check([leaf], [ca.certificate], expected=expected)


def test_intermediate_chain_in_any_order(ca: CertificateAuthority) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _custom_cert(
        root_key, _name("root"), root_key, _name("root"), ca=True, valid=(NOW - HOUR, NOW + 9 * HOUR)
    )
    key_1, key_2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    first = _custom_cert(root_key, root.subject, key_1, _name("intermediate 1"), ca=True)
    second = _custom_cert(key_1, first.subject, key_2, _name("intermediate 2"), ca=True, path_length=0)
    leaf = _site_leaf_from(key_2, second.subject, valid=(NOW - HOUR, NOW + 2 * HOUR))
    peer = _check([leaf, first, second], [root])
    assert peer.not_after == NOW + HOUR  # the intermediates expire first


def test_key_usage_non_repudiation_alone_is_enough(ca: CertificateAuthority) -> None:
    leaf = _site_leaf_from(ca.key, ca.certificate.subject, key_usage=_key_usage(content_commitment=True))
    _check([leaf], [ca.certificate])


@pytest.mark.parametrize("key_type", ["p256", "ed25519"])
def test_auth_payload_verifies_with_the_verified_key(ca: CertificateAuthority, key_type: str) -> None:
    """IKE_AUTH end to end for one side: sign our octets, the peer checks chain then signature."""
    key: Key = (
        ec.generate_private_key(ec.SECP256R1())
        if key_type == "p256"
        else ed25519.Ed25519PrivateKey.generate()
    )
    leaf = ca.issue(make_csr(key, None), SITE, now=NOW, ttl=HOUR)
    octets = signed_octets(
        real_message=b"IKE_SA_INIT request",
        peer_nonce=bytes(32),
        prf_id=PrfId.HMAC_SHA2_256,
        sk_p=bytes(range(32)),
        id_type=IdType.ID_DER_ASN1_DN,
        id_data=leaf.subject.public_bytes(),
    )
    peer_supports = decode_signature_hash_algorithms(encode_signature_hash_algorithms())
    auth_data = sign(key, octets, choose_signature_hash(key, peer_supports))
    verified = _check([leaf], [ca.certificate])
    verify(AuthMethod.DIGITAL_SIGNATURE, auth_data, verified.public_key, octets)
    with pytest.raises(AuthenticationFailed):
        verify(AuthMethod.DIGITAL_SIGNATURE, auth_data, verified.public_key, octets[:-1])


# --- refused ---------------------------------------------------------------------------------


def test_expired(ca: CertificateAuthority, leaf: x509.Certificate) -> None:
    error = _refused(REASON_EXPIRED, [leaf], [ca.certificate], at=NOW + 2 * HOUR)
    assert "leaf" in error.reason


def test_not_yet_valid(ca: CertificateAuthority, leaf: x509.Certificate) -> None:
    _refused(REASON_NOT_YET_VALID, [leaf], [ca.certificate], at=NOW - dt.timedelta(minutes=10))


def test_ca_outside_its_validity() -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    short_root = _custom_cert(
        root_key, _name("root"), root_key, _name("root"), ca=True, valid=(NOW - HOUR, NOW + HOUR)
    )
    late_root = _custom_cert(
        root_key, _name("root"), root_key, _name("root"), ca=True, valid=(NOW + HOUR, NOW + 9 * HOUR)
    )
    leaf = _site_leaf_from(root_key, short_root.subject, valid=(NOW - HOUR, NOW + 3 * HOUR))
    _check([leaf], [short_root], at=NOW)
    assert "CA" in _refused(REASON_EXPIRED, [leaf], [short_root], at=NOW + 2 * HOUR).reason
    assert "CA" in _refused(REASON_NOT_YET_VALID, [leaf], [late_root], at=NOW).reason


def test_wrong_ca(leaf: x509.Certificate) -> None:
    other = CertificateAuthority.create("example.org", now=NOW)  # same name, other key
    _refused(REASON_UNTRUSTED, [leaf], [other.certificate])


def test_ca_path_length_zero_forbids_intermediates(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    intermediate = _custom_cert(ca.key, ca.certificate.subject, key, _name("sub"), ca=True)
    leaf = _site_leaf_from(key, intermediate.subject)
    _refused(REASON_UNTRUSTED, [leaf, intermediate], [ca.certificate])


def test_intermediate_that_is_not_a_ca(ca: CertificateAuthority) -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _custom_cert(root_key, _name("root"), root_key, _name("root"), ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    not_ca = _custom_cert(root_key, root.subject, key, _name("end entity"), ca=False)
    leaf = _site_leaf_from(key, not_ca.subject)
    _refused(REASON_UNTRUSTED, [leaf, not_ca], [root])


def test_chain_too_long(ca: CertificateAuthority, leaf: x509.Certificate) -> None:
    _refused(REASON_CHAIN_TOO_LONG, [leaf] + [ca.certificate] * MAX_CHAIN_LENGTH, [ca.certificate])


def test_five_level_path() -> None:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(5)]
    names = [_name(f"ca {i}") for i in range(5)]
    root = _custom_cert(keys[0], names[0], keys[0], names[0], ca=True)
    cas = [_custom_cert(keys[i - 1], names[i - 1], keys[i], names[i], ca=True) for i in range(1, 5)]
    leaf = _site_leaf_from(keys[4], names[4])
    # leaf + four intermediates is over the CERT limit; dropping one breaks the path
    _refused(REASON_CHAIN_TOO_LONG, [leaf, *cas], [root])
    _refused(REASON_UNTRUSTED, [leaf, *cas[1:]], [root])


def test_key_usage_without_digital_signature(ca: CertificateAuthority) -> None:
    leaf = _site_leaf_from(ca.key, ca.certificate.subject, key_usage=_key_usage())
    _refused(REASON_KEY_USAGE, [leaf], [ca.certificate])


def test_revoked(ca: CertificateAuthority, leaf: x509.Certificate) -> None:
    error = _refused(REASON_REVOKED, [leaf], [ca.certificate], revoked=True)
    assert serial_hex(leaf) in error.reason


@pytest.mark.parametrize(
    ("id_type", "id_data"),
    [
        (IdType.ID_DER_ASN1_DN, _name("branch-b").public_bytes()),
        (IdType.ID_DER_ASN1_DN, b"\x30\x03\x31\x01"),  # not DER
        (IdType.ID_FQDN, b"branch-b.example.org"),
        (IdType.ID_FQDN, b"\xff\xfe"),
        (IdType.ID_IPV4_ADDR, ipaddress.IPv4Address("198.51.100.8").packed),
        (IdType.ID_IPV4_ADDR, SITE_IPV4.packed + b"\x00"),
        (IdType.ID_IPV6_ADDR, SITE_IPV4.packed),
        (IdType.ID_RFC822_ADDR, b"ops@example.org"),
        (IdType.ID_KEY_ID, b"\x01\x02"),
    ],
)
def test_id_payload_not_matching(
    ca: CertificateAuthority, leaf: x509.Certificate, id_type: int, id_data: bytes
) -> None:
    _refused(REASON_ID_MISMATCH, [leaf], [ca.certificate], id_type=id_type, id_data=id_data)


@pytest.mark.parametrize(
    "expected",
    [
        "spiffe://example.org/site/branch-b",
        "spiffe://example.com/site/branch-a",
        "O=example.org, OU=site, CN=branch-b",
        "O=example.org, CN=branch-a",
        "FOO=bar",
        "branch-b.example.org",
    ],
)
def test_not_the_expected_identity(ca: CertificateAuthority, leaf: x509.Certificate, expected: str) -> None:
    _refused(REASON_UNEXPECTED_IDENTITY, [leaf], [ca.certificate], expected=expected)


def test_malformed_and_unsupported(ca: CertificateAuthority, leaf: x509.Certificate) -> None:
    _refused(REASON_MALFORMED, [b"\x30\x82\x01\x00garbage"], [ca.certificate], id_data=b"")
    _refused(REASON_MALFORMED, [_der(leaf) + bytes(20000)], [ca.certificate], id_data=b"")
    with pytest.raises(AuthenticationFailed, match=REASON_MALFORMED):
        verify_peer_certificate(
            [],
            [ca.certificate],
            now=NOW.timestamp(),
            id_type=9,
            id_data=b"",
            expected=None,
            is_revoked=_never_revoked,
        )
    p224 = _custom_cert(ca.key, ca.certificate.subject, ec.generate_private_key(ec.SECP224R1()), _name("old"))
    _refused(REASON_UNSUPPORTED_KEY, [p224], [ca.certificate], expected=None)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=300), id_data=st.binary(max_size=64), id_type=st.integers(0, 255))
def test_fuzz_garbage_is_authentication_failed(garbage: bytes, id_data: bytes, id_type: int) -> None:
    with pytest.raises(AuthenticationFailed):
        verify_peer_certificate(
            [garbage],
            [],
            now=NOW.timestamp(),
            id_type=id_type,
            id_data=id_data,
            expected=None,
            is_revoked=_never_revoked,
        )


# --- CERTREQ ---------------------------------------------------------------------------------


def test_ca_key_hash_matches_openssl(ca: CertificateAuthority, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    spki_pem = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "ca.pem"), "-noout", "-pubkey"],
        capture_output=True,
        check=True,
    ).stdout
    spki_der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "DER"], input=spki_pem, capture_output=True, check=True
    ).stdout
    digest = subprocess.run(
        ["openssl", "dgst", "-sha1", "-r"], input=spki_der, capture_output=True, check=True
    )
    assert ca_key_hash(ca.certificate).hex() == digest.stdout.split()[0].decode()


def test_certreq_data_round_trip(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create("example.com", now=NOW)
    data = certreq_data([ca.certificate, other.certificate])
    assert parse_certreq_data(data) == (ca_key_hash(ca.certificate), ca_key_hash(other.certificate))
    assert parse_certreq_data(b"") == ()
    with pytest.raises(MalformedMessage):
        parse_certreq_data(data[:-1])
    with pytest.raises(MalformedMessage):
        parse_certreq_data(bytes(20 * 65))


def test_choose_certificate_for_certreq(ca: CertificateAuthority, leaf: x509.Certificate) -> None:
    other = CertificateAuthority.create("example.com", now=NOW)
    other_leaf = other.issue(
        make_csr(ec.generate_private_key(ec.SECP256R1()), None),
        Identity.site("example.com", "branch-a"),
        now=NOW,
        ttl=HOUR,
    )
    ours = [(leaf, ca.certificate), (other_leaf, other.certificate)]
    assert choose_certificate(ours, [ca_key_hash(other.certificate)]) == ours[1]
    assert choose_certificate(ours, [bytes(20), ca_key_hash(ca.certificate)]) == ours[0]
    assert choose_certificate(ours, []) == ours[0]
    assert choose_certificate(ours, [bytes(20)]) is None
    assert choose_certificate([], []) is None
