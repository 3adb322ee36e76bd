"""Checking a peer's certificate chain, and the CERTREQ helpers (RFC 7296 sections 3.6, 3.7).

``verify_peer_certificate`` builds the path itself, leaf to a trust anchor of our CA bundle, with
``verify_directly_issued_by`` at each step: a short fixed walk that checks exactly what IKE needs
and says precisely why it refused. Every refusal is AuthenticationFailed with one of the REASON_*
prefixes below, so callers and tests can tell them apart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from trellis.agent.ike.constants import IdType
from trellis.agent.ike.crypto.auth import VerifyingKey
from trellis.agent.ike.crypto.names import fold, normal_name, parse_der_name, parse_dn_string
from trellis.agent.ike.errors import AuthenticationFailed, MalformedMessage

MAX_CHAIN_LENGTH = 4  # CERT payloads we accept: the leaf and up to three intermediates
MAX_CERTIFICATE_LENGTH = 16384  # one DER certificate; ours are ~700 bytes
CERTREQ_HASH_LENGTH = 20  # SHA-1 of a SubjectPublicKeyInfo (RFC 7296 section 3.7)
MAX_CERTREQ_AUTHORITIES = 64
SPIFFE_SCHEME = "spiffe://"
_SUPPORTED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)

REASON_MALFORMED = "malformed certificate"
REASON_CHAIN_TOO_LONG = "certificate chain too long"
REASON_UNTRUSTED = "chain does not verify to a trusted CA"
REASON_EXPIRED = "certificate expired"
REASON_NOT_YET_VALID = "certificate not yet valid"
REASON_KEY_USAGE = "keyUsage forbids signing"
REASON_UNSUPPORTED_KEY = "unsupported public key"
REASON_ID_MISMATCH = "ID payload does not match the certificate"
REASON_UNEXPECTED_IDENTITY = "not the expected identity"
REASON_REVOKED = "certificate revoked"

# (identity URI or None, serial as lowercase hex) -> revoked?
RevocationCheck = Callable[[str | None, str], bool]


@dataclass(frozen=True, slots=True)
class VerifiedPeer:
    """What a verified CERT chain tells us about the peer."""

    identity: str | None  # the spiffe:// URI SAN, if the leaf has exactly one
    subject: str  # RFC 4514 string of the leaf's subject
    serial: str  # lowercase hex, as the controller's revocation list writes it
    not_after: dt.datetime  # earliest notAfter along the path: nothing may outlive it
    public_key: VerifyingKey  # to verify the AUTH payload with


def verify_peer_certificate(
    chain: Sequence[bytes],
    trust_anchors: Sequence[x509.Certificate],
    *,
    now: float,
    id_type: int,
    id_data: bytes,
    expected: str | None,
    is_revoked: RevocationCheck,
) -> VerifiedPeer:
    """Check the peer's CERT payloads (DER, leaf first) against our CA bundle at time ``now``
    (POSIX seconds), its ID payload and the identity we expect (a spiffe:// URI, a DN such as
    "O=example.org, OU=site, CN=branch-a", or an FQDN; None: any identity the CA vouches for)."""
    if not chain:
        raise AuthenticationFailed(f"{REASON_MALFORMED}: no certificate")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise AuthenticationFailed(f"{REASON_CHAIN_TOO_LONG}: {len(chain)} > {MAX_CHAIN_LENGTH}")
    certificates = [_load(der, index) for index, der in enumerate(chain)]
    leaf = certificates[0]
    path = _build_path(leaf, certificates[1:], trust_anchors)

    when = dt.datetime.fromtimestamp(now, dt.UTC)
    for position, certificate in enumerate(path):
        role = "leaf" if position == 0 else f"CA {certificate.subject.rfc4514_string()}"
        if when < certificate.not_valid_before_utc:
            raise AuthenticationFailed(
                f"{REASON_NOT_YET_VALID}: {role} until {certificate.not_valid_before_utc}"
            )
        if when > certificate.not_valid_after_utc:
            raise AuthenticationFailed(f"{REASON_EXPIRED}: {role} at {certificate.not_valid_after_utc}")

    extensions = _extensions(leaf)
    key_usage = _extension(extensions, x509.KeyUsage)
    if key_usage is not None and not (key_usage.digital_signature or key_usage.content_commitment):
        raise AuthenticationFailed(f"{REASON_KEY_USAGE}: neither digitalSignature nor nonRepudiation")
    public_key = _signing_key(leaf)

    san = _extension(extensions, x509.SubjectAlternativeName)
    _check_id_payload(leaf, san, id_type, id_data)
    identity = _spiffe_identity(san)
    if expected is not None:
        _check_expected(leaf, san, identity, expected)

    serial = format(leaf.serial_number, "x")
    if is_revoked(identity, serial):
        raise AuthenticationFailed(f"{REASON_REVOKED}: serial {serial}")
    return VerifiedPeer(
        identity=identity,
        subject=leaf.subject.rfc4514_string(),
        serial=serial,
        not_after=min(c.not_valid_after_utc for c in path),
        public_key=public_key,
    )


def _load(der: bytes, index: int) -> x509.Certificate:
    if len(der) > MAX_CERTIFICATE_LENGTH:
        raise AuthenticationFailed(
            f"{REASON_MALFORMED}: certificate {index} larger than {MAX_CERTIFICATE_LENGTH}"
        )
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise AuthenticationFailed(f"{REASON_MALFORMED}: certificate {index} is not DER X.509") from None


def _extensions(certificate: x509.Certificate) -> x509.Extensions:
    # cryptography parses extensions lazily: malformed ones surface here, not at load time.
    try:
        return certificate.extensions
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as e:
        raise AuthenticationFailed(f"{REASON_MALFORMED}: bad extensions ({e})") from None


def _extension(extensions: x509.Extensions, kind: type[_Ext]) -> _Ext | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _build_path(
    leaf: x509.Certificate, intermediates: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]
) -> list[x509.Certificate]:
    """leaf, intermediates..., anchor: each certificate signed by the next, each issuer a CA
    whose pathLenConstraint allows the CAs below it. At most MAX_CHAIN_LENGTH steps."""
    path = [leaf]
    for _ in range(MAX_CHAIN_LENGTH):
        current = path[-1]
        cas_below = len(path) - 1
        anchor = next((a for a in anchors if _issued(current, a, cas_below)), None)
        if anchor is not None:
            path.append(anchor)
            return path
        step = next((c for c in intermediates if c not in path and _issued(current, c, cas_below)), None)
        if step is None:
            raise AuthenticationFailed(
                f"{REASON_UNTRUSTED}: no trusted issuer for {current.subject.rfc4514_string()}"
            )
        path.append(step)
    raise AuthenticationFailed(f"{REASON_CHAIN_TOO_LONG}: no trust anchor within {MAX_CHAIN_LENGTH} steps")


def _issued(certificate: x509.Certificate, issuer: x509.Certificate, cas_below: int) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        issuer_extensions = issuer.extensions
        certificate.verify_directly_issued_by(issuer)
    except (
        ValueError,
        TypeError,
        InvalidSignature,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ):
        return False
    constraints = _extension(issuer_extensions, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        return False
    if constraints.path_length is not None and cas_below > constraints.path_length:
        return False
    key_usage = _extension(issuer_extensions, x509.KeyUsage)
    return key_usage is None or key_usage.key_cert_sign


def _signing_key(leaf: x509.Certificate) -> VerifyingKey:
    try:
        key = leaf.public_key()
    except (ValueError, TypeError):
        raise AuthenticationFailed(f"{REASON_UNSUPPORTED_KEY}: unreadable") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _SUPPORTED_CURVES):
        return key
    detail = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
    raise AuthenticationFailed(f"{REASON_UNSUPPORTED_KEY}: {detail}")


def _check_id_payload(
    leaf: x509.Certificate, san: x509.SubjectAlternativeName | None, id_type: int, id_data: bytes
) -> None:
    """RFC 7296 section 3.5 / RFC 4945 section 3.1: the ID must be named by the certificate."""
    if id_type == IdType.ID_DER_ASN1_DN:
        if id_data == leaf.subject.public_bytes():
            return
        try:
            matches = parse_der_name(id_data) == normal_name(leaf.subject)
        except ValueError:
            raise AuthenticationFailed(f"{REASON_ID_MISMATCH}: ID_DER_ASN1_DN is not a DER Name") from None
        if not matches:
            raise AuthenticationFailed(f"{REASON_ID_MISMATCH}: DN is not the certificate subject")
        return
    if id_type == IdType.ID_FQDN:
        fqdn = _ascii(id_data)
        if fqdn is None or not _has_dns_name(san, fqdn):
            raise AuthenticationFailed(f"{REASON_ID_MISMATCH}: ID_FQDN is not a DNS name of the certificate")
        return
    if id_type == IdType.ID_RFC822_ADDR:
        address = _ascii(id_data)
        emails = [] if san is None else san.get_values_for_type(x509.RFC822Name)
        if address is None or fold(address) not in {fold(e) for e in emails}:
            raise AuthenticationFailed(
                f"{REASON_ID_MISMATCH}: ID_RFC822_ADDR is not an email of the certificate"
            )
        return
    if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
        length = 4 if id_type == IdType.ID_IPV4_ADDR else 16
        addresses = [] if san is None else san.get_values_for_type(x509.IPAddress)
        if len(id_data) != length or ipaddress.ip_address(id_data) not in addresses:
            raise AuthenticationFailed(f"{REASON_ID_MISMATCH}: address is not an IP of the certificate")
        return
    raise AuthenticationFailed(f"{REASON_ID_MISMATCH}: unsupported ID type {id_type}")


def _ascii(data: bytes) -> str | None:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return None


def _has_dns_name(san: x509.SubjectAlternativeName | None, fqdn: str) -> bool:
    if san is None:
        return False
    wanted = fqdn.rstrip(".").casefold()
    return any(name.rstrip(".").casefold() == wanted for name in san.get_values_for_type(x509.DNSName))


def _spiffe_identity(san: x509.SubjectAlternativeName | None) -> str | None:
    if san is None:
        return None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(SPIFFE_SCHEME)]
    return uris[0] if len(uris) == 1 else None


def _check_expected(
    leaf: x509.Certificate, san: x509.SubjectAlternativeName | None, identity: str | None, expected: str
) -> None:
    if expected.startswith(SPIFFE_SCHEME):
        if identity != expected:
            raise AuthenticationFailed(
                f"{REASON_UNEXPECTED_IDENTITY}: wanted {expected}, certificate is {identity}"
            )
        return
    if "=" in expected:
        try:
            wanted = parse_dn_string(expected)
        except ValueError as e:
            raise AuthenticationFailed(
                f"{REASON_UNEXPECTED_IDENTITY}: cannot read {expected!r}: {e}"
            ) from None
        subject = normal_name(leaf.subject)
        if wanted not in (subject, subject[::-1]):
            actual = leaf.subject.rfc4514_string()
            raise AuthenticationFailed(
                f"{REASON_UNEXPECTED_IDENTITY}: wanted {expected}, certificate is {actual}"
            )
        return
    if not _has_dns_name(san, expected):
        raise AuthenticationFailed(
            f"{REASON_UNEXPECTED_IDENTITY}: {expected} is not a DNS name of the certificate"
        )


# --- CERTREQ ---------------------------------------------------------------------------------


def ca_key_hash(ca: x509.Certificate) -> bytes:
    """SHA-1 of the CA's DER SubjectPublicKeyInfo: one entry of CERTREQ encoding 4."""
    spki = ca.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha1(spki, usedforsecurity=False).digest()


