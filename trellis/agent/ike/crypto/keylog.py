"""Key-log lines in the format of Wireshark's IKEv2 decryption table.

One line of the ``ikev2_decryption_table`` UAT file (or the value of ``tshark -o
uat:ikev2_decryption_table:LINE``): SPIi, SPIr, SK_ei, SK_er, encryption algorithm, SK_ai, SK_ar,
integrity algorithm. Byte fields are bare hex, algorithm names quoted and spelled exactly as
Wireshark's packet-isakmp.c spells them. This module only formats: the agent writes the file
(0600) when the operator turns key logging on.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from trellis.agent.ike.constants import EncrId
from trellis.agent.ike.crypto.keys import IKE_SPI_LENGTH, IkeSaKeys
from trellis.agent.ike.crypto.suites import IkeSuite
from trellis.agent.ike.errors import IkeLocalError

# (encryption transform, key bits) -> Wireshark's name. Wireshark (up to 4.x at least) cannot
# decrypt IKEv2 ChaCha20-Poly1305, so that suite has no entry and yields no line.
WIRESHARK_IKEV2_ENCRYPTION: Mapping[tuple[EncrId, int], str] = MappingProxyType(
    {
        (EncrId.AES_GCM_16, 128): "AES-GCM-128 with 16 octet ICV [RFC5282]",
        (EncrId.AES_GCM_16, 256): "AES-GCM-256 with 16 octet ICV [RFC5282]",
    }
)
WIRESHARK_IKEV2_NO_INTEGRITY = "NONE [RFC4306]"  # AEAD suites carry no integrity transform


def wireshark_encryption_name(suite: IkeSuite) -> str | None:
    return WIRESHARK_IKEV2_ENCRYPTION.get((suite.encr, suite.key_bits))


def ikev2_decryption_table_line(spi_i: bytes, spi_r: bytes, keys: IkeSaKeys) -> str | None:
    """The table line for one IKE SA, or None if Wireshark cannot decrypt its suite."""
    if len(spi_i) != IKE_SPI_LENGTH or len(spi_r) != IKE_SPI_LENGTH:
        raise IkeLocalError("IKE SPIs are 8 bytes each")
    encryption = wireshark_encryption_name(keys.suite)
    if encryption is None:
        return None
    fields = (
        spi_i.hex(),
        spi_r.hex(),
        keys.sk_ei.hex(),
        keys.sk_er.hex(),
        f'"{encryption}"',
        keys.sk_ai.hex(),
        keys.sk_ar.hex(),
        f'"{WIRESHARK_IKEV2_NO_INTEGRITY}"',
    )
    return ",".join(fields)
