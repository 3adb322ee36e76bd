"""The Encrypted (SK, RFC 7296 section 3.14) and Encrypted Fragment (SKF, RFC 7383 section 2.5)
payloads as they stand in the clear: raw protected bodies. ``trellis.agent.ike.encrypted`` and
``trellis.agent.ike.fragments`` seal and open them.

Both are always the last payload of a message. Their Next Payload field does not chain to a
following payload but names the first payload *inside* (for SKF: in the first fragment only, 0
in the others), so it is kept as ``next_payload``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import PayloadType
from trellis.agent.ike.errors import EncodingError, InvalidFragment
from trellis.agent.ike.payloads.common import known

SKF_FIELDS_LENGTH = 4  # Fragment Number and Total Fragments, between the generic header and the IV


@dataclass(frozen=True, slots=True, kw_only=True)
class Encrypted:
    payload_type: ClassVar[PayloadType] = PayloadType.SK
    next_payload: PayloadType | int  # type of the first inner payload (0: none)
    body: bytes  # IV || ciphertext || ICV


@dataclass(frozen=True, slots=True, kw_only=True)
class EncryptedFragment:
    payload_type: ClassVar[PayloadType] = PayloadType.SKF
    fragment_number: int  # 1..total_fragments
    total_fragments: int
    next_payload: PayloadType | int  # first inner payload type in fragment 1, else 0
    body: bytes  # IV || ciphertext || ICV


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownPayload:
    """A payload we do not interpret, kept when the sender did not mark it critical (and for the
    RFC 7296 payloads we do not implement, CP and EAP, whose critical bit RFC 7296 section 2.5
    says to ignore)."""

    payload_type: int
    critical: bool = False
    body: bytes = b""


def pull_encrypted(buf: Buffer, next_payload: int) -> Encrypted:
    return Encrypted(next_payload=known(PayloadType, next_payload), body=buf.pull_rest())


def push_encrypted(buf: Buffer, payload: Encrypted) -> None:
    buf.push_bytes(payload.body)


def pull_encrypted_fragment(buf: Buffer, next_payload: int) -> EncryptedFragment:
    number = buf.pull_uint16()
    total = buf.pull_uint16()
    # RFC 7383 section 2.6: impossible numbering is discarded silently.
    if not 1 <= number <= total:
        raise InvalidFragment(f"fragment {number} of {total}")
    return EncryptedFragment(
        fragment_number=number,
        total_fragments=total,
        next_payload=known(PayloadType, next_payload),
        body=buf.pull_rest(),
    )


def push_encrypted_fragment(buf: Buffer, payload: EncryptedFragment) -> None:
    if not 1 <= payload.fragment_number <= payload.total_fragments:
        raise EncodingError(f"fragment {payload.fragment_number} of {payload.total_fragments}")
    buf.push_uint16(payload.fragment_number)
    buf.push_uint16(payload.total_fragments)
    buf.push_bytes(payload.body)
