"""The controller's certificate authority: an ECDSA P-256 key that signs short-lived leaves.

A site leaf carries the identity three ways, so that any IKE peer can match it:
the URI SAN ``spiffe://DOMAIN/site/NAME`` (the Trellis identity), and the subject DN
``O=DOMAIN, OU=site, CN=NAME`` (what IKE peers such as strongSwan match as ID_DER_ASN1_DN).
Keys never leave the machine that uses them: leaves are issued from CSRs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from trellis.v1.csr import make_csr as make_csr  # re-exported for callers issuing to their own keys
from trellis.v1.csr import subject_of
from trellis.v1.files import write_atomic
from trellis.v1.identity import Identity, IdentityError, IdentityKind, check_trust_domain

ID_KP_IPSEC_IKE = ObjectIdentifier("1.3.6.1.5.5.7.3.17")  # RFC 4945 section 5.1.3.12

MIN_LEAF_TTL = dt.timedelta(minutes=5)
MAX_LEAF_TTL = dt.timedelta(hours=24)
DEFAULT_LEAF_TTL = dt.timedelta(hours=1)
CA_LIFETIME = dt.timedelta(days=3650)
ADMIN_LIFETIME = dt.timedelta(days=90)
SERVER_LIFETIME = dt.timedelta(days=30)
# Leaves start slightly in the past so that a peer whose clock is a little behind accepts them.
CLOCK_SKEW = dt.timedelta(minutes=1)
# The name every client expects in the controller's TLS certificate (they override the target name):
# trust comes from the pinned CA, not from DNS.
CONTROLLER_TLS_NAME = "trellis-controller"

MAX_CSR_BYTES = 8192

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.pem"


class CertificateRequestError(ValueError):
    """A CSR we refuse to sign; the message says why and is safe to return to the caller."""


def spki_sha256(certificate: x509.Certificate) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: the pin that join tokens carry."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def serial_hex(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def identity_of(certificate: x509.Certificate) -> Identity:
    """The Trellis identity in a certificate's URI SAN; IdentityError if there is none or several."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityError("certificate has no subjectAltName") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith("spiffe://")]
    if len(uris) != 1:
        raise IdentityError(f"certificate must carry exactly one spiffe:// URI SAN, found {len(uris)}")
    return Identity.parse(uris[0])


def requested_identity(csr: x509.CertificateSigningRequest) -> Identity | None:
    """The identity a CSR asks for in its URI SAN, or None if it asks for none."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        return None
    if len(uris) != 1:
        raise CertificateRequestError("CSR must ask for at most one URI SAN")
    try:
        return Identity.parse(uris[0])
    except IdentityError as e:
        raise CertificateRequestError(str(e)) from None


def load_csr(der: bytes) -> x509.CertificateSigningRequest:
    """Parse and check a CSR's own signature (proof of possession of its key)."""
    if len(der) > MAX_CSR_BYTES:
        raise CertificateRequestError(f"CSR larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_der_x509_csr(der)
    except ValueError:
        raise CertificateRequestError("CSR is not valid DER PKCS#10") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, InvalidSignature, x509.UnsupportedGeneralNameType):
        valid = False
    if not valid:
        raise CertificateRequestError("CSR signature does not verify")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise CertificateRequestError(f"unsupported curve {key.curve.name}: use P-256, P-384 or Ed25519")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CertificateRequestError("unsupported key type: use ECDSA P-256, P-384 or Ed25519")
    return csr


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    trust_domain: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, trust_domain: str, *, now: dt.datetime) -> CertificateAuthority:
        check_trust_domain(trust_domain)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Trellis CA {trust_domain}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(_random_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(trust_domain=trust_domain, key=key, certificate=certificate)

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / CA_KEY_FILE} is not an ECDSA key")
        certificate = x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
        organization = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if not organization:
            raise ValueError(f"{directory / CA_CERT_FILE} has no trust domain (O=) in its subject")
        return cls(trust_domain=str(organization[0].value), key=key, certificate=certificate)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_private_key(directory / CA_KEY_FILE, self.key)
        (directory / CA_CERT_FILE).write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    @property
    def spki_sha256(self) -> bytes:
        return spki_sha256(self.certificate)

    @property
    def bundle_der(self) -> list[bytes]:
        return [self.certificate.public_bytes(serialization.Encoding.DER)]

    def issue(
        self,
        csr: x509.CertificateSigningRequest,
        identity: Identity,
        *,
        now: dt.datetime,
        ttl: dt.timedelta,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = (),
    ) -> x509.Certificate:
        """Sign a leaf for ``identity`` over the CSR's key. The CSR may ask for no identity or for
        exactly this one: anything else is refused (the caller decides who the subject is)."""
        if identity.trust_domain != self.trust_domain:
            raise CertificateRequestError(f"identity {identity} is outside trust domain {self.trust_domain}")
        asked = requested_identity(csr)
        if asked is not None and asked != identity:
            raise CertificateRequestError(f"CSR asks for {asked}, but the caller is {identity}")
        not_after = min(now + ttl, self.certificate.not_valid_after_utc)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        names += [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(a) for a in ip_addresses]
        key_usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        usages = [ID_KP_IPSEC_IKE, ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        return (
            x509.CertificateBuilder()
            .subject_name(subject_of(identity))
            .issuer_name(self.certificate.subject)
            .public_key(csr.public_key())
            .serial_number(_random_serial())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue_for_key(
        self,
        public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
        private_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
        identity: Identity,
        *,
        now: dt.datetime,
        ttl: dt.timedelta,
        dns_names: tuple[str, ...] = (),
    ) -> x509.Certificate:
        """Issue a leaf for a key held on this machine (the controller's own TLS key, admin keys)."""
        csr = make_csr(private_key, identity)
        if csr.public_key() != public_key:
            raise ValueError("public key does not match private key")
        return self.issue(csr, identity, now=now, ttl=ttl, dns_names=dns_names)


def admin_identity(trust_domain: str, name: str) -> Identity:
    return Identity(trust_domain, IdentityKind.ADMIN, name)


def controller_identity(trust_domain: str) -> Identity:
    return Identity(trust_domain, IdentityKind.CONTROLLER, "controller")


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> None:
    """Write a PEM private key readable by its owner only; the file is never world-readable,
    not even between creation and chmod."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret_file(path, pem)


def write_secret_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data``, mode 0600 from the first byte."""
    write_atomic(path, data, mode=0o600)


def _random_serial() -> int:
    # 128 random bits: at most 17 DER octets, within RFC 5280's 20 (section 4.1.2.2); never zero.
    return secrets.randbits(128) or 1
