"""Distinguished names as IKE peers send them, compared by meaning rather than by encoding.

A peer's ID_DER_ASN1_DN payload may encode the same name as its certificate with other string
types (strongSwan writes PrintableString where our CA wrote UTF8String), so names are reduced to
a normal form: a tuple of RDNs, each a frozenset of (OID, value folded per RFC 5280 section 7.1:
case-insensitive, inner whitespace collapsed). Only the small DER subset of a Name is parsed, with
bounded lengths; anything else raises ValueError for the caller to turn into its own error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

from cryptography import x509
from cryptography.x509.oid import NameOID

NormalName = tuple[frozenset[tuple[str, str]], ...]

MAX_DN_LENGTH = 4096  # an ID payload DN; real ones are < 200 bytes
MAX_DN_ATTRIBUTES = 64

_SEQUENCE, _SET, _OID = 0x30, 0x31, 0x06
_STRING_CODECS: Mapping[int, str] = MappingProxyType(
    {
        0x0C: "utf-8",  # UTF8String
        0x13: "ascii",  # PrintableString
        0x16: "ascii",  # IA5String
        0x14: "latin-1",  # TeletexString (treated as Latin-1, as most decoders do)
        0x1E: "utf-16-be",  # BMPString
        0x1C: "utf-32-be",  # UniversalString
    }
)
# Short names accepted in DN strings (RFC 4514 section 3 plus the common extras).
_ATTRIBUTE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "CN": NameOID.COMMON_NAME.dotted_string,
        "O": NameOID.ORGANIZATION_NAME.dotted_string,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string,
        "C": NameOID.COUNTRY_NAME.dotted_string,
        "L": NameOID.LOCALITY_NAME.dotted_string,
        "ST": NameOID.STATE_OR_PROVINCE_NAME.dotted_string,
        "STREET": NameOID.STREET_ADDRESS.dotted_string,
        "DC": NameOID.DOMAIN_COMPONENT.dotted_string,
        "UID": NameOID.USER_ID.dotted_string,
        "SERIALNUMBER": NameOID.SERIAL_NUMBER.dotted_string,
        "E": NameOID.EMAIL_ADDRESS.dotted_string,
        "EMAILADDRESS": NameOID.EMAIL_ADDRESS.dotted_string,
    }
)
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_UNESCAPED_PLUS = re.compile(r"(?<!\\)\+")
_DOTTED_OID = re.compile(r"^\d+(\.\d+)+$")


def fold(value: str) -> str:
    return " ".join(value.split()).casefold()


def normal_name(name: x509.Name) -> NormalName:
    return tuple(
        frozenset((attr.oid.dotted_string, fold(_attribute_text(attr.value))) for attr in rdn)
        for rdn in name.rdns
    )


def _attribute_text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.hex()


def parse_der_name(der: bytes) -> NormalName:
    """Normal form of a DER-encoded X.501 Name; ValueError if it is not one."""
    if len(der) > MAX_DN_LENGTH:
        raise ValueError(f"DN longer than {MAX_DN_LENGTH} bytes")
    tag, body, rest = _tlv(der)
    if tag != _SEQUENCE or rest:
        raise ValueError("a Name is one SEQUENCE")
    rdns: list[frozenset[tuple[str, str]]] = []
    count = 0
    while body:
        tag, rdn_body, body = _tlv(body)
        if tag != _SET or not rdn_body:
            raise ValueError("an RDN is a non-empty SET")
        attributes: set[tuple[str, str]] = set()
        while rdn_body:
            count += 1
            if count > MAX_DN_ATTRIBUTES:
                raise ValueError(f"more than {MAX_DN_ATTRIBUTES} attributes")
            tag, atav, rdn_body = _tlv(rdn_body)
            if tag != _SEQUENCE:
                raise ValueError("an AttributeTypeAndValue is a SEQUENCE")
            oid_tag, oid_body, atav = _tlv(atav)
            value_tag, value_body, atav = _tlv(atav)
            if oid_tag != _OID or atav:
                raise ValueError("malformed AttributeTypeAndValue")
            codec = _STRING_CODECS.get(value_tag)
            text = value_body.decode(codec) if codec else value_body.hex()  # may raise ValueError
            attributes.add((_decode_oid(oid_body), fold(text)))
        rdns.append(frozenset(attributes))
    return tuple(rdns)


def parse_dn_string(text: str) -> NormalName:
    """Normal form of a DN written as text, in the order written: "O=example.org, OU=site, CN=a"
    (strongSwan's order) or "CN=a,OU=site,O=example.org" (RFC 4514's). ValueError if unreadable."""
    rdns: list[frozenset[tuple[str, str]]] = []
    for rdn_text in _UNESCAPED_COMMA.split(text):
        attributes: set[tuple[str, str]] = set()
        for atav in _UNESCAPED_PLUS.split(rdn_text):
            key, sep, value = atav.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"not a DN attribute: {atav.strip()!r}")
            oid = _ATTRIBUTE_NAMES.get(key.upper()) or (key if _DOTTED_OID.match(key) else None)
            if oid is None:
                raise ValueError(f"unknown DN attribute type {key!r}")
            attributes.add((oid, fold(re.sub(r"\\(.)", r"\1", value.strip()))))
        rdns.append(frozenset(attributes))
    return tuple(rdns)


def _tlv(data: bytes) -> tuple[int, bytes, bytes]:
    """(tag, contents, remainder) of the first DER element; low tag numbers, definite lengths."""
    if len(data) < 2:
        raise ValueError("truncated DER element")
    tag, first = data[0], data[1]
    if tag & 0x1F == 0x1F:
        raise ValueError("high tag numbers do not occur in a Name")
    if first < 0x80:
        length, start = first, 2
    else:
        octets = first & 0x7F
        if octets == 0 or octets > 2:  # indefinite, or longer than MAX_DN_LENGTH allows
            raise ValueError("unsupported DER length")
        if len(data) < 2 + octets:
            raise ValueError("truncated DER length")
        length, start = int.from_bytes(data[2 : 2 + octets], "big"), 2 + octets
    if len(data) < start + length:
        raise ValueError("truncated DER element")
    return tag, data[start : start + length], data[start + length :]


def _decode_oid(body: bytes) -> str:
    if not body or body[-1] & 0x80:
        raise ValueError("malformed OID")
    arcs: list[int] = []
    value = 0
    for octet in body:
        value = (value << 7) | (octet & 0x7F)
        if not octet & 0x80:
            arcs.append(value)
            value = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(arc) for arc in head + arcs[1:])
