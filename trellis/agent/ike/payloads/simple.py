"""The payloads that are a few fixed fields and opaque data: KE, Nonce, IDi/IDr, CERT, CERTREQ,
AUTH and Vendor ID (RFC 7296 sections 3.4 to 3.9 and 3.12)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypeVar

from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import AuthMethod, CertEncoding, DhId, IdType, PayloadType
from trellis.agent.ike.errors import EncodingError, MalformedMessage
from trellis.agent.ike.payloads.common import check_bound, known, pull_reserved, push_reserved
from trellis.agent.ike.payloads.limits import MAX_CERTREQ_AUTHORITIES, MAX_NONCE_BYTES, MIN_NONCE_BYTES

SHA1_LENGTH = 20
# RFC 7296 section 3.7: for these encodings the Certification Authority field is a list of
# SHA-1 hashes of trusted CAs' SubjectPublicKeyInfo.
_HASH_LIST_ENCODINGS = frozenset(
    {CertEncoding.X509_SIGNATURE, CertEncoding.HASH_AND_URL_X509_CERT, CertEncoding.HASH_AND_URL_X509_BUNDLE}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyExchange:
    payload_type: ClassVar[PayloadType] = PayloadType.KE
    group: DhId | int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Nonce:
    payload_type: ClassVar[PayloadType] = PayloadType.NONCE
    data: bytes  # MIN_NONCE_BYTES..MAX_NONCE_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class Identification:
    """IDi or IDr (RFC 7296 section 3.5); use the two subclasses."""

    payload_type: ClassVar[PayloadType]
    id_type: IdType | int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class IdInitiator(Identification):
    payload_type: ClassVar[PayloadType] = PayloadType.IDi


@dataclass(frozen=True, slots=True, kw_only=True)
class IdResponder(Identification):
    payload_type: ClassVar[PayloadType] = PayloadType.IDr


@dataclass(frozen=True, slots=True, kw_only=True)
class Certificate:
    payload_type: ClassVar[PayloadType] = PayloadType.CERT
    encoding: CertEncoding | int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateRequest:
    """CERTREQ (RFC 7296 section 3.7).

    For X.509 encodings (4, 12, 13) ``authorities`` are the 20-byte SHA-1 hashes of the trusted
    CAs' SubjectPublicKeyInfo (none at all is allowed: "send me any certificate"). For any other
    encoding the Certification Authority field is opaque: one element, or none when empty.
    """

    payload_type: ClassVar[PayloadType] = PayloadType.CERTREQ
    encoding: CertEncoding | int
    authorities: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Authentication:
    payload_type: ClassVar[PayloadType] = PayloadType.AUTH
    method: AuthMethod | int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorId:
    payload_type: ClassVar[PayloadType] = PayloadType.VENDOR_ID
    data: bytes


IdentificationT = TypeVar("IdentificationT", bound=Identification)


def pull_ke(buf: Buffer) -> KeyExchange:
    group = known(DhId, buf.pull_uint16())
    pull_reserved(buf, 2)
    return KeyExchange(group=group, data=buf.pull_rest())


def push_ke(buf: Buffer, payload: KeyExchange) -> None:
    buf.push_uint16(payload.group)
    push_reserved(buf, 2)
    buf.push_bytes(payload.data)


def pull_nonce(buf: Buffer) -> Nonce:
    if not MIN_NONCE_BYTES <= buf.remaining <= MAX_NONCE_BYTES:
        raise MalformedMessage(f"nonce of {buf.remaining} bytes, RFC 7296 2.10 allows 16..256")
    return Nonce(data=buf.pull_rest())


def push_nonce(buf: Buffer, payload: Nonce) -> None:
    if not MIN_NONCE_BYTES <= len(payload.data) <= MAX_NONCE_BYTES:
        raise EncodingError(f"nonce of {len(payload.data)} bytes, RFC 7296 2.10 allows 16..256")
    buf.push_bytes(payload.data)


def pull_identification(buf: Buffer, kind: type[IdentificationT]) -> IdentificationT:
    id_type = known(IdType, buf.pull_uint8())
    pull_reserved(buf, 3)
    return kind(id_type=id_type, data=buf.pull_rest())


def push_identification(buf: Buffer, payload: Identification) -> None:
    buf.push_uint8(payload.id_type)
    push_reserved(buf, 3)
    buf.push_bytes(payload.data)


def pull_cert(buf: Buffer) -> Certificate:
    encoding = known(CertEncoding, buf.pull_uint8())
    return Certificate(encoding=encoding, data=buf.pull_rest())


def push_cert(buf: Buffer, payload: Certificate) -> None:
    buf.push_uint8(payload.encoding)
    buf.push_bytes(payload.data)


def pull_certreq(buf: Buffer) -> CertificateRequest:
    encoding = known(CertEncoding, buf.pull_uint8())
    if encoding not in _HASH_LIST_ENCODINGS:
        raw = buf.pull_rest()
        return CertificateRequest(encoding=encoding, authorities=(raw,) if raw else ())
    if buf.remaining % SHA1_LENGTH:
        raise MalformedMessage(f"CERTREQ authorities of {buf.remaining} bytes: not a list of SHA-1 hashes")
    count = buf.remaining // SHA1_LENGTH
    check_bound(count, MAX_CERTREQ_AUTHORITIES, "CERTREQ authorities")
    return CertificateRequest(
        encoding=encoding, authorities=tuple(buf.pull_bytes(SHA1_LENGTH) for _ in range(count))
    )


def push_certreq(buf: Buffer, payload: CertificateRequest) -> None:
    buf.push_uint8(payload.encoding)
    if payload.encoding in _HASH_LIST_ENCODINGS:
        if any(len(hash_) != SHA1_LENGTH for hash_ in payload.authorities):
            raise EncodingError("CERTREQ authorities must be 20-byte SHA-1 hashes")
    elif len(payload.authorities) > 1:
        raise EncodingError(f"CERTREQ encoding {payload.encoding} carries one opaque authority field")
    for authority in payload.authorities:
        buf.push_bytes(authority)


def pull_auth(buf: Buffer) -> Authentication:
    method = known(AuthMethod, buf.pull_uint8())
    pull_reserved(buf, 3)
    return Authentication(method=method, data=buf.pull_rest())


def push_auth(buf: Buffer, payload: Authentication) -> None:
    buf.push_uint8(payload.method)
    push_reserved(buf, 3)
    buf.push_bytes(payload.data)


def pull_vendor_id(buf: Buffer) -> VendorId:
    return VendorId(data=buf.pull_rest())


def push_vendor_id(buf: Buffer, payload: VendorId) -> None:
    buf.push_bytes(payload.data)
