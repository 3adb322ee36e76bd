"""Distinguished names compared by meaning: DER parsing, DN strings, and garbage."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.agent.ike.crypto.names import normal_name, parse_der_name, parse_dn_string

SITE = x509.Name(
    [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "example.org"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "site"),
        x509.NameAttribute(NameOID.COMMON_NAME, "branch-a"),
    ]
)


@pytest.mark.parametrize(
    "string_type",
    [_ASN1Type.UTF8String, _ASN1Type.PrintableString, _ASN1Type.BMPString, _ASN1Type.UniversalString],
)
def test_der_names_equal_whatever_the_string_type(string_type: _ASN1Type) -> None:
    retyped = x509.Name(
        [x509.NameAttribute(attr.oid, str(attr.value), string_type) for rdn in SITE.rdns for attr in rdn]
    )
    assert retyped.public_bytes() != SITE.public_bytes() or string_type == _ASN1Type.UTF8String
    assert parse_der_name(retyped.public_bytes()) == normal_name(SITE)


def test_multi_valued_rdn_and_high_arc_oid() -> None:
    name = x509.Name(
        [
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "a"),
                    x509.NameAttribute(x509.ObjectIdentifier("1.3.6.1.4.1.311.60.2.1.3"), "DE"),
                ]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "Example")]),
        ]
    )
    parsed = parse_der_name(name.public_bytes())
    assert parsed == normal_name(name)
    assert ("1.3.6.1.4.1.311.60.2.1.3", "de") in parsed[0]


def test_dn_strings_in_either_order() -> None:
    forward = parse_dn_string("O=example.org, OU=site, CN=branch-a")
    rfc4514 = parse_dn_string("CN=branch-a,OU=site,O=example.org")
    assert forward == normal_name(SITE)
    assert rfc4514 == normal_name(SITE)[::-1]
    assert parse_dn_string(r"CN=a\, b + 2.5.4.11=Site  One") == (
        frozenset({("2.5.4.3", "a, b"), ("2.5.4.11", "site one")}),
    )


@pytest.mark.parametrize("text", ["", "CN", "=x", "XYZ=1", "CN=a,,O=b"])
def test_unreadable_dn_strings(text: str) -> None:
    with pytest.raises(ValueError):
        parse_dn_string(text)


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30",
        b"\x30\x05\x31\x03",  # truncated
        b"\x31\x00",  # a SET, not a SEQUENCE
        b"\x30\x02\x31\x00",  # empty RDN
        b"\x30\x80\x00\x00",  # indefinite length
        b"\x30\x00\x00",  # trailing bytes
        b"\x30\x07\x31\x05\x30\x03\x06\x01\x55",  # no value
        b"\x30\x09\x31\x07\x30\x05\x06\x01\x80\x0c\x00",  # OID ends mid-arc
        b"\x30\x0b\x31\x09\x30\x07\x06\x03\x55\x04\x03\x0c\x00\x00",  # junk after the value
    ],
)
def test_malformed_der_names(der: bytes) -> None:
    with pytest.raises(ValueError):
        parse_der_name(der)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120))
def test_fuzz_der_names_parse_or_value_error(data: bytes) -> None:
    try:
        parsed = parse_der_name(data)
    except ValueError:
        return
    assert all(rdn and all(oid.count(".") >= 1 for oid, _ in rdn) for rdn in parsed)
