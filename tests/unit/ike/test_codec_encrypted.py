"""SK protection with an AEAD (RFC 7296 3.14, RFC 5282): layout checked against AES-GCM computed
directly with `cryptography`, tampering, padding chosen by the peer, and typed failures."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.unit.ike.ike_codec_support import KEY_I, KEY_R, SPI_I, SPI_R, AesGcm16, ike_auth_request
from trellis.agent.ike.constants import ExchangeType, NotifyType
from trellis.agent.ike.encrypted import decrypt_message, encrypt_message
from trellis.agent.ike.errors import EncodingError, IkePeerError, IntegrityCheckFailed, MalformedMessage
from trellis.agent.ike.message import IkeHeader, Message, encode_message
from trellis.agent.ike.payloads import Encrypted, EncryptedFragment, Notify

HEADER = IkeHeader(
    spi_i=SPI_I,
    spi_r=SPI_R,
    exchange=ExchangeType.INFORMATIONAL,
    initiator=True,
    response=False,
    message_id=2,
)
IV = bytes.fromhex("0000000000000002")


def raw_protected(inner: bytes, first_inner: int, plaintext_tail: bytes, key: bytes = KEY_I) -> bytes:
    """An SK message built with AESGCM directly, following RFC 5282: AAD = IKE header || SK
    header, nonce = salt || IV, plaintext = inner payloads || padding || pad length."""
    body_length = 8 + len(inner) + len(plaintext_tail) + 16
    total = 28 + 4 + body_length
    header = SPI_I + SPI_R + bytes([46, 0x20, 37, 0x08]) + (2).to_bytes(4, "big") + total.to_bytes(4, "big")
    sk_header = bytes([first_inner, 0]) + (4 + body_length).to_bytes(2, "big")
    aad = header + sk_header
    sealed = AESGCM(key[:32]).encrypt(key[32:] + IV, inner + plaintext_tail, aad)
    return aad + IV + sealed


INITIAL_CONTACT = bytes.fromhex("00000008 00004000")  # a lone Notify payload, by hand


def test_encrypt_matches_aes_gcm_computed_directly() -> None:
    message = Message(header=HEADER, payloads=(Notify(notify_type=NotifyType.INITIAL_CONTACT),))
    expected = raw_protected(INITIAL_CONTACT, 41, b"\x00")
    assert encrypt_message(message, aead=AesGcm16(KEY_I), iv=IV) == expected
    assert decrypt_message(expected, aead=AesGcm16(KEY_I)) == message


def test_padding_chosen_by_the_peer_is_accepted() -> None:
    data = raw_protected(INITIAL_CONTACT, 41, b"\xaa\xbb\xcc\x03")
    assert decrypt_message(data, aead=AesGcm16(KEY_I)).payloads == (
        Notify(notify_type=NotifyType.INITIAL_CONTACT),
    )


def test_pad_length_beyond_the_plaintext_is_malformed() -> None:
    data = raw_protected(b"", 0, b"\x05")
    with pytest.raises(MalformedMessage):
        decrypt_message(data, aead=AesGcm16(KEY_I))


def test_empty_informational_round_trips() -> None:
    message = Message(header=HEADER)
    data = encrypt_message(message, aead=AesGcm16(KEY_I), iv=IV)
    assert len(data) == 28 + 4 + 8 + 1 + 16
    assert decrypt_message(data, aead=AesGcm16(KEY_I)) == message


def test_large_message_round_trips() -> None:
    message = ike_auth_request(certificates=12)
    data = encrypt_message(message, aead=AesGcm16(KEY_R), iv=IV)
    assert decrypt_message(data, aead=AesGcm16(KEY_R)) == message


def test_every_tampered_byte_fails_integrity() -> None:
    message = Message(header=HEADER, payloads=(Notify(notify_type=NotifyType.INITIAL_CONTACT),))
    data = encrypt_message(message, aead=AesGcm16(KEY_I), iv=IV)
    # Every bit before the IV is associated data, every bit after it is authenticated: a flip
    # anywhere fails the AEAD, except in the fields the decoder reads to find the SK payload
    # (first payload type, lengths), which fail parsing first. Either way a typed peer error.
    structural = {16, 24, 25, 26, 27, 30, 31}
    for offset in range(len(data)):
        tampered = bytearray(data)
        tampered[offset] ^= 0x01
        expected = IkePeerError if offset in structural else IntegrityCheckFailed
        with pytest.raises(expected):
            decrypt_message(bytes(tampered), aead=AesGcm16(KEY_I))


def test_wrong_key_fails_integrity_and_the_error_asks_for_silence() -> None:
    data = encrypt_message(Message(header=HEADER), aead=AesGcm16(KEY_I), iv=IV)
    with pytest.raises(IntegrityCheckFailed) as caught:
        decrypt_message(data, aead=AesGcm16(KEY_R))
    assert caught.value.notify is None


def test_body_too_short_to_authenticate() -> None:
    data = encode_message(Message(header=HEADER, payloads=(Encrypted(next_payload=0, body=bytes(24)),)))
    with pytest.raises(IntegrityCheckFailed):
        decrypt_message(data, aead=AesGcm16(KEY_I))


def test_decrypt_refuses_what_is_not_one_sk_payload() -> None:
    clear = encode_message(Message(header=HEADER, payloads=(Notify(notify_type=NotifyType.INITIAL_CONTACT),)))
    with pytest.raises(MalformedMessage):
        decrypt_message(clear, aead=AesGcm16(KEY_I))
    fragment = encode_message(
        Message(
            header=HEADER,
            payloads=(
                EncryptedFragment(fragment_number=1, total_fragments=2, next_payload=41, body=bytes(40)),
            ),
        )
    )
    with pytest.raises(MalformedMessage, match="reassemble"):
        decrypt_message(fragment, aead=AesGcm16(KEY_I))
    outer_notify = encode_message(
        Message(
            header=HEADER,
            payloads=(
                Notify(notify_type=NotifyType.INITIAL_CONTACT),
                Encrypted(next_payload=0, body=bytes(40)),
            ),
        )
    )
    with pytest.raises(MalformedMessage):
        decrypt_message(outer_notify, aead=AesGcm16(KEY_I))


def test_sk_inside_sk_is_malformed() -> None:
    nested = bytes.fromhex("00000008") + bytes(4)  # an SK payload as the inner content
    data = raw_protected(nested, 46, b"\x00")
    with pytest.raises(MalformedMessage):
        decrypt_message(data, aead=AesGcm16(KEY_I))


def test_iv_of_the_wrong_length_is_our_error() -> None:
    with pytest.raises(EncodingError):
        encrypt_message(Message(header=HEADER), aead=AesGcm16(KEY_I), iv=bytes(12))
