"""Packet captures in lab namespaces and decoding with tshark, including IKEv2/ESP decryption.

tshark is the independent decoder: tests check what strongSwan or Trellis put on the wire with a
dissector nobody here wrote. Decryption keys go in as ``-o`` preferences (Wireshark UAT rows).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trellis.lab.netns import Lab, Netns
from trellis.lab.process import BackgroundProcess, LabError, run

TSHARK = "tshark"
CAPTURE_START_TIMEOUT = 10.0
# libpcap hands packets over in blocks (TPACKET_V3) when a block fills or times out; a stop
# right after the last packet of interest can lose the open block, so wait before stopping.
CAPTURE_SETTLE = 0.5
DECODE_TIMEOUT = 120.0

# Wireshark's names (packet-esp.c, packet-isakmp.c) for the algorithms strongSwan reports
# in list-sas (encr-alg, integ-alg).
ESP_ENCRYPTION = {
    "AES_GCM_16": "AES-GCM with 16 octet ICV [RFC4106]",
    "AES_GCM_12": "AES-GCM with 12 octet ICV [RFC4106]",
    "AES_GCM_8": "AES-GCM with 8 octet ICV [RFC4106]",
    "AES_CBC": "AES-CBC [RFC3602]",
    "AES_CTR": "AES-CTR [RFC3686]",
    "CHACHA20_POLY1305": "ChaCha20 with Poly1305 [RFC7634]",
    "NULL": "NULL",
}
ESP_AUTHENTICATION = {
    None: "NULL",
    "HMAC_SHA1_96": "HMAC-SHA-1-96 [RFC2404]",
    "HMAC_SHA2_256_128": "HMAC-SHA-256-128 [RFC4868]",
    "HMAC_SHA2_384_192": "HMAC-SHA-384-192 [RFC4868]",
    "HMAC_SHA2_512_256": "HMAC-SHA-512-256 [RFC4868]",
}
IKEV2_AEAD_ICV = {"AES_GCM_16": 16, "AES_GCM_12": 12, "AES_GCM_8": 8}
IKEV2_INTEGRITY = {
    None: "NONE [RFC4306]",
    "HMAC_SHA1_96": "HMAC_SHA1_96 [RFC2404]",
    "HMAC_SHA2_256_128": "HMAC_SHA2_256_128 [RFC4868]",
    "HMAC_SHA2_384_192": "HMAC_SHA2_384_192 [RFC4868]",
    "HMAC_SHA2_512_256": "HMAC_SHA2_512_256 [RFC4868]",
}


def ikev2_encryption_name(encr_alg: str, keysize: int) -> str:
    """Wireshark's IKEv2 name for a strongSwan encr-alg and key size."""
    if encr_alg in IKEV2_AEAD_ICV:
        return f"AES-GCM-{keysize} with {IKEV2_AEAD_ICV[encr_alg]} octet ICV [RFC5282]"
    if encr_alg == "AES_CBC":
        return f"AES-CBC-{keysize} [RFC3602]"
    if encr_alg == "AES_CTR":
        return f"AES-CTR-{keysize} [RFC5930]"
    raise KeyError(f"no Wireshark IKEv2 name for {encr_alg}")


@dataclass(frozen=True, slots=True)
class EspSa:
    """One row of Wireshark's ``esp_sa`` table (addresses may be ``*``)."""

    spi: int
    encryption: str
    encryption_key: bytes
    authentication: str = "NULL"
    authentication_key: bytes = b""
    src: str = "*"
    dst: str = "*"
    protocol: str = "IPv4"

    def uat_row(self) -> str:
        return _uat_row(
            self.protocol,
            self.src,
            self.dst,
            f"0x{self.spi:08x}",
            self.encryption,
            _hex(self.encryption_key),
            self.authentication,
            _hex(self.authentication_key),
        )


@dataclass(frozen=True, slots=True)
class Ikev2Sa:
    """One row of Wireshark's ``ikev2_decryption_table``."""

    spi_i: int
    spi_r: int
    sk_ei: bytes
    sk_er: bytes
    encryption: str
    sk_ai: bytes = b""
    sk_ar: bytes = b""
    integrity: str = "NONE [RFC4306]"

    def uat_row(self) -> str:
        # Byte fields of this table are hex without quotes; algorithm names are quoted strings.
        return ",".join(
            [
                f"{self.spi_i:016x}",
                f"{self.spi_r:016x}",
                self.sk_ei.hex(),
                self.sk_er.hex(),
                _uat_row(self.encryption),
                self.sk_ai.hex(),
                self.sk_ar.hex(),
                _uat_row(self.integrity),
            ]
        )


