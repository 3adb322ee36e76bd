"""Protected IKE messages: the Encrypted payload (SK) with an AEAD cipher (RFC 7296 section 3.14,
RFC 5282). We support no CBC+HMAC suites, so there is no separate integrity checksum.

Layout of an SK body: IV || AEAD(payloads || padding || pad length) || ICV. The associated data is
everything in the message before the IV: the IKE header and the SK generic payload header
(RFC 5282 section 5.1), for SKF also its Fragment Number and Total Fragments (RFC 7383 section 2.5).
"""

from __future__ import annotations

from typing import Protocol

from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import GENERIC_PAYLOAD_HEADER_LENGTH, IKE_HEADER_LENGTH, PayloadType
from trellis.agent.ike.errors import EncodingError, IntegrityCheckFailed, MalformedMessage
from trellis.agent.ike.message import Message, check_message_length, decode_message, push_header
from trellis.agent.ike.payloads import Encrypted, EncryptedFragment, pull_payloads, push_payloads

# AEAD ciphers have a block size of 1 for our purpose: no padding is needed (RFC 5282 section 3
# leaves the block size to the cipher; GCM and ChaCha20-Poly1305 are stream modes), so we always
# send a zero pad length and accept any pad length the peer chose.
PAD_LENGTH_FIELD = 1


class Aead(Protocol):
    """An IKE SA's AEAD key in one direction (SK_ei or SK_er with its salt).

    The nonce is the 4-byte salt from the key material followed by the 8-byte IV sent in the
    message; ``seal`` returns ciphertext || ICV, ``open`` raises ``IntegrityCheckFailed``.
    """

    @property
    def iv_length(self) -> int: ...

    @property
    def icv_length(self) -> int: ...

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes: ...

    def open(self, iv: bytes, ciphertext_and_icv: bytes, aad: bytes) -> bytes: ...


def encrypted_body_length(aead: Aead, content_length: int) -> int:
    """Bytes of IV || ciphertext || ICV for ``content_length`` bytes of inner payloads."""
    return aead.iv_length + content_length + PAD_LENGTH_FIELD + aead.icv_length


def seal_body(aead: Aead, *, iv: bytes, content: bytes, aad: bytes) -> bytes:
    """IV || AEAD(content || pad length 0) || ICV."""
    if len(iv) != aead.iv_length:
        raise EncodingError(f"IV of {len(iv)} bytes, the cipher takes {aead.iv_length}")
    return iv + aead.seal(iv, content + bytes([0]), aad)


def open_body(aead: Aead, *, body: bytes, aad: bytes) -> bytes:
    """The inner payload bytes of an SK/SKF body, padding removed."""
    if len(body) < aead.iv_length + aead.icv_length + PAD_LENGTH_FIELD:
        # Too short to be authenticated at all: dropped like any other forgery (RFC 7296 2.21.2).
        raise IntegrityCheckFailed(f"encrypted body of {len(body)} bytes is too short")
    iv = body[: aead.iv_length]
    plaintext = aead.open(iv, body[aead.iv_length :], aad)
    if len(plaintext) < PAD_LENGTH_FIELD:
        raise IntegrityCheckFailed("the cipher returned no pad length")
    pad_length = plaintext[-1]
    if pad_length + PAD_LENGTH_FIELD > len(plaintext):
        raise MalformedMessage(f"pad length {pad_length} exceeds the {len(plaintext)} decrypted bytes")
    return plaintext[: len(plaintext) - PAD_LENGTH_FIELD - pad_length]


def encrypt_message(message: Message, *, aead: Aead, iv: bytes) -> bytes:
    """The wire bytes of ``message`` with all its payloads inside one SK payload.

    ``iv`` must never repeat under one key; the caller (the IKE SA) chooses it.
    """
    chain = Buffer()
    first_inner = push_payloads(chain, message.payloads)
    content = chain.data()
    sk_length = GENERIC_PAYLOAD_HEADER_LENGTH + encrypted_body_length(aead, len(content))
    total_length = IKE_HEADER_LENGTH + sk_length
    check_message_length(total_length)
    buf = Buffer()
    push_header(buf, message.header, PayloadType.SK, total_length)
    buf.push_uint8(first_inner)
    buf.push_uint8(0)
    buf.push_uint16(sk_length)
    buf.push_bytes(seal_body(aead, iv=iv, content=content, aad=buf.data()))
    return buf.data()


def decrypt_message(data: bytes, *, aead: Aead) -> Message:
    """Authenticate and decrypt a message whose only payload is SK; return the header with the
    inner payloads. Raises ``IntegrityCheckFailed`` (drop silently) or ``MalformedMessage``.

    A message carrying SKF goes to ``fragments.FragmentReassembler`` instead.
    """
    outer = decode_message(data)
    if len(outer.payloads) != 1 or not isinstance(outer.payloads[0], Encrypted):
        kinds = [type(payload).__name__ for payload in outer.payloads]
        if outer.payloads and isinstance(outer.payloads[-1], EncryptedFragment):
            raise MalformedMessage("a fragment (SKF): reassemble it instead")
        raise MalformedMessage(f"a protected message carries exactly one SK payload, not {kinds}")
    sk = outer.payloads[0]
    aad = data[: len(data) - len(sk.body)]
    content = open_body(aead, body=sk.body, aad=aad)
    payloads = pull_payloads(Buffer(content), sk.next_payload, allow_encrypted=False)
    return Message(header=outer.header, payloads=payloads)
