"""The CA's leaves, checked with OpenSSL (a verifier nobody here wrote) and field by field."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from trellis.controller.ca import (
    ID_KP_IPSEC_IKE,
    CertificateAuthority,
    CertificateRequestError,
    identity_of,
    load_csr,
    make_csr,
    serial_hex,
)
from trellis.v1.identity import Identity

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("example.org", now=NOW)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("key_type", ["p256", "ed25519"])
def test_leaf_verifies_with_openssl_and_carries_identity(
    ca: CertificateAuthority, tmp_path: Path, key_type: str
) -> None:
    key = (
        ec.generate_private_key(ec.SECP256R1())
        if key_type == "p256"
        else ed25519.Ed25519PrivateKey.generate()
    )
    site = Identity.site("example.org", "branch-a")
    csr = load_csr(make_csr(key, None).public_bytes(serialization.Encoding.DER))
    leaf = ca.issue(csr, site, now=NOW, ttl=dt.timedelta(hours=1))

    (tmp_path / "ca.pem").write_bytes(_pem(ca.certificate))
    (tmp_path / "leaf.pem").write_bytes(_pem(leaf))
    at = str(int(NOW.timestamp()) + 60)
    for purpose in ("sslclient", "sslserver"):
        result = subprocess.run(
            ["openssl", "verify", "-attime", at, "-purpose", purpose, "-CAfile", "ca.pem", "leaf.pem"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    assert identity_of(leaf) == site
    assert leaf.not_valid_after_utc - NOW == dt.timedelta(hours=1)
    assert leaf.subject.rfc4514_string() == "CN=branch-a,OU=site,O=example.org"
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    ekus = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert ekus == {ID_KP_IPSEC_IKE, ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert 0 < leaf.serial_number < 2**128
    assert len(serial_hex(leaf)) <= 32


def test_leaf_rejected_by_openssl_after_expiry(ca: CertificateAuthority, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.issue(
        make_csr(key, None), Identity.site("example.org", "a"), now=NOW, ttl=dt.timedelta(minutes=5)
    )
    (tmp_path / "ca.pem").write_bytes(_pem(ca.certificate))
    (tmp_path / "leaf.pem").write_bytes(_pem(leaf))
    later = str(int((NOW + dt.timedelta(minutes=6)).timestamp()))
    result = subprocess.run(
        ["openssl", "verify", "-attime", later, "-CAfile", "ca.pem", "leaf.pem"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "certificate has expired" in result.stdout + result.stderr


def test_serials_are_distinct(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, None)
    site = Identity.site("example.org", "a")
    serials = {ca.issue(csr, site, now=NOW, ttl=dt.timedelta(hours=1)).serial_number for _ in range(20)}
    assert len(serials) == 20


def test_csr_asking_for_another_identity_is_refused(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, Identity.site("example.org", "other"))
    with pytest.raises(CertificateRequestError, match=r"asks for spiffe://example\.org/site/other"):
        ca.issue(csr, Identity.site("example.org", "a"), now=NOW, ttl=dt.timedelta(hours=1))


def test_csr_with_bad_signature_or_garbage_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = bytearray(make_csr(key, None).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    with pytest.raises(CertificateRequestError, match="signature does not verify"):
        load_csr(bytes(der))
    with pytest.raises(CertificateRequestError, match="not valid DER"):
        load_csr(b"\x30\x03garbage")
    with pytest.raises(CertificateRequestError, match="larger than"):
        load_csr(b"\x00" * 10000)


def test_unsupported_key_types_are_refused() -> None:
    key = ec.generate_private_key(ec.SECP521R1())
    csr = make_csr(key, None)
    with pytest.raises(CertificateRequestError, match="unsupported curve"):
        load_csr(csr.public_bytes(serialization.Encoding.DER))


def test_leaf_never_outlives_the_ca(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    late = ca.certificate.not_valid_after_utc - dt.timedelta(minutes=10)
    leaf = ca.issue(
        make_csr(key, None), Identity.site("example.org", "a"), now=late, ttl=dt.timedelta(hours=1)
    )
    assert leaf.not_valid_after_utc == ca.certificate.not_valid_after_utc


def test_save_and_load_keeps_key_private(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path)
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    loaded = CertificateAuthority.load(tmp_path)
    assert loaded.trust_domain == "example.org"
    assert loaded.spki_sha256 == ca.spki_sha256
