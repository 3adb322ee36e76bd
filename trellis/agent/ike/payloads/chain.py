"""The payload chain: generic payload headers (RFC 7296 section 3.2) linking one payload to the
next, and the dispatch to each payload's codec.

Callers never set Next Payload fields: ``push_payloads`` derives them from the order of the
payloads it is given. The one field a caller does choose is SK/SKF's ``next_payload``, which
names the first payload inside the encryption.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import GENERIC_PAYLOAD_HEADER_LENGTH, PayloadType
from trellis.agent.ike.errors import EncodingError, MalformedMessage, UnsupportedCriticalPayload
from trellis.agent.ike.payloads.common import check_bound, require_eof
from trellis.agent.ike.payloads.limits import MAX_PAYLOADS
from trellis.agent.ike.payloads.notify import (
    Delete,
    Notify,
    pull_delete,
    pull_notify,
    push_delete,
    push_notify,
)
from trellis.agent.ike.payloads.sa import SecurityAssociation, pull_sa, push_sa
from trellis.agent.ike.payloads.simple import (
    Authentication,
    Certificate,
    CertificateRequest,
    IdInitiator,
    IdResponder,
    KeyExchange,
    Nonce,
    VendorId,
    pull_auth,
    pull_cert,
    pull_certreq,
    pull_identification,
    pull_ke,
    pull_nonce,
    pull_vendor_id,
    push_auth,
    push_cert,
    push_certreq,
    push_identification,
    push_ke,
    push_nonce,
    push_vendor_id,
)
from trellis.agent.ike.payloads.sk import (
    Encrypted,
    EncryptedFragment,
    UnknownPayload,
    pull_encrypted,
    pull_encrypted_fragment,
    push_encrypted,
    push_encrypted_fragment,
)
from trellis.agent.ike.payloads.ts import (
    TsInitiator,
    TsResponder,
    pull_traffic_selectors,
    push_traffic_selectors,
)

Payload = (
    SecurityAssociation
    | KeyExchange
    | IdInitiator
    | IdResponder
    | Certificate
    | CertificateRequest
    | Authentication
    | Nonce
    | Notify
    | Delete
    | VendorId
    | TsInitiator
    | TsResponder
    | Encrypted
    | EncryptedFragment
    | UnknownPayload
)
"""Every payload the codec produces or accepts."""

_CRITICAL = 0x80

_PULL: dict[int, Callable[[Buffer], Payload]] = {
    PayloadType.SA: pull_sa,
    PayloadType.KE: pull_ke,
    PayloadType.IDi: lambda buf: pull_identification(buf, IdInitiator),
    PayloadType.IDr: lambda buf: pull_identification(buf, IdResponder),
    PayloadType.CERT: pull_cert,
    PayloadType.CERTREQ: pull_certreq,
    PayloadType.AUTH: pull_auth,
    PayloadType.NONCE: pull_nonce,
    PayloadType.NOTIFY: pull_notify,
    PayloadType.DELETE: pull_delete,
    PayloadType.VENDOR_ID: pull_vendor_id,
    PayloadType.TSi: lambda buf: pull_traffic_selectors(buf, TsInitiator),
    PayloadType.TSr: lambda buf: pull_traffic_selectors(buf, TsResponder),
}
# push functions take the payload of their own class; the dispatch by class keeps that true.
_PUSH: dict[type[Any], Callable[[Buffer, Any], None]] = {
    SecurityAssociation: push_sa,
    KeyExchange: push_ke,
    IdInitiator: push_identification,
    IdResponder: push_identification,
    Certificate: push_cert,
    CertificateRequest: push_certreq,
    Authentication: push_auth,
    Nonce: push_nonce,
    Notify: push_notify,
    Delete: push_delete,
    VendorId: push_vendor_id,
    TsInitiator: push_traffic_selectors,
    TsResponder: push_traffic_selectors,
    Encrypted: push_encrypted,
    EncryptedFragment: push_encrypted_fragment,
}
# Defined by RFC 7296 yet not decoded here: their critical bit is ignored (section 2.5), they
# arrive as UnknownPayload and the state machine decides.
_DEFINED_NOT_DECODED = frozenset({PayloadType.CP, PayloadType.EAP})


def pull_payloads(buf: Buffer, first_type: int, *, allow_encrypted: bool = True) -> tuple[Payload, ...]:
    """Decode the chain starting with a payload of ``first_type`` up to the end of ``buf``.

    SK and SKF end the chain (their Next Payload points inside them); ``allow_encrypted=False``
    refuses them, for chains that are themselves the inside of an SK payload.
    """
    payloads: list[Payload] = []
    next_type = first_type
    while next_type != PayloadType.NONE:
        check_bound(len(payloads) + 1, MAX_PAYLOADS, "payloads")
        this_type = next_type
        next_type = buf.pull_uint8()
        critical = bool(buf.pull_uint8() & _CRITICAL)
        length = buf.pull_uint16()
        if length < GENERIC_PAYLOAD_HEADER_LENGTH:
            raise MalformedMessage(f"payload length {length} shorter than its header")
        body = buf.pull_buffer(length - GENERIC_PAYLOAD_HEADER_LENGTH)
        if this_type in (PayloadType.SK, PayloadType.SKF):
            if not allow_encrypted:
                raise MalformedMessage("an Encrypted payload inside an Encrypted payload")
            pull_sk = pull_encrypted if this_type == PayloadType.SK else pull_encrypted_fragment
            payloads.append(pull_sk(body, next_type))
            require_eof(buf, "the Encrypted payload, which must be the last (RFC 7296 3.14)")
            break
        pull = _PULL.get(this_type)
        if pull is not None:
            payloads.append(pull(body))
            require_eof(body, f"payload type {this_type}")
        elif critical and this_type not in _DEFINED_NOT_DECODED:
            raise UnsupportedCriticalPayload(this_type)
        else:
            payloads.append(UnknownPayload(payload_type=this_type, critical=critical, body=body.pull_rest()))
    require_eof(buf, "the last payload")
    return tuple(payloads)


def push_payloads(buf: Buffer, payloads: Sequence[Payload]) -> int:
    """Encode the chain and return the type of its first payload (for the field that points to
    it: the IKE header's Next Payload, or the SK header's)."""
    for index, payload in enumerate(payloads):
        is_last = index == len(payloads) - 1
        if isinstance(payload, Encrypted | EncryptedFragment):
            if not is_last:
                raise EncodingError("an Encrypted payload must be the last one (RFC 7296 3.14)")
            next_type = int(payload.next_payload)
        else:
            next_type = PayloadType.NONE if is_last else payloads[index + 1].payload_type
        start = len(buf)
        buf.push_uint8(next_type)
        buf.push_uint8(_CRITICAL if isinstance(payload, UnknownPayload) and payload.critical else 0)
        buf.push_uint16(0)  # length, set below once the body is written
        if isinstance(payload, UnknownPayload):
            buf.push_bytes(payload.body)
        else:
            _PUSH[type(payload)](buf, payload)
        buf.set_uint16(start + 2, len(buf) - start)
    return payloads[0].payload_type if payloads else PayloadType.NONE
