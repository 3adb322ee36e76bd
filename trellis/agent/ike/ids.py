"""IKE identities (the ID payload, RFC 7296 section 3.5) as configured in text and compared.

Text forms follow strongSwan: a DN in the order its DER carries it ("O=example.org, OU=site,
CN=branch-a"), an IP address, ``user@domain`` (ID_RFC822_ADDR), ``@name`` or a bare name
(ID_FQDN).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509

from trellis.agent.ike.constants import IdType
from trellis.agent.ike.crypto.names import parse_der_name
from trellis.agent.ike.errors import IkeLocalError

# strongSwan writes "O=example.org, OU=site, CN=a"; RFC 4514 has no spaces around separators.
_SEPARATOR_SPACES = re.compile(r"\s*(?<!\\)([,+])\s*")


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeId:
    id_type: IdType
    data: bytes

    def __str__(self) -> str:
        return describe_id(self.id_type, self.data)


def parse_ike_id(text: str) -> IkeId:
    """An ID from its text form; IkeLocalError when it is none of the supported forms."""
    value = text.strip()
    if not value:
        raise IkeLocalError("an identity cannot be empty")
    if "=" in value:
        compact = _SEPARATOR_SPACES.sub(lambda m: m.group(1), value)
        try:
            written = x509.Name.from_rfc4514_string(compact)
        except ValueError as e:
            raise IkeLocalError(f"{value!r} is not a distinguished name: {e}") from None
        # from_rfc4514_string reads RFC 4514's last-RDN-first order; strongSwan writes DNs in
        # DER order, so undo the reversal.
        der_order = x509.Name(list(reversed(written.rdns)))
        return IkeId(id_type=IdType.ID_DER_ASN1_DN, data=der_order.public_bytes())
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        kind = IdType.ID_IPV4_ADDR if address.version == 4 else IdType.ID_IPV6_ADDR
        return IkeId(id_type=kind, data=address.packed)
    if value.startswith("@"):
        value = value[1:]
        if not value:
            raise IkeLocalError("'@' must be followed by a name")
        return IkeId(id_type=IdType.ID_FQDN, data=value.encode("ascii", "strict"))
    if "://" in value:
        raise IkeLocalError(f"{value!r}: URIs cannot be sent as an IKE ID; use the certificate's DN")
    kind = IdType.ID_RFC822_ADDR if "@" in value else IdType.ID_FQDN
    try:
        return IkeId(id_type=kind, data=value.encode("ascii"))
    except UnicodeEncodeError:
        raise IkeLocalError(f"{value!r} is not ASCII") from None


def same_id(expected: IkeId, id_type: int, data: bytes) -> bool:
    """Whether an ID payload names ``expected``: DNs by meaning (string types and case aside),
    names case-insensitively, addresses exactly."""
    if id_type != expected.id_type:
        return False
    if id_type == IdType.ID_DER_ASN1_DN:
        try:
            return parse_der_name(data) == parse_der_name(expected.data)
        except ValueError:
            return False
    if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
        return data.rstrip(b".").lower() == expected.data.rstrip(b".").lower()
    return data == expected.data


def describe_id(id_type: int, data: bytes) -> str:
    """A readable form of an ID payload for events and logs (never raises)."""
    try:
        if id_type == IdType.ID_DER_ASN1_DN:
            return _dn_text(data)
        if id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            return str(ipaddress.ip_address(data))
        if id_type in (IdType.ID_FQDN, IdType.ID_RFC822_ADDR):
            return data.decode("ascii")
    except ValueError:
        pass
    return f"id-type-{id_type}:{data.hex()}"


def _dn_text(data: bytes) -> str:
    """DER Name -> "O=..., OU=..., CN=..." in DER order, via the bounded parser of names.py
    (values come out case-folded: good enough to read, not to compare)."""
    rdns = parse_der_name(data)
    short = {"2.5.4.3": "CN", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C", "2.5.4.7": "L"}
    return ", ".join("+".join(f"{short.get(oid, oid)}={value}" for oid, value in sorted(rdn)) for rdn in rdns)
