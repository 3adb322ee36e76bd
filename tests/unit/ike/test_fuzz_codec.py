"""Fuzzing the codec: whatever bytes a peer sends either decode or raise an ``IkePeerError``
subclass, never any other exception. Inputs are random bytes, random payload chains behind a
valid header, mutations of valid messages, and random plaintext under valid encryption (so the
inner decoder is reached too). What decodes must also re-encode to the same meaning."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.ike.ike_codec_strategies import messages
from tests.unit.ike.ike_codec_support import KEY_I, AesGcm16, counter_ivs, ike_auth_request
from trellis.agent.ike.buffer import Buffer
from trellis.agent.ike.constants import PayloadType
from trellis.agent.ike.encrypted import decrypt_message, encrypt_message
from trellis.agent.ike.errors import IkePeerError
from trellis.agent.ike.fragments import FragmentReassembler, encrypt_message_fragments
from trellis.agent.ike.message import Message, decode_header, decode_message, encode_message, push_header
from trellis.agent.ike.udp import classify_nat_t_datagram

AEAD = AesGcm16(KEY_I)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_peer_error(decode: Callable[[bytes], object], data: bytes) -> object | None:
    try:
        return decode(data)
    except IkePeerError:
        return None


def with_true_length(data: bytes) -> bytes:
    """Make the header's Length agree with the datagram, so decoding goes past the header."""
    if len(data) < 28:
        return data
    return data[:24] + len(data).to_bytes(4, "big") + data[28:]


def assert_stable(message: object) -> None:
    """A decoded message re-encodes, and decodes again to the same thing."""
    if isinstance(message, Message):
        assert decode_message(encode_message(message)) == message


@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    decodes_or_peer_error(decode_header, data)
    assert_stable(decodes_or_peer_error(decode_message, data))
    assert_stable(decodes_or_peer_error(decode_message, with_true_length(data)))
    decodes_or_peer_error(classify_nat_t_datagram, data)


@FUZZ
@given(first_payload=st.integers(0, 255), chain=st.binary(max_size=300), exchange=st.integers(0, 255))
def test_random_payload_chain_behind_a_valid_header(first_payload: int, chain: bytes, exchange: int) -> None:
    header = bytes(8) + bytes(8) + bytes([first_payload, 0x20, exchange, 0x08]) + bytes(4)
    data = header + (28 + len(chain)).to_bytes(4, "big") + chain
    assert_stable(decodes_or_peer_error(decode_message, data))


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "set16"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if operation == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif operation == "set16" and len(data) > at + 1:
            data[at : at + 2] = draw(st.sampled_from([0, 1, 3, 4, 5, 0x7FFF, 0xFFFF])).to_bytes(2, "big")
        elif operation == "truncate":
            del data[at:]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


@FUZZ
@given(data=st.data(), message=messages())
def test_mutated_valid_messages(data: st.DataObject, message: Message) -> None:
    mutant = data.draw(mutated(encode_message(message)))
    assert_stable(decodes_or_peer_error(decode_message, mutant))
    assert_stable(decodes_or_peer_error(decode_message, with_true_length(mutant)))


@FUZZ
@given(data=st.data(), message=messages(encrypted=False))
def test_mutated_encrypted_messages(data: st.DataObject, message: Message) -> None:
    mutant = data.draw(mutated(encrypt_message(message, aead=AEAD, iv=bytes(8))))
    decodes_or_peer_error(lambda d: decrypt_message(d, aead=AEAD), with_true_length(mutant))


@FUZZ
@given(first_inner=st.integers(0, 255), content=st.binary(max_size=300), pad_length=st.integers(0, 255))
def test_random_plaintext_under_valid_encryption(first_inner: int, content: bytes, pad_length: int) -> None:
    """The ICV holds, so the inner payload decoder and the padding check see random bytes."""
    padding = bytes(min(pad_length, 4)) + bytes([pad_length])
    iv = bytes(8)
    body_length = AEAD.iv_length + len(content) + len(padding) + AEAD.icv_length
    buf = Buffer()
    push_header(buf, ike_auth_request().header, PayloadType.SK, 28 + 4 + body_length)
    buf.push_bytes(bytes([first_inner, 0]) + (4 + body_length).to_bytes(2, "big"))
    data = buf.data() + iv + AEAD.seal(iv, content + padding, buf.data())
    assert_stable(decodes_or_peer_error(lambda d: decrypt_message(d, aead=AEAD), data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), message=messages(encrypted=False), size=st.integers(120, 400))
def test_reassembler_with_mutated_and_shuffled_fragments(
    data: st.DataObject, message: Message, size: int
) -> None:
    ivs = counter_ivs()
    fragments = encrypt_message_fragments(
        message, aead=AEAD, next_iv=lambda: next(ivs), max_message_size=size
    )
    stream = data.draw(st.lists(st.sampled_from(fragments), max_size=len(fragments) + 4))
    stream += [
        data.draw(mutated(fragment))
        for fragment in data.draw(st.lists(st.sampled_from(fragments), max_size=3))
    ]
    stream = data.draw(st.permutations(stream))
    reassembler = FragmentReassembler(max_fragments=16, max_total_bytes=4000)
    for datagram in stream:
        result = decodes_or_peer_error(lambda d: reassembler.receive(d, aead=AEAD), datagram)
        if result is not None:
            assert result == message
