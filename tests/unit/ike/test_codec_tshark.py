"""Our encoder checked by a decoder nobody here wrote: tshark (Wireshark's ISAKMP dissector).

Messages we encode go into a pcap as UDP/500 (or 4500) packets; tshark must see the exchange,
SPIs, payload chain, proposals, transforms, traffic selectors and notifies we meant. For SK and
SKF it decrypts with the keys we give it (its ikev2_decryption_table), verifies the AES-GCM ICV
and reassembles fragments: an independent check of RFC 5282 AAD/nonce/padding and RFC 7383.
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from tests.unit.ike.ike_codec_support import (
    KEY_I,
    KEY_R,
    AesGcm16,
    counter_ivs,
    ike_auth_request,
    ike_sa_init_request,
    tshark_fields,
    write_pcap,
)
from trellis.agent.ike.constants import PayloadType
from trellis.agent.ike.encrypted import encrypt_message
from trellis.agent.ike.fragments import encrypt_message_fragments
from trellis.agent.ike.message import Message, encode_message
from trellis.agent.ike.udp import frame_ike_for_nat_t

# Proposal (2) and Transform (3) substructures also appear in isakmp.typepayload.
SUBSTRUCTURES = {"2", "3"}
DECRYPTION = (
    f"uat:ikev2_decryption_table:0102030405060708,a1a2a3a4a5a6a7a8,{KEY_I.hex()},{KEY_R.hex()},"
    '"AES-GCM-256 with 16 octet ICV [RFC5282]",,,"NONE [RFC4306]"'
)


def payload_types(row: dict[str, list[str]]) -> list[int]:
    return [int(t) for t in row["isakmp.typepayload"] if t not in SUBSTRUCTURES]


def test_ike_sa_init_as_tshark_sees_it(tmp_path: Path) -> None:
    pcap = tmp_path / "init.pcap"
    write_pcap(pcap, [encode_message(ike_sa_init_request())])
    fields = [
        "isakmp.ispi",
        "isakmp.rspi",
        "isakmp.exchangetype",
        "isakmp.flag_i",
        "isakmp.flag_r",
        "isakmp.messageid",
        "isakmp.length",
        "isakmp.typepayload",
        "isakmp.prop.number",
        "isakmp.prop.protoid",
        "isakmp.tf.type",
        "isakmp.tf.id.encr",
        "isakmp.tf.id.prf",
        "isakmp.tf.id.dh",
        "isakmp.ike2.attr.key_length",
        "isakmp.notify.msgtype",
        "isakmp.nonce",
        "isakmp.vid_bytes",
        "_ws.malformed",
        "_ws.expert.message",
    ]
    (row,) = tshark_fields(pcap, fields)
    assert row["isakmp.ispi"] == ["0102030405060708"]
    assert row["isakmp.rspi"] == ["0000000000000000"]
    assert row["isakmp.exchangetype"] == ["34"]
    assert row["isakmp.flag_i"] == ["1"] and row["isakmp.flag_r"] == ["0"]
    assert int(row["isakmp.messageid"][0], 16) == 0
    assert row["isakmp.length"] == [str(len(encode_message(ike_sa_init_request())))]
    assert payload_types(row) == [33, 34, 40, 41, 41, 41, 41, 43]
    assert row["isakmp.prop.number"] == ["1"] and row["isakmp.prop.protoid"] == ["1"]
    assert row["isakmp.tf.type"] == ["1", "2", "4", "4"]
    assert row["isakmp.tf.id.encr"] == ["20"]
    assert row["isakmp.tf.id.prf"] == ["5"]
    assert row["isakmp.tf.id.dh"] == ["31", "19"]
    assert row["isakmp.ike2.attr.key_length"] == ["256"]
    assert row["isakmp.notify.msgtype"] == ["16388", "16389", "16430", "16431"]
    assert row["isakmp.nonce"] == [bytes(range(32, 64)).hex()]
    assert row["isakmp.vid_bytes"] == [b"trellis".hex()]
    assert row["_ws.malformed"] == [] and row["_ws.expert.message"] == []


AUTH_FIELDS = [
    "isakmp.typepayload",
    "isakmp.id.data.fqdn",
    "isakmp.cert.encoding",
    "isakmp.ike.certreq.authority",
    "isakmp.auth.method",
    "isakmp.prop.protoid",
    "isakmp.spi",
    "isakmp.tf.id.encr",
    "isakmp.tf.id.esn",
    "isakmp.ts.number",
    "isakmp.ts.type",
    "isakmp.ts.protoid",
    "isakmp.ts.start_port",
    "isakmp.ts.end_port",
    "isakmp.ts.start_ipv4",
    "isakmp.ts.end_ipv4",
    "isakmp.ts.start_ipv6",
    "isakmp.ts.end_ipv6",
    "isakmp.delete.protoid",
    "isakmp.spinum",
    "isakmp.delete.spi",
    "isakmp.notify.msgtype",
    "_ws.malformed",
    "_ws.expert.message",
]


def check_ike_auth_inner(row: dict[str, list[str]], *, outer: list[int]) -> None:
    assert payload_types(row) == [*outer, 35, 37, 38, 36, 39, 41, 33, 44, 45, 42]
    assert row["isakmp.id.data.fqdn"] == ["branch-a.example"]
    assert row["isakmp.cert.encoding"] == ["4"]
    assert row["isakmp.ike.certreq.authority"] == [bytes(20).hex(), bytes(range(20)).hex()]
    assert row["isakmp.auth.method"] == ["14"]
    assert row["isakmp.prop.protoid"] == ["3"] and row["isakmp.spi"] == ["c0ffee01"]
    assert row["isakmp.tf.id.encr"] == ["20"] and row["isakmp.tf.id.esn"] == ["0"]
    assert row["isakmp.ts.number"] == ["2", "1"]
    assert row["isakmp.ts.type"] == ["7", "8", "7"]
    assert row["isakmp.ts.protoid"] == ["0", "17", "6"]
    assert row["isakmp.ts.start_port"] == ["0", "53", "443"]
    assert row["isakmp.ts.end_port"] == ["65535", "53", "443"]
    assert row["isakmp.ts.start_ipv4"] == ["10.1.0.0", "10.2.0.1"]
    assert row["isakmp.ts.end_ipv4"] == ["10.1.0.255", "10.2.0.1"]
    assert row["isakmp.ts.start_ipv6"] == ["2001:db8::"]
    assert row["isakmp.ts.end_ipv6"] == ["2001:db8::ffff"]
    assert row["isakmp.delete.protoid"] == ["3"] and row["isakmp.spinum"] == ["2"]
    assert row["isakmp.delete.spi"] == ["11223344", "55667788"]
    assert row["isakmp.notify.msgtype"] == ["16384"]
    assert row["_ws.malformed"] == [] and row["_ws.expert.message"] == []


def test_ike_auth_payloads_in_the_clear(tmp_path: Path) -> None:
    pcap = tmp_path / "auth.pcap"
    write_pcap(pcap, [encode_message(ike_auth_request())])
    (row,) = tshark_fields(pcap, AUTH_FIELDS)
    check_ike_auth_inner(row, outer=[])


def verbose(pcap: Path, *options: str) -> str:
    command = ["tshark", "-n", "-r", str(pcap), "-V"]
    for option in options:
        command += ["-o", option]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout


def test_sk_decrypted_and_authenticated_by_tshark(tmp_path: Path) -> None:
    pcap = tmp_path / "sk.pcap"
    write_pcap(
        pcap,
        [encrypt_message(ike_auth_request(), aead=AesGcm16(KEY_I), iv=bytes.fromhex("00000000000000aa"))],
    )
    (row,) = tshark_fields(
        pcap, ["isakmp.enc.iv", "isakmp.enc.pad_length", *AUTH_FIELDS], options=[DECRYPTION]
    )
    assert row["isakmp.enc.iv"] == ["00000000000000aa"]
    assert row["isakmp.enc.pad_length"] == ["0"]
    check_ike_auth_inner(row, outer=[PayloadType.SK])
    assert "Integrity Checksum Data" in verbose(pcap, DECRYPTION)
    assert verbose(pcap, DECRYPTION).count("[correct]") == 1


def test_tampered_sk_is_flagged_by_tshark(tmp_path: Path) -> None:
    data = bytearray(encrypt_message(ike_auth_request(), aead=AesGcm16(KEY_I), iv=bytes(8)))
    data[-20] ^= 0x01
    pcap = tmp_path / "tampered.pcap"
    write_pcap(pcap, [bytes(data)])
    text = verbose(pcap, DECRYPTION)
    assert "[correct]" not in text and "incorrect" in text


def test_fragments_reassembled_and_decrypted_by_tshark(tmp_path: Path) -> None:
    ivs = counter_ivs()
    message = ike_auth_request(certificates=12)
    datagrams = encrypt_message_fragments(
        message, aead=AesGcm16(KEY_I), next_iv=lambda: next(ivs), max_message_size=1000
    )
    pcap = tmp_path / "skf.pcap"
    write_pcap(pcap, datagrams)
    rows = tshark_fields(
        pcap,
        ["isakmp.frag.number", "isakmp.frag.total", "isakmp.reassembled.length", *AUTH_FIELDS],
        options=[DECRYPTION],
    )
    assert [(r["isakmp.frag.number"], r["isakmp.frag.total"]) for r in rows] == [
        ([str(n)], [str(len(datagrams))]) for n in range(1, len(datagrams) + 1)
    ]
    last = rows[-1]
    inner_length = len(encode_message(message)) - 28
    assert last["isakmp.reassembled.length"] == [str(inner_length)]
    # tshark lists the payloads of the reassembled message under the last fragment.
    assert payload_types(last)[:1] == [PayloadType.SKF]
    assert payload_types(last)[1:].count(37) == 12
    assert verbose(pcap, DECRYPTION).count("[correct]") == len(datagrams)


def test_port_4500_framing_is_recognised(tmp_path: Path) -> None:
    pcap = tmp_path / "natt.pcap"
    write_pcap(
        pcap, [frame_ike_for_nat_t(encode_message(ike_sa_init_request())), b"\xff"], sport=4500, dport=4500
    )
    rows = tshark_fields(pcap, ["udpencap.non_esp_marker", "isakmp.exchangetype", "udpencap.nat_keepalive"])
    assert rows[0]["isakmp.exchangetype"] == ["34"]
    assert rows[0]["udpencap.non_esp_marker"] != []
    assert rows[1]["udpencap.nat_keepalive"] != []


@pytest.mark.parametrize("iv", [bytes(8), bytes.fromhex("ffffffffffffffff")])
def test_sk_with_responder_key(tmp_path: Path, iv: bytes) -> None:
    """The responder's direction uses SK_er: tshark picks it by the R flag."""
    request = ike_auth_request()
    response = Message(
        header=dataclasses.replace(request.header, initiator=False, response=True), payloads=request.payloads
    )
    pcap = tmp_path / "response.pcap"
    write_pcap(pcap, [encrypt_message(response, aead=AesGcm16(KEY_R), iv=iv)])
    (row,) = tshark_fields(pcap, AUTH_FIELDS, options=[DECRYPTION])
    check_ike_auth_inner(row, outer=[PayloadType.SK])
