"""Key-log export for troubleshooting: Wireshark's IKEv2 and ESP decryption tables, written as the
SAs come and go. Off unless the operator asks for it; the files are created mode 0600.

Two files in the chosen directory, named as Wireshark names its UAT files, so that the
directory can serve as (or be copied into) a Wireshark profile:

* ``ikev2_decryption_table``: SPIi, SPIr, SK_ei, SK_er, encryption, SK_ai, SK_ar, integrity;
* ``esp_sa``: protocol, source, destination, SPI, encryption, key, authentication, key (one row
  per direction of each CHILD SA).

Each row is also a valid ``tshark -o uat:TABLE:ROW`` value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from trellis.agent.ike.constants import EncrId
from trellis.agent.ike.events import ChildSaInstalled, ChildSaParams, ChildSaRekeyed, Event

IKEV2_TABLE = "ikev2_decryption_table"
ESP_TABLE = "esp_sa"
KEY_FILE_MODE = 0o600

# Wireshark's names (packet-esp.c); it has no ESP AES-GMAC, so those SAs get no row.
WIRESHARK_ESP_ENCRYPTION: Mapping[EncrId, str] = MappingProxyType(
    {
        EncrId.AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
        EncrId.CHACHA20_POLY1305: "ChaCha20 with Poly1305 [RFC7634]",
    }
)
WIRESHARK_ESP_NO_AUTH = "NULL"


def esp_sa_rows(child: ChildSaParams) -> list[str]:
    """The two esp_sa rows (inbound, outbound) of a CHILD SA, or none if Wireshark cannot
    decrypt its suite."""
    name = WIRESHARK_ESP_ENCRYPTION.get(child.suite.encr)
    if name is None:
        return []
    local, remote = child.local[0], child.remote[0]
    family = "IPv6" if ":" in local else "IPv4"
    rows = []
    for source, destination, spi, key in (
        (remote, local, child.inbound_spi, child.inbound_key),
        (local, remote, child.outbound_spi, child.outbound_key),
    ):
        cells = (
            family,
            source,
            destination,
            f"0x{spi.hex()}",
            name,
            f"0x{key.hex()}",
            WIRESHARK_ESP_NO_AUTH,
            "",
        )
        rows.append(",".join(f'"{cell}"' for cell in cells))
    return rows


def _append_secret(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, KEY_FILE_MODE)
    try:
        os.fchmod(fd, KEY_FILE_MODE)  # also tighten a file that existed with a wider mode
        os.write(fd, (line + "\n").encode("ascii"))
    finally:
        os.close(fd)


class KeyLog:
    """Appends rows to the two tables in ``directory`` (created 0700 if missing)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def ike_row(self, row: str) -> None:
        """For ``IkeEngine(keylog=...)``: one ikev2_decryption_table row per IKE SA."""
        _append_secret(self.directory / IKEV2_TABLE, row)

    def event(self, event: Event) -> None:
        """Feed every engine event; CHILD SA installs become esp_sa rows."""
        if isinstance(event, ChildSaInstalled | ChildSaRekeyed):
            for row in esp_sa_rows(event.child):
                _append_secret(self.directory / ESP_TABLE, row)
