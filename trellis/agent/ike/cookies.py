"""Stateless COOKIEs against IKE_SA_INIT floods (RFC 7296 section 2.6).

Cookie = version of the secret | SHA-256(Ni | IPi | SPIi | secret). The secret changes every
``lifetime`` seconds; a cookie made with the previous secret is still accepted, so an initiator
caught by a change does not fail.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

COOKIE_VERSION_LENGTH = 4
COOKIE_HASH_LENGTH = 32
COOKIE_LENGTH = COOKIE_VERSION_LENGTH + COOKIE_HASH_LENGTH
MAX_COOKIE_LENGTH = 64  # RFC 7296 section 2.6: "between 1 and 64 octets"
_SECRET_LENGTH = 32


class CookieJar:
    def __init__(self, *, lifetime: float) -> None:
        self.lifetime = lifetime
        self._version = 0
        self._secret = secrets.token_bytes(_SECRET_LENGTH)
        self._previous: bytes | None = None
        self._created: float | None = None

    def _rotate_if_due(self, now: float) -> None:
        if self._created is None:
            self._created = now
        elif now - self._created >= self.lifetime:
            self._previous = self._secret
            self._secret = secrets.token_bytes(_SECRET_LENGTH)
            self._version = (self._version + 1) % (1 << (8 * COOKIE_VERSION_LENGTH))
            self._created = now

    def _hash(self, secret: bytes, nonce: bytes, host: str, spi_i: bytes) -> bytes:
        return hashlib.sha256(nonce + ipaddress.ip_address(host).packed + spi_i + secret).digest()

    def make(self, *, nonce: bytes, host: str, spi_i: bytes, now: float) -> bytes:
        self._rotate_if_due(now)
        version = self._version.to_bytes(COOKIE_VERSION_LENGTH, "big")
        return version + self._hash(self._secret, nonce, host, spi_i)

    def check(self, cookie: bytes, *, nonce: bytes, host: str, spi_i: bytes, now: float) -> bool:
        self._rotate_if_due(now)
        if len(cookie) != COOKIE_LENGTH:
            return False
        version = int.from_bytes(cookie[:COOKIE_VERSION_LENGTH], "big")
        if version == self._version:
            secret: bytes | None = self._secret
        elif version == (self._version - 1) % (1 << (8 * COOKIE_VERSION_LENGTH)):
            secret = self._previous
        else:
            secret = None
        if secret is None:
            return False
        return hmac.compare_digest(cookie[COOKIE_VERSION_LENGTH:], self._hash(secret, nonce, host, spi_i))
