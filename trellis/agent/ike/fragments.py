"""IKE message fragmentation (RFC 7383): split a protected message into Encrypted Fragment
payloads, each separately protected, and reassemble them, sans-IO and bounded.

The reassembler keeps no clock: the IKE SA drops a stale reassembly with ``reset()`` from its own
timer (RFC 7383 section 2.6 lets the receiver discard fragments of a message it gave up on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import GENERIC_PAYLOAD_HEADER_LENGTH, IKE_HEADER_LENGTH, PayloadType
from trellis.agent.ike.encrypted import Aead, encrypted_body_length, open_body, seal_body
from trellis.agent.ike.errors import EncodingError, InvalidFragment, MalformedMessage
from trellis.agent.ike.message import IkeHeader, Message, decode_message, push_header
from trellis.agent.ike.payloads import EncryptedFragment, pull_payloads, push_payloads
from trellis.agent.ike.payloads.limits import MAX_FRAGMENTS, MAX_REASSEMBLED_BYTES
from trellis.agent.ike.payloads.sk import SKF_FIELDS_LENGTH

_SKF_HEADER_LENGTH = GENERIC_PAYLOAD_HEADER_LENGTH + SKF_FIELDS_LENGTH
_MAX_TOTAL_FRAGMENTS_FIELD = 0xFFFF


def fragment_overhead(aead: Aead) -> int:
    """Bytes each fragment spends besides its share of the inner payloads."""
    return IKE_HEADER_LENGTH + _SKF_HEADER_LENGTH + encrypted_body_length(aead, 0)


def encrypt_message_fragments(
    message: Message, *, aead: Aead, next_iv: Callable[[], bytes], max_message_size: int
) -> list[bytes]:
    """``message`` (header + inner payloads) as SKF messages of at most ``max_message_size``
    bytes each (the IKE message: the UDP payload without a non-ESP marker).

    ``next_iv`` is called once per fragment, in order; every fragment has its own IV. Fragment 1
    carries the type of the first inner payload, the others 0 (RFC 7383 section 2.5). All
    fragments share the message's header (and so its message ID).
    """
    chunk_size = max_message_size - fragment_overhead(aead)
    if chunk_size < 1:
        raise EncodingError(f"{max_message_size} bytes leave no room for a fragment's content")
    chain = Buffer()
    first_inner = push_payloads(chain, message.payloads)
    content = chain.data()
    chunks = [content[offset : offset + chunk_size] for offset in range(0, len(content), chunk_size)] or [b""]
    if len(chunks) > _MAX_TOTAL_FRAGMENTS_FIELD:
        raise EncodingError(f"{len(chunks)} fragments do not fit the Total Fragments field")
    datagrams: list[bytes] = []
    for number, chunk in enumerate(chunks, start=1):
        skf_length = _SKF_HEADER_LENGTH + encrypted_body_length(aead, len(chunk))
        buf = Buffer()
        push_header(buf, message.header, PayloadType.SKF, IKE_HEADER_LENGTH + skf_length)
        buf.push_uint8(first_inner if number == 1 else PayloadType.NONE)
        buf.push_uint8(0)
        buf.push_uint16(skf_length)
        buf.push_uint16(number)
        buf.push_uint16(len(chunks))
        buf.push_bytes(seal_body(aead, iv=next_iv(), content=chunk, aad=buf.data()))
        datagrams.append(buf.data())
    return datagrams


@dataclass(frozen=True, slots=True, kw_only=True)
class DecryptedFragment:
    header: IkeHeader
    fragment_number: int
    total_fragments: int
    next_payload: int  # meaningful in fragment 1 only
    content: bytes  # this fragment's share of the inner payload bytes


def decrypt_fragment(data: bytes, *, aead: Aead) -> DecryptedFragment:
    """Authenticate and decrypt one SKF message (it must be the only payload)."""
    outer = decode_message(data)
    if len(outer.payloads) != 1 or not isinstance(outer.payloads[0], EncryptedFragment):
        raise MalformedMessage("a fragment message carries exactly one SKF payload")
    skf = outer.payloads[0]
    aad = data[: len(data) - len(skf.body)]
    return DecryptedFragment(
        header=outer.header,
        fragment_number=skf.fragment_number,
        total_fragments=skf.total_fragments,
        next_payload=int(skf.next_payload),
        content=open_body(aead, body=skf.body, aad=aad),
    )


class FragmentReassembler:
    """Collects the fragments of one message at a time (one instance per IKE SA and direction).

    ``receive`` authenticates each fragment before it touches any state, so forged fragments can
    neither evict nor poison a reassembly. It returns the whole message once every fragment is in.
    Per RFC 7383 section 2.6: duplicates are ignored; a fragment announcing more fragments than
    those held restarts the reassembly (the sender re-fragmented smaller); one announcing fewer is
    discarded (``InvalidFragment``). A fragment of another message (different header or message
    ID) replaces the reassembly in progress: the IKE SA has checked the message ID beforehand.
    """

    def __init__(
        self, *, max_fragments: int = MAX_FRAGMENTS, max_total_bytes: int = MAX_REASSEMBLED_BYTES
    ) -> None:
        self.max_fragments = max_fragments
        self.max_total_bytes = max_total_bytes
        self._header: IkeHeader | None = None
        self._total = 0
        self._chunks: dict[int, bytes] = {}
        self._bytes = 0
        self._first_inner = PayloadType.NONE.value

    @property
    def in_progress(self) -> IkeHeader | None:
        """The header of the message being reassembled, if any."""
        return self._header

    @property
    def received_count(self) -> int:
        return len(self._chunks)

    def reset(self) -> None:
        self._header = None
        self._total = 0
        self._chunks = {}
        self._bytes = 0
        self._first_inner = PayloadType.NONE.value

    def receive(self, data: bytes, *, aead: Aead) -> Message | None:
        fragment = decrypt_fragment(data, aead=aead)
        if fragment.total_fragments > self.max_fragments:
            raise InvalidFragment(
                f"{fragment.total_fragments} fragments exceed the bound {self.max_fragments}"
            )
        if fragment.header != self._header or fragment.total_fragments > self._total:
            self.reset()
            self._header = fragment.header
            self._total = fragment.total_fragments
        elif fragment.total_fragments < self._total:
            raise InvalidFragment(f"fragment announces {fragment.total_fragments} of {self._total} fragments")
        if fragment.fragment_number in self._chunks:
            return None  # a retransmitted duplicate
        if self._bytes + len(fragment.content) > self.max_total_bytes:
            self.reset()
            raise InvalidFragment(f"reassembly would exceed {self.max_total_bytes} bytes")
        self._chunks[fragment.fragment_number] = fragment.content
        self._bytes += len(fragment.content)
        if fragment.fragment_number == 1:
            self._first_inner = fragment.next_payload
        if len(self._chunks) < self._total:
            return None
        header, first_inner = fragment.header, self._first_inner
        content = b"".join(self._chunks[number] for number in range(1, self._total + 1))
        self.reset()
        payloads = pull_payloads(Buffer(content), first_inner, allow_encrypted=False)
        return Message(header=header, payloads=payloads)
