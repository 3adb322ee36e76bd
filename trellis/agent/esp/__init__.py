"""Sans-IO ESP (RFC 4303) with AEAD transforms: AES-GCM (RFC 4106), AES-GMAC (RFC 4543) and
ChaCha20-Poly1305 (RFC 7634); anti-replay with ESN, lifetimes, traffic selectors, key log."""

from trellis.agent.esp.constants import Cipher, Direction, DropReason, LifetimeTrigger, Mode, NextHeader
from trellis.agent.esp.errors import (
    AuthenticationFailed,
    EspError,
    EspLocalError,
    EspPeerError,
    MalformedPacket,
    ReplayedPacket,
    SaExhausted,
    SaExpired,
    SelectorMismatch,
)
from trellis.agent.esp.sa import InboundSa, Lifetime, LifetimeEvent, OutboundSa, SaCounters, SaParams
from trellis.agent.esp.selectors import Flow, TrafficSelector, parse_flow

__all__ = [
    "AuthenticationFailed",
    "Cipher",
    "Direction",
    "DropReason",
    "EspError",
    "EspLocalError",
    "EspPeerError",
    "Flow",
    "InboundSa",
    "Lifetime",
    "LifetimeEvent",
    "LifetimeTrigger",
    "MalformedPacket",
    "Mode",
    "NextHeader",
    "OutboundSa",
    "ReplayedPacket",
    "SaCounters",
    "SaExhausted",
    "SaExpired",
    "SaParams",
    "SelectorMismatch",
    "TrafficSelector",
    "parse_flow",
]
