"""RFC 7383 fragmentation: splitting under a size limit, each fragment separately protected, and
the bounded reassembler's handling of order, duplicates, re-fragmentation and forgeries."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from tests.unit.ike.ike_codec_support import KEY_I, KEY_R, AesGcm16, counter_ivs, ike_auth_request
from trellis.agent.ike.constants import PayloadType
from trellis.agent.ike.encrypted import decrypt_message, encrypt_message
from trellis.agent.ike.errors import EncodingError, IntegrityCheckFailed, InvalidFragment, MalformedMessage
from trellis.agent.ike.fragments import (
    FragmentReassembler,
    decrypt_fragment,
    encrypt_message_fragments,
    fragment_overhead,
)
from trellis.agent.ike.message import Message, decode_message
from trellis.agent.ike.payloads import EncryptedFragment

AEAD = AesGcm16(KEY_I)
MESSAGE = ike_auth_request(certificates=12)


def fragments_of(message: Message = MESSAGE, size: int = 1000, start_iv: int = 1) -> list[bytes]:
    ivs = counter_ivs(start_iv)
    return encrypt_message_fragments(message, aead=AEAD, next_iv=lambda: next(ivs), max_message_size=size)


def reassemble(
    datagrams: list[bytes], reassembler: FragmentReassembler | None = None
) -> list[Message | None]:
    reassembler = reassembler or FragmentReassembler()
    return [reassembler.receive(datagram, aead=AEAD) for datagram in datagrams]


def test_fragments_respect_the_size_and_carry_numbering_and_first_payload() -> None:
    datagrams = fragments_of(size=1000)
    assert len(datagrams) == 4
    assert all(len(d) <= 1000 for d in datagrams)
    skfs = [decode_message(d).payloads[0] for d in datagrams]
    assert all(isinstance(skf, EncryptedFragment) for skf in skfs)
    assert [(s.fragment_number, s.total_fragments) for s in skfs if isinstance(s, EncryptedFragment)] == [
        (1, 4),
        (2, 4),
        (3, 4),
        (4, 4),
    ]
    assert [s.next_payload for s in skfs if isinstance(s, EncryptedFragment)] == [PayloadType.IDi, 0, 0, 0]
    assert {decode_message(d).header for d in datagrams} == {MESSAGE.header}
    ivs = {s.body[:8] for s in skfs if isinstance(s, EncryptedFragment)}
    assert len(ivs) == 4  # every fragment has its own IV


def test_in_order_reassembly_returns_the_message_once() -> None:
    results = reassemble(fragments_of())
    assert results[:-1] == [None, None, None]
    assert results[-1] == MESSAGE


def test_any_order_reassembles() -> None:
    datagrams = fragments_of(size=1200)
    for order in itertools.permutations(datagrams):
        assert reassemble(list(order))[-1] == MESSAGE


def test_duplicates_are_ignored() -> None:
    datagrams = fragments_of()
    reassembler = FragmentReassembler()
    sequence = [datagrams[1], datagrams[1], datagrams[0], datagrams[1], datagrams[3], datagrams[2]]
    results = reassemble(sequence, reassembler)
    assert results[:-1] == [None] * 5 and results[-1] == MESSAGE
    assert reassembler.in_progress is None


def test_refragmented_smaller_restarts_and_stale_larger_fragments_are_discarded() -> None:
    """RFC 7383 2.6: more fragments than held -> start over; fewer -> discard that fragment."""
    big = fragments_of(size=1400, start_iv=1)
    small = fragments_of(size=700, start_iv=100)
    assert len(small) > len(big)
    reassembler = FragmentReassembler()
    assert reassembler.receive(big[0], aead=AEAD) is None
    assert reassembler.receive(small[0], aead=AEAD) is None  # restart with the new total
    assert reassembler.received_count == 1
    with pytest.raises(InvalidFragment) as caught:
        reassembler.receive(big[1], aead=AEAD)
    assert caught.value.notify is None
    assert reassemble(small[1:], reassembler)[-1] == MESSAGE


def test_too_many_fragments_are_refused() -> None:
    datagrams = fragments_of(size=300)
    reassembler = FragmentReassembler(max_fragments=len(datagrams) - 1)
    with pytest.raises(InvalidFragment):
        reassembler.receive(datagrams[0], aead=AEAD)
    assert reassembler.in_progress is None


def test_total_bytes_bound() -> None:
    datagrams = fragments_of(size=1000)
    reassembler = FragmentReassembler(max_total_bytes=2000)
    reassembler.receive(datagrams[0], aead=AEAD)
    reassembler.receive(datagrams[1], aead=AEAD)
    with pytest.raises(InvalidFragment):
        reassembler.receive(datagrams[2], aead=AEAD)
    assert reassembler.in_progress is None


def test_forged_fragment_changes_nothing() -> None:
    datagrams = fragments_of()
    reassembler = FragmentReassembler()
    reassembler.receive(datagrams[0], aead=AEAD)
    forged = bytearray(datagrams[1])
    forged[-1] ^= 0xFF
    with pytest.raises(IntegrityCheckFailed):
        reassembler.receive(bytes(forged), aead=AEAD)
    other_key = encrypt_message_fragments(
        MESSAGE, aead=AesGcm16(KEY_R), next_iv=lambda: bytes(8), max_message_size=1000
    )
    with pytest.raises(IntegrityCheckFailed):
        reassembler.receive(other_key[1], aead=AEAD)
    assert reassembler.received_count == 1
    assert reassemble(datagrams[1:], reassembler)[-1] == MESSAGE


def test_fragment_of_another_message_replaces_the_one_in_progress() -> None:
    next_message = Message(
        header=dataclasses.replace(MESSAGE.header, message_id=2), payloads=MESSAGE.payloads[:3]
    )
    reassembler = FragmentReassembler()
    reassembler.receive(fragments_of()[0], aead=AEAD)
    assert reassemble(fragments_of(next_message), reassembler)[-1] == next_message


def test_single_fragment_and_empty_content() -> None:
    small = Message(header=MESSAGE.header)
    (only,) = fragments_of(small, size=200)
    assert reassemble([only]) == [small]


def test_reset_drops_a_stale_reassembly() -> None:
    datagrams = fragments_of()
    reassembler = FragmentReassembler()
    reassembler.receive(datagrams[0], aead=AEAD)
    reassembler.reset()
    assert reassembler.in_progress is None
    assert reassemble(datagrams[1:], reassembler) == [None, None, None]


def test_each_fragment_decrypts_on_its_own() -> None:
    datagrams = fragments_of()
    pieces = [decrypt_fragment(d, aead=AEAD) for d in datagrams]
    assert [p.fragment_number for p in pieces] == [1, 2, 3, 4]
    unfragmented = encrypt_message(MESSAGE, aead=AEAD, iv=bytes(8))
    assert decrypt_message(unfragmented, aead=AEAD) == MESSAGE
    with pytest.raises(MalformedMessage):
        decrypt_fragment(unfragmented, aead=AEAD)


def test_size_leaving_no_room_is_our_error() -> None:
    with pytest.raises(EncodingError):
        fragments_of(size=fragment_overhead(AEAD))


def test_random_interleavings_with_duplicates() -> None:
    rng = random.Random(7383)
    datagrams = fragments_of(size=500)
    for _ in range(20):
        sequence = datagrams + rng.choices(datagrams, k=5)
        rng.shuffle(sequence)
        reassembler = FragmentReassembler()
        results = [reassembler.receive(d, aead=AEAD) for d in sequence]
        completed = [r for r in results if r is not None]
        # Completes exactly when the last missing fragment arrives; duplicates after that start
        # a new (incomplete) reassembly rather than a second copy.
        assert completed == [MESSAGE]
