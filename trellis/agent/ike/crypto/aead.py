"""The AEAD transform of the Encrypted (SK) payload.

AES-GCM with a 16-byte ICV (RFC 5282) and ChaCha20-Poly1305 (RFC 7634) build their 12-byte
nonce the same way: the 4-byte salt from the end of SK_e, then the 8-byte IV carried in the
payload. The associated data is chosen by the codec (RFC 5282 section 5.1: the IKE header and
the SK payload header); this module only seals and opens.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from trellis.agent.ike.constants import EncrId
from trellis.agent.ike.crypto.keys import IkeSaKeys
from trellis.agent.ike.crypto.suites import AEAD_ICV_LENGTH, AEAD_IV_LENGTH, AEAD_SALT_LENGTH
from trellis.agent.ike.errors import IkeLocalError, IntegrityCheckFailed

# The explicit IV is a 64-bit counter: unique per key until it wraps, which no IKE SA reaches.
MAX_IV_COUNTER = 2**64 - 1


class SkAead:
    """Seal and open SK payload contents with one direction's SK_e (key | salt).

    Matches the codec's structural protocol: ``iv_length``, ``icv_length``, ``seal`` and
    ``open``. ``next_iv()`` hands out IVs that never repeat for this key.
    """

    __slots__ = ("_aead", "_counter", "_salt", "encr")

    def __init__(self, encr: EncrId, key_and_salt: bytes) -> None:
        key, salt = key_and_salt[:-AEAD_SALT_LENGTH], key_and_salt[-AEAD_SALT_LENGTH:]
        self.encr = encr
        self._salt = salt
        self._counter = 0
        if encr == EncrId.AES_GCM_16 and len(key) in (16, 32):
            self._aead: AESGCM | ChaCha20Poly1305 = AESGCM(key)
        elif encr == EncrId.CHACHA20_POLY1305 and len(key) == 32:
            self._aead = ChaCha20Poly1305(key)
        else:
            raise IkeLocalError(f"no SK AEAD for {encr!r} with a {len(key_and_salt)}-byte key")

    @property
    def iv_length(self) -> int:
        return AEAD_IV_LENGTH

    @property
    def icv_length(self) -> int:
        return AEAD_ICV_LENGTH

    def next_iv(self) -> bytes:
        if self._counter >= MAX_IV_COUNTER:
            raise IkeLocalError("SK IV counter exhausted: rekey the IKE SA")
        self._counter += 1
        return self._counter.to_bytes(AEAD_IV_LENGTH, "big")

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """ciphertext | ICV."""
        return self._aead.encrypt(self._nonce(iv), plaintext, aad)

    def open(self, iv: bytes, ciphertext_and_icv: bytes, aad: bytes) -> bytes:
        """The plaintext, or IntegrityCheckFailed (the message is dropped, RFC 7296 section 2.21)."""
        if len(ciphertext_and_icv) < AEAD_ICV_LENGTH:
            raise IntegrityCheckFailed("SK payload shorter than its ICV")
        try:
            return self._aead.decrypt(self._nonce(iv), ciphertext_and_icv, aad)
        except InvalidTag:
            raise IntegrityCheckFailed("SK payload ICV does not verify") from None

    def _nonce(self, iv: bytes) -> bytes:
        if len(iv) != AEAD_IV_LENGTH:
            raise IkeLocalError(f"SK IV must be {AEAD_IV_LENGTH} bytes, got {len(iv)}")
        return self._salt + iv

    def __repr__(self) -> str:
        return f"SkAead(encr={self.encr.name})"


def sk_aeads(keys: IkeSaKeys, *, initiator: bool) -> tuple[SkAead, SkAead]:
    """(outbound, inbound) transforms for our side of the IKE SA: the original initiator sends
    with SK_ei and receives with SK_er (RFC 7296 section 2.14), whoever starts an exchange."""
    encr = keys.suite.encr
    mine, theirs = (keys.sk_ei, keys.sk_er) if initiator else (keys.sk_er, keys.sk_ei)
    return SkAead(encr, mine), SkAead(encr, theirs)
