"""Fuzz invariant: bytes from the network either open or raise EspPeerError, never anything else.
Also the key-log format."""

from __future__ import annotations

import contextlib
import stat
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.esp.esp_support import pair, udp4
from trellis.agent.esp import Cipher, EspPeerError, InboundSa, MalformedPacket, OutboundSa, parse_flow
from trellis.agent.esp.keylog import EspKeyLog, esp_sa_options, esp_sa_row

OUT_PARAMS, IN_PARAMS = pair()
GOOD = OutboundSa(OUT_PARAMS, 0.0).seal_packet(udp4("10.1.0.5", "10.2.0.7"), 0.0)


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_random_bytes_open_or_raise_peer_error(data: bytes) -> None:
    sa = InboundSa(IN_PARAMS, 0.0)
    with contextlib.suppress(EspPeerError):
        sa.open_packet(data, 0.0)


@settings(max_examples=400)
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_mutated_packets_are_rejected_with_peer_errors(flips: list[tuple[int, int]]) -> None:
    data = bytearray(GOOD)
    for index, mask in flips:
        data[index] ^= mask
    sa = InboundSa(IN_PARAMS, 0.0)
    try:
        result = sa.open_packet(bytes(data), 0.0)
    except EspPeerError:
        return
    assert bytes(data) == GOOD and result is not None  # only an unchanged packet may pass


@settings(max_examples=400)
@given(st.binary(max_size=80))
def test_parse_flow_parses_or_raises_malformed(data: bytes) -> None:
    try:
        flow = parse_flow(data)
    except MalformedPacket:
        return
    assert flow.version in (4, 6)


def test_keylog_rows_and_permissions(tmp_path: Path) -> None:
    out, inbound = pair()
    path = tmp_path / "esp_sa"
    log = EspKeyLog(path)
    log.record(out)
    log.record(inbound)
    log.record(pair(Cipher.NULL_AUTH_AES_GMAC)[0])
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    rows = EspKeyLog(path).rows()
    assert rows[0] == (
        '"IPv4","192.0.2.1","198.51.100.1","0x00001000","AES-GCM with 16 octet ICV [RFC4106]",'
        f'"0x{out.key.hex()}","NULL",""'
    )
    assert rows[1] == rows[0]  # B's inbound view of A's outbound SA: the same packets
    assert rows[2].startswith("# ")
    options = esp_sa_options(rows)
    assert options.count("-o") == 3 and options[1] == "esp.enable_encryption_decode:TRUE"
    assert esp_sa_row(pair(Cipher.CHACHA20_POLY1305)[0]).count('"ChaCha20 with Poly1305 [RFC7634]"') == 1
