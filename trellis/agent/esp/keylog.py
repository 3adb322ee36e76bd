"""ESP key-log export in Wireshark's ``esp_sa`` UAT format, off unless asked for.

Each row: protocol, source, destination, SPI, encryption algorithm, encryption key,
authentication algorithm, authentication key, quoted and comma-separated, e.g.

    "IPv4","192.0.2.1","198.51.100.1","0x00001000","AES-GCM with 16 octet ICV [RFC4106]","0x...","NULL",""

The file can serve as Wireshark's ``esp_sa`` file in its profile directory, or each row can be
passed to tshark as ``-o uat:esp_sa:<row>`` (``esp_sa_options``). The key column is the full
keying material including the salt, as Wireshark expects for AEADs. Source and destination are
the outer addresses: for inbound SAs the peer is the source.

Wireshark 4.0 decodes AES-GCM; "ChaCha20 with Poly1305 [RFC7634]" is understood by later
versions. It has no entry for ENCR_NULL_AUTH_AES_GMAC, whose payload is in clear anyway: those
SAs are written as comment lines so that the file still documents every SA.

The file holds secrets: it is created 0600 and the directory is the operator's choice.
"""

from __future__ import annotations

import os
from pathlib import Path

from trellis.agent.esp.constants import Cipher, Direction
from trellis.agent.esp.sa import SaParams

WIRESHARK_CIPHER_NAMES = {
    Cipher.AES_GCM_16: "AES-GCM with 16 octet ICV [RFC4106]",
    Cipher.CHACHA20_POLY1305: "ChaCha20 with Poly1305 [RFC7634]",
}


def esp_sa_row(params: SaParams) -> str:
    """One UAT row (without newline); a ``#`` comment for transforms Wireshark cannot decode."""
    if params.direction is Direction.OUTBOUND:
        src, dst = params.local_address, params.remote_address
    else:
        src, dst = params.remote_address, params.local_address
    protocol = "IPv4" if src.version == 4 else "IPv6"
    name = WIRESHARK_CIPHER_NAMES.get(params.cipher)
    fields = [protocol, str(src), str(dst), f"0x{params.spi:08x}"]
    if name is None:
        return (
            f"# {','.join(fields)} {params.cipher.name} key 0x{params.key.hex()} (not decodable by Wireshark)"
        )
    fields += [name, "0x" + params.key.hex(), "NULL", ""]
    return ",".join(f'"{field}"' for field in fields)


def esp_sa_options(rows: list[str]) -> list[str]:
    """tshark arguments that load the given rows and turn ESP decryption on."""
    options = ["-o", "esp.enable_encryption_decode:TRUE"]
    for row in rows:
        if not row.startswith("#"):
            options += ["-o", f"uat:esp_sa:{row}"]
    return options


class EspKeyLog:
    """Appends one row per installed SA to ``path`` (created 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # also when the file existed with looser permissions
        self._file = os.fdopen(fd, "a", encoding="ascii")

    def record(self, params: SaParams) -> None:
        self._file.write(esp_sa_row(params) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def rows(self) -> list[str]:
        """The rows written so far (for tests and for handing to tshark)."""
        return [line for line in self.path.read_text(encoding="ascii").splitlines() if line]
