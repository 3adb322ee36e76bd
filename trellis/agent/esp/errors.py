"""Typed ESP errors.

``EspLocalError`` is our own misuse (bad parameters, sealing on an SA that has expired).
``EspPeerError`` is bad input from the network; it carries the ``DropReason`` under which the
data plane counts it, the ESP counterpart of an IKE Notify code (ESP has no error messages on
the wire: RFC 4303 drops silently and audits).
"""

from __future__ import annotations

from trellis.agent.esp.constants import DropReason


class EspError(Exception):
    """Base of every error the ESP core raises on purpose."""


class EspLocalError(EspError):
    """We did something wrong: parameters, or using an SA past its hard limit."""


class SaExhausted(EspLocalError):
    """Sealing on an SA whose hard lifetime or sequence space is used up: rekey first."""


class EspPeerError(EspError):
    """The packet cannot be accepted; ``reason`` names the drop counter."""

    reason: DropReason = DropReason.MALFORMED


class MalformedPacket(EspPeerError):
    reason = DropReason.MALFORMED


class AuthenticationFailed(EspPeerError):
    reason = DropReason.AUTHENTICATION


class ReplayedPacket(EspPeerError):
    reason = DropReason.REPLAY


class SelectorMismatch(EspPeerError):
    reason = DropReason.SELECTOR


class SaExpired(EspPeerError):
    """A packet for an inbound SA that reached its hard lifetime."""

    reason = DropReason.EXPIRED
