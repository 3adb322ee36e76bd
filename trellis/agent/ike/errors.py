"""Typed IKE errors.

Two families, as in h11: ``IkeLocalError`` is our own misuse (bad configuration, an API called
in the wrong state); ``IkePeerError`` is the peer's fault (bad bytes, refused proposals, failed
authentication). A peer error carries the Notify type to answer with, or ``None`` when the right
reaction is to drop the message silently (RFC 7296 section 2.21: e.g. an integrity check failure).
"""

from __future__ import annotations

from trellis.agent.ike.constants import DhId, NotifyType


class IkeError(Exception):
    """Base of every error the IKE core raises on purpose."""


class IkeLocalError(IkeError):
    """We did something wrong: configuration, or calling the core in a state that forbids it."""


class IkePeerError(IkeError):
    """The peer sent something we cannot accept.

    ``notify`` is the error Notify to send back in a response (None: drop silently).
    """

    notify: NotifyType | None = NotifyType.INVALID_SYNTAX

    def __init__(self, message: str, *, notify: NotifyType | None = None) -> None:
        super().__init__(message)
        if notify is not None:
            self.notify = notify


class MalformedMessage(IkePeerError):
    """Bytes that do not decode: bad lengths, truncation, impossible values."""

    notify = NotifyType.INVALID_SYNTAX


class IntegrityCheckFailed(IkePeerError):
    """An Encrypted payload that does not authenticate: dropped without an answer."""

    notify = None


class UnsupportedCriticalPayload(IkePeerError):
    notify = NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD

    def __init__(self, payload_type: int) -> None:
        super().__init__(f"unsupported critical payload type {payload_type}")
        self.payload_type = payload_type


class NoProposalChosen(IkePeerError):
    notify = NotifyType.NO_PROPOSAL_CHOSEN


class InvalidKePayload(IkePeerError):
    """The peer's KE group is acceptable in the proposal but not the one it sent data for."""

    notify = NotifyType.INVALID_KE_PAYLOAD

    def __init__(self, message: str, *, wanted: DhId) -> None:
        super().__init__(message)
        self.wanted = wanted


class AuthenticationFailed(IkePeerError):
    notify = NotifyType.AUTHENTICATION_FAILED

    def __init__(self, reason: str) -> None:
        super().__init__(f"authentication failed: {reason}")
        self.reason = reason


class TsUnacceptable(IkePeerError):
    notify = NotifyType.TS_UNACCEPTABLE


class InvalidSpi(IkePeerError):
    notify = NotifyType.INVALID_SPI


class InvalidMessageId(IkePeerError):
    notify = NotifyType.INVALID_MESSAGE_ID


class InvalidIkeSpi(IkePeerError):
    notify = NotifyType.INVALID_IKE_SPI


class TemporaryFailure(IkePeerError):
    notify = NotifyType.TEMPORARY_FAILURE


class ChildSaNotFound(IkePeerError):
    notify = NotifyType.CHILD_SA_NOT_FOUND


class InvalidKeyExchangeData(MalformedMessage):
    """KE payload data that is not a valid public value for its group: wrong length, a point not
    on the curve, or a value that yields the all-zero shared secret (RFC 7748 section 6.1)."""

    notify = NotifyType.INVALID_SYNTAX


class EncodingError(IkeLocalError):
    """We asked the codec to encode something the wire format cannot carry (a value out of range,
    a body too long for its length field, mismatched address families)."""


class InvalidMajorVersion(IkePeerError):
    """RFC 7296 section 3.1: a major version other than 2. Answer (if at all) with
    INVALID_MAJOR_VERSION naming version 2."""

    notify = NotifyType.INVALID_MAJOR_VERSION

    def __init__(self, major_version: int) -> None:
        super().__init__(f"unsupported IKE major version {major_version}")
        self.major_version = major_version


class InvalidFragment(IkePeerError):
    """RFC 7383 section 2.6: an Encrypted Fragment that must be discarded silently (impossible
    numbering, inconsistent with the fragments already held, or over a reassembly bound)."""

    notify = None
