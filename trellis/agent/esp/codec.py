"""ESP packet layout (RFC 4303 section 2): pure functions over bytes.

    SPI (4) | Sequence Number (4) | IV (8) | payload | padding | pad length | next header | ICV (16)

``seal_esp`` and ``open_esp`` take the full 64-bit sequence number explicitly; the stateful SA
objects in ``sa.py`` choose it (counter outbound, window inference inbound).
"""

from __future__ import annotations

import struct
from functools import lru_cache

from trellis.agent.esp.constants import (
    ESP_HEADER_LENGTH,
    IV_LENGTH,
    MAX_ESP_PACKET,
    MIN_ESP_PACKET,
    PAYLOAD_ALIGNMENT,
    TRAILER_LENGTH,
)
from trellis.agent.esp.errors import MalformedPacket
from trellis.agent.esp.transforms import AeadTransform, Buffer

_HEADER = struct.Struct(">II")  # SPI, low 32 bits of the sequence number
_ESN_AAD = struct.Struct(">III")  # SPI, high 32 bits, low 32 bits (RFC 4106 section 5)
_SEQ_LOW_MASK = 0xFFFFFFFF
_MAX_PAD_LENGTH = 255


def pack_header(spi: int, seq: int) -> bytes:
    return _HEADER.pack(spi, seq & _SEQ_LOW_MASK)


def pull_header(packet: Buffer) -> tuple[int, int]:
    """SPI and the low 32 bits of the sequence number of an ESP packet."""
    if len(packet) < ESP_HEADER_LENGTH:
        raise MalformedPacket("ESP packet shorter than its header")
    spi, seq_low = _HEADER.unpack_from(packet)
    return spi, seq_low


def esp_aad(spi: int, seq: int, *, esn: bool) -> bytes:
    """The AAD of RFC 4106 section 5 / RFC 7634 section 2.1 (the ESP header, ESN-aware)."""
    if esn:
        return _ESN_AAD.pack(spi, seq >> 32, seq & _SEQ_LOW_MASK)
    return _HEADER.pack(spi, seq)


def counter_iv(seq: int) -> bytes:
    """The IV we send: the 64-bit sequence number, unique per SA key as RFC 4106 section 3.1 asks."""
    return seq.to_bytes(IV_LENGTH, "big")


@lru_cache(maxsize=1024)
def trailer(payload_length: int, next_header: int) -> bytes:
    """Default padding 1, 2, 3, ... (RFC 4303 section 2.4) to a 4-byte boundary, then the two
    trailer bytes."""
    pad = -(payload_length + TRAILER_LENGTH) % PAYLOAD_ALIGNMENT
    return bytes(range(1, pad + 1)) + bytes((pad, next_header))


_EXPECTED_PADDING = tuple(bytes(range(1, n + 1)) for n in range(_MAX_PAD_LENGTH + 1))


def strip_trailer(plaintext: bytes) -> tuple[int, bytes]:
    """Next header and payload of a decrypted ESP payload; the padding must be the default
    sequence (RFC 4303 section 2.4: 'the receiver SHOULD inspect the Padding field')."""
    if len(plaintext) < TRAILER_LENGTH:
        raise MalformedPacket("ESP payload shorter than its trailer")
    pad_length = plaintext[-2]
    end = len(plaintext) - TRAILER_LENGTH - pad_length
    if end < 0:
        raise MalformedPacket("ESP pad length exceeds the payload")
    if plaintext[end:-TRAILER_LENGTH] != _EXPECTED_PADDING[pad_length]:
        raise MalformedPacket("ESP padding is not the default 1, 2, 3, ... sequence")
    return plaintext[-1], plaintext[:end]


def seal_esp(
    transform: AeadTransform,
    *,
    spi: int,
    seq: int,
    iv: bytes,
    payload: Buffer,
    next_header: int,
    esn: bool,
) -> bytes:
    """A complete ESP packet carrying ``payload``."""
    header = _HEADER.pack(spi, seq & _SEQ_LOW_MASK)
    aad = esp_aad(spi, seq, esn=True) if esn else header
    body = transform.seal(iv, aad, bytes(payload) + trailer(len(payload), next_header))
    return header + iv + body


def open_esp(transform: AeadTransform, packet: Buffer, *, seq: int, esn: bool) -> tuple[int, bytes]:
    """Verify an ESP packet whose full sequence number is ``seq``; return (next header, payload).

    Raises MalformedPacket or AuthenticationFailed; never anything else on any input.
    """
    if not MIN_ESP_PACKET <= len(packet) <= MAX_ESP_PACKET:
        raise MalformedPacket(f"ESP packet of {len(packet)} bytes")
    spi, seq_low = _HEADER.unpack_from(packet)
    if seq_low != seq & _SEQ_LOW_MASK:
        raise MalformedPacket("sequence number does not match the header")
    aad = esp_aad(spi, seq, esn=True) if esn else bytes(packet[:ESP_HEADER_LENGTH])
    iv = bytes(packet[ESP_HEADER_LENGTH : ESP_HEADER_LENGTH + IV_LENGTH])
    plaintext = transform.open(iv, aad, packet[ESP_HEADER_LENGTH + IV_LENGTH :])
    return strip_trailer(plaintext)


def sealed_length(payload_length: int) -> int:
    """Bytes of the ESP packet that carries ``payload_length`` bytes."""
    padded = payload_length + TRAILER_LENGTH
    padded += -padded % PAYLOAD_ALIGNMENT
    return ESP_HEADER_LENGTH + IV_LENGTH + padded + AeadTransform.icv_length


def max_payload(esp_space: int) -> int:
    """The largest payload whose ESP packet fits in ``esp_space`` bytes."""
    room = esp_space - ESP_HEADER_LENGTH - IV_LENGTH - AeadTransform.icv_length
    room -= room % PAYLOAD_ALIGNMENT
    return room - TRAILER_LENGTH
