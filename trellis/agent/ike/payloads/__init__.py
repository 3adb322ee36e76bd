"""IKEv2 payloads (RFC 7296 section 3, RFC 7383 section 2.5): frozen dataclasses and their
pull/push codecs over ``trellis.agent.ike.buffer.Buffer``."""

from trellis.agent.ike.payloads.chain import Payload, pull_payloads, push_payloads
from trellis.agent.ike.payloads.notify import NO_PROTOCOL, Delete, Notify
from trellis.agent.ike.payloads.sa import Proposal, SecurityAssociation, Transform, TransformAttribute
from trellis.agent.ike.payloads.simple import (
    Authentication,
    Certificate,
    CertificateRequest,
    Identification,
    IdInitiator,
    IdResponder,
    KeyExchange,
    Nonce,
    VendorId,
)
from trellis.agent.ike.payloads.sk import Encrypted, EncryptedFragment, UnknownPayload
from trellis.agent.ike.payloads.ts import (
    ANY_PROTOCOL,
    TrafficSelector,
    TrafficSelectors,
    TsInitiator,
    TsResponder,
)

__all__ = [
    "ANY_PROTOCOL",
    "NO_PROTOCOL",
    "Authentication",
    "Certificate",
    "CertificateRequest",
    "Delete",
    "Encrypted",
    "EncryptedFragment",
    "IdInitiator",
    "IdResponder",
    "Identification",
    "KeyExchange",
    "Nonce",
    "Notify",
    "Payload",
    "Proposal",
    "SecurityAssociation",
    "TrafficSelector",
    "TrafficSelectors",
    "Transform",
    "TransformAttribute",
    "TsInitiator",
    "TsResponder",
    "UnknownPayload",
    "VendorId",
    "pull_payloads",
    "push_payloads",
]