def decryption_preferences(esp: Sequence[EspSa] = (), ikev2: Sequence[Ikev2Sa] = ()) -> dict[str, list[str]]:
    """Preferences for :func:`decode` that make tshark decrypt these SAs."""
    prefs: dict[str, list[str]] = {}
    if esp:
        prefs["esp.enable_encryption_decode"] = ["TRUE"]
        prefs["uat:esp_sa"] = [sa.uat_row() for sa in esp]
    if ikev2:
        prefs["uat:ikev2_decryption_table"] = [sa.uat_row() for sa in ikev2]
    return prefs


@dataclass(frozen=True, slots=True)
class Packet:
    """The requested fields of one decoded packet; a field may occur several times (or not)."""

    fields: Mapping[str, tuple[str, ...]]

    def values(self, name: str) -> tuple[str, ...]:
        return self.fields.get(name, ())

    def first(self, name: str) -> str | None:
        values = self.values(name)
        return values[0] if values else None

    def has(self, name: str) -> bool:
        return bool(self.values(name))


def decode(
    pcap: Path,
    *,
    fields: Sequence[str],
    display_filter: str | None = None,
    preferences: Mapping[str, str | Sequence[str]] | None = None,
    decode_as: Sequence[str] = (),
    two_pass: bool = False,
) -> list[Packet]:
    """Decode ``pcap`` with tshark, returning ``fields`` (e.g. "ip.src", "esp.spi", "icmp.type")
    of each packet that matches ``display_filter``.

    ``preferences`` become ``-o NAME:VALUE`` (a list value repeats the option, as UAT rows need);
    ``decode_as`` entries become ``-d`` (e.g. "udp.port==4501,udpencap")."""
    if not fields:
        raise ValueError("ask for at least one field")
    argv = [TSHARK, "-n", "-r", str(pcap), "-T", "json"]
    for name, value in (preferences or {}).items():
        for v in [value] if isinstance(value, str) else value:
            argv += ["-o", f"{name}:{v}"]
    for rule in decode_as:
        argv += ["-d", rule]
    if two_pass:
        argv.append("-2")
    if display_filter:
        argv += ["-Y", display_filter]
    for f in fields:
        argv += ["-e", f]
    done = run(argv, timeout=DECODE_TIMEOUT)
    try:
        items = json.loads(done.stdout or "[]")
    except json.JSONDecodeError as e:
        raise LabError(f"tshark printed invalid JSON: {e}\n{done.stdout[:500]}") from e
    packets = []
    for item in items:
        layers = item.get("_source", {}).get("layers", {})
        packets.append(Packet(fields={k: tuple(str(x) for x in v) for k, v in layers.items()}))
    return packets


class Capture:
    """A running capture (tshark) on one interface of a namespace. Use :func:`start_capture`."""

    def __init__(self, process: BackgroundProcess, pcap: Path) -> None:
        self.process = process
        self.pcap = pcap

    def stop(self) -> Path:
        """Stop capturing (SIGINT, so that the file is complete) and return the pcap path."""
        if self.process.poll() is None:
            time.sleep(CAPTURE_SETTLE)
            self.process.stop(sig=signal.SIGINT)
        if not self.pcap.exists():
            raise LabError(f"capture wrote no file {self.pcap}\n{self.process.output_tail()}")
        return self.pcap

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_capture(
    lab: Lab,
    netns: Netns,
    interface: str,
    *,
    name: str | None = None,
    capture_filter: str | None = None,
    snaplen: int | None = None,
) -> Capture:
    """Capture on ``interface`` in ``netns`` to ``<workdir>/captures/NAME.pcap`` (BPF
    ``capture_filter``, e.g. "udp port 4500"); returns once tshark is capturing."""
    name = name or f"{netns.role}-{interface}"
    pcap = lab.path("captures", f"{name}.pcap")
    argv = [TSHARK, "-n", "-q", "-i", interface, "-F", "pcap", "-w", str(pcap)]
    if capture_filter:
        argv += ["-f", capture_filter]
    if snaplen:
        argv += ["-s", str(snaplen)]
    process = lab.start(netns, argv, name=f"capture-{name}")
    deadline = time.monotonic() + CAPTURE_START_TIMEOUT
    # tshark prints "Capturing on" before dumpcap has opened the interface; "Capture started"
    # comes once dumpcap writes the file, with the socket and its filter in place.
    while "Capture started" not in process.output():
        if process.poll() is not None:
            raise LabError(f"tshark exited at start\n{process.output_tail()}")
        if time.monotonic() >= deadline:
            process.stop()
            raise LabError(
                f"tshark did not start capturing in {CAPTURE_START_TIMEOUT}s\n{process.output_tail()}"
            )
        time.sleep(0.05)
    return Capture(process, pcap)


def _hex(data: bytes) -> str:
    return f"0x{data.hex()}" if data else ""


def _uat_row(*cells: str) -> str:
    for cell in cells:
        if '"' in cell or "\n" in cell:
            raise ValueError(f"UAT cell must not contain quotes or newlines: {cell!r}")
    return ",".join(f'"{cell}"' for cell in cells)
