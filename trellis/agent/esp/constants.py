"""Numbers and bounds of ESP (RFC 4303) with AEAD transforms (RFC 4106, RFC 4543, RFC 7634)."""

from __future__ import annotations

import enum

ESP_HEADER_LENGTH = 8  # SPI (4) + sequence number (4), RFC 4303 section 2
IV_LENGTH = 8  # explicit IV of every AEAD transform here (RFC 4106 section 3.1, RFC 7634 section 2)
ICV_LENGTH = 16  # full-length tags only: AES-GCM-16, GMAC, Poly1305
SALT_LENGTH = 4  # the keying material ends with a 4-byte salt (RFC 4106 section 8.1)
TRAILER_LENGTH = 2  # Pad Length + Next Header
PAYLOAD_ALIGNMENT = 4  # RFC 4303 section 2.4: the ciphertext ends on a 4-byte boundary

# The smallest well-formed ESP packet: header, IV, the two trailer bytes, ICV.
MIN_ESP_PACKET = ESP_HEADER_LENGTH + IV_LENGTH + TRAILER_LENGTH + ICV_LENGTH
# Anything longer cannot come in one UDP datagram; a bound on peer input.
MAX_ESP_PACKET = 65535

# SPIs 0-255 are reserved by IANA (RFC 4303 section 2.1).
MIN_SPI = 256
MAX_SPI = 0xFFFFFFFF

MAX_SEQ_32 = 0xFFFFFFFF  # without ESN the counter must not cycle (RFC 4303 section 3.3.3)
MAX_SEQ_64 = 0xFFFFFFFFFFFFFFFF
# Ask for a rekey while this many sequence numbers remain: at a million packets per second
# that leaves the IKE daemon 16 seconds to install the next SA.
SEQ_SOFT_MARGIN = 1 << 24

DEFAULT_REPLAY_WINDOW = 1024  # the issue asks for at least 1024 (RFC 4303 section 3.4.3: >= 32)
MIN_REPLAY_WINDOW = 32
MAX_REPLAY_WINDOW = 1 << 16  # a local bound: bigger windows only cost memory


class Cipher(enum.IntEnum):
    """The ESP transforms supported, numbered as IKEv2 ENCR transform IDs (IANA)."""

    AES_GCM_16 = 20  # RFC 4106
    NULL_AUTH_AES_GMAC = 21  # RFC 4543: integrity only, the payload travels in clear
    CHACHA20_POLY1305 = 28  # RFC 7634


class Direction(enum.StrEnum):
    INBOUND = "in"
    OUTBOUND = "out"


class Mode(enum.StrEnum):
    TUNNEL = "tunnel"
    TRANSPORT = "transport"


class NextHeader(enum.IntEnum):
    """IANA protocol numbers that ESP's Next Header field carries here."""

    ICMP = 1
    IPV4 = 4  # tunnel mode, inner IPv4
    TCP = 6
    UDP = 17
    IPV6 = 41  # tunnel mode, inner IPv6
    ESP = 50
    ICMPV6 = 58
    NO_NEXT_HEADER = 59  # a dummy (traffic flow confidentiality) packet, RFC 4303 section 2.6


class DropReason(enum.StrEnum):
    """Why a packet was dropped: the keys of the data plane's drop counters."""

    AUTHENTICATION = "authentication"  # ICV did not verify
    REPLAY = "replay"  # duplicate or older than the window
    SELECTOR = "selector"  # inner packet outside the SA's traffic selectors
    POLICY = "policy"  # refused by the policy filter
    NO_SA = "no_sa"  # unknown SPI inbound, no matching SA outbound
    MALFORMED = "malformed"  # bytes that do not decode
    EXPIRED = "expired"  # hard lifetime reached
    TOO_BIG = "too_big"  # bigger than the path MTU with DF set: answered with ICMP
    DUMMY = "dummy"  # a TFC dummy packet (next header 59), discarded by design


class LifetimeTrigger(enum.StrEnum):
    BYTES = "bytes"
    PACKETS = "packets"
    TIME = "time"
    SEQUENCE = "sequence"  # sequence-number space running out
