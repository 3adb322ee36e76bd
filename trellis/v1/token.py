"""Join tokens: ``trellis1.<secret>.<ca-pin>``.

The secret (32 random bytes) is what the controller stores only as a hash. The CA pin is the
SHA-256 of the controller CA's SubjectPublicKeyInfo, so an agent verifies the controller on first
contact without trusting whoever answers (no trust on first use). Both parts are base64url
without padding. Shared by the controller (which makes tokens) and the agent (which reads them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass

PREFIX = "trellis1"
SECRET_BYTES = 32
PIN_BYTES = 32
MAX_TOKEN_CHARS = 200  # the encoded form is 96 characters; anything much longer is not a token


class TokenFormatError(ValueError):
    """The text is not a join token (truncated, mistyped, or from another tool)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str, size: int, what: str) -> bytes:
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenFormatError(f"join token {what} is not base64url") from None
    if len(data) != size:
        raise TokenFormatError(f"join token {what} has {len(data)} bytes, expected {size}")
    return data


@dataclass(frozen=True, slots=True)
class JoinToken:
    secret: bytes
    ca_pin: bytes

    def __repr__(self) -> str:  # never show the secret
        return f"JoinToken(id={self.token_id}, ca_pin={self.ca_pin.hex()[:16]}...)"

    @classmethod
    def generate(cls, ca_pin: bytes) -> JoinToken:
        if len(ca_pin) != PIN_BYTES:
            raise ValueError("CA pin must be a SHA-256 digest")
        return cls(secret=secrets.token_bytes(SECRET_BYTES), ca_pin=ca_pin)

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        text = text.strip()
        if len(text) > MAX_TOKEN_CHARS:
            raise TokenFormatError("join token is too long")
        parts = text.split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise TokenFormatError(f"not a Trellis join token (expected {PREFIX}.<secret>.<pin>)")
        return cls(
            secret=_unb64(parts[1], SECRET_BYTES, "secret"), ca_pin=_unb64(parts[2], PIN_BYTES, "CA pin")
        )

    def encode(self) -> str:
        return f"{PREFIX}.{_b64(self.secret)}.{_b64(self.ca_pin)}"

    @property
    def secret_hash(self) -> bytes:
        """What the controller stores and looks tokens up by."""
        return hashlib.sha256(self.secret).digest()

    @property
    def token_id(self) -> str:
        """A short public name for audit lines: a prefix of the hash, never of the secret."""
        return self.secret_hash.hex()[:12]
