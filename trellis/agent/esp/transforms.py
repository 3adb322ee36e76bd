"""The AEAD transforms of ESP, each built once per SA.

All three take keying material that ends with a 4-byte salt and an 8-byte explicit IV per
packet; the AEAD nonce is salt || IV (RFC 4106 section 4, RFC 4543 section 3.1, RFC 7634
section 2). The ICV is 16 bytes.

- AES-GCM (RFC 4106): the AAD is the ESP header (SPI, sequence number; with ESN the 32 high
  bits sit between them, section 5), the payload and trailer are encrypted.
- ChaCha20-Poly1305 (RFC 7634): the same layout as AES-GCM.
- AES-GMAC (RFC 4543): nothing is encrypted; the ESP header, the IV and the cleartext payload
  and trailer are all authenticated (section 5), i.e. GCM with an empty plaintext.

The ``cryptography`` AEAD object is created in the constructor: one key schedule per SA, not
per packet.
"""

from __future__ import annotations

from typing import TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from trellis.agent.esp.constants import ICV_LENGTH, IV_LENGTH, SALT_LENGTH, Cipher
from trellis.agent.esp.errors import AuthenticationFailed, EspLocalError, MalformedPacket

Buffer: TypeAlias = bytes | bytearray | memoryview

AES_KEY_LENGTHS = (16, 24, 32)
CHACHA_KEY_LENGTH = 32


def keymat_length(cipher: Cipher, key_bits: int) -> int:
    """Bytes of keying material IKE must derive for ``cipher`` (RFC 7296 section 2.17)."""
    if cipher is Cipher.CHACHA20_POLY1305:
        if key_bits != 256:
            raise EspLocalError("ChaCha20-Poly1305 has a 256-bit key")
    elif key_bits // 8 not in AES_KEY_LENGTHS or key_bits % 8:
        raise EspLocalError(f"AES key length {key_bits} bits is not 128, 192 or 256")
    return key_bits // 8 + SALT_LENGTH


class AeadTransform:
    """One SA's AEAD: ``seal``/``open`` the part of an ESP packet that follows the IV."""

    cipher: Cipher
    iv_length = IV_LENGTH
    icv_length = ICV_LENGTH

    def __init__(self, cipher: Cipher, keymat: bytes) -> None:
        self.cipher = cipher
        key, self._salt = bytes(keymat[:-SALT_LENGTH]), bytes(keymat[-SALT_LENGTH:])
        if cipher is Cipher.CHACHA20_POLY1305:
            if len(key) != CHACHA_KEY_LENGTH:
                raise EspLocalError(f"ChaCha20-Poly1305 needs 36 bytes of keymat, got {len(keymat)}")
            self._aead: AESGCM | ChaCha20Poly1305 = ChaCha20Poly1305(key)
        elif cipher in (Cipher.AES_GCM_16, Cipher.NULL_AUTH_AES_GMAC):
            if len(key) not in AES_KEY_LENGTHS:
                raise EspLocalError(f"AES keymat must be 20, 28 or 36 bytes, got {len(keymat)}")
            self._aead = AESGCM(key)
        else:  # pragma: no cover - Cipher is a closed enum
            raise EspLocalError(f"unsupported cipher {cipher!r}")
        self._gmac = cipher is Cipher.NULL_AUTH_AES_GMAC

    @property
    def encrypts(self) -> bool:
        """False for GMAC, whose payload travels in clear."""
        return not self._gmac

    def seal(self, iv: bytes, aad: bytes, plaintext: Buffer) -> bytes:
        """The bytes after the IV: ciphertext || ICV (GMAC: plaintext || ICV)."""
        nonce = self._salt + iv
        if self._gmac:
            return bytes(plaintext) + self._aead.encrypt(nonce, b"", aad + iv + plaintext)
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, iv: bytes, aad: bytes, body: Buffer) -> bytes:
        """Verify and return the payload and trailer; ``body`` is everything after the IV."""
        if len(body) < ICV_LENGTH:
            raise MalformedPacket("ESP packet shorter than its ICV")
        nonce = self._salt + iv
        try:
            if self._gmac:
                payload = bytes(body[:-ICV_LENGTH])
                self._aead.decrypt(nonce, bytes(body[-ICV_LENGTH:]), aad + iv + payload)
                return payload
            return self._aead.decrypt(nonce, body, aad)
        except InvalidTag:
            raise AuthenticationFailed("ICV does not verify") from None