def certreq_data(cas: Iterable[x509.Certificate]) -> bytes:
    """CERTREQ Certification Authority data naming every CA we trust."""
    return b"".join(ca_key_hash(ca) for ca in cas)


def parse_certreq_data(data: bytes) -> tuple[bytes, ...]:
    """The 20-byte CA hashes of a peer's CERTREQ (encoding 4)."""
    if len(data) % CERTREQ_HASH_LENGTH:
        raise MalformedMessage("CERTREQ data is not a list of 20-byte SHA-1 hashes")
    if len(data) // CERTREQ_HASH_LENGTH > MAX_CERTREQ_AUTHORITIES:
        raise MalformedMessage(f"CERTREQ names more than {MAX_CERTREQ_AUTHORITIES} authorities")
    return tuple(data[i : i + CERTREQ_HASH_LENGTH] for i in range(0, len(data), CERTREQ_HASH_LENGTH))


def choose_certificate(
    candidates: Sequence[Sequence[x509.Certificate]], requested: Collection[bytes]
) -> Sequence[x509.Certificate] | None:
    """Which of our certification paths (each leaf first, up to its root) answers a CERTREQ:
    the first whose issuing CAs include one the peer asked for. A CERTREQ naming no CA takes our
    first path; None when nothing matches (the caller may still send its default)."""
    if not requested:
        return candidates[0] if candidates else None
    wanted = set(requested)
    for path in candidates:
        if any(ca_key_hash(ca) in wanted for ca in path[1:]):
            return path
    return None
