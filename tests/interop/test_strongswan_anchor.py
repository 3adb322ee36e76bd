"""The strongSwan<->strongSwan anchor: a real tunnel between two lab sites, checked with ping,
strongSwan's own SA counters, and tshark decrypting the captured packets with the logged keys."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from trellis.lab.anchor import (
    CHILD,
    StrongswanPair,
    measure_lan_to_lan,
    site_dn,
    start_strongswan_site,
    strongswan_pair,
)
from trellis.lab.process import LabError
from trellis.lab.strongswan import save_keys_plugin_available
from trellis.lab.tshark import decode, decryption_preferences, start_capture
from trellis.lab.vici_text import ChildSa

pytestmark = pytest.mark.interop


@pytest.fixture
def pair() -> Iterator[StrongswanPair]:
    if os.geteuid() != 0:
        pytest.skip("strongSwan in network namespaces needs root")
    with strongswan_pair(log_keys=True, initiate=False) as p:
        yield p


def test_tunnel_carries_lan_traffic_and_tshark_decrypts_it(pair: StrongswanPair) -> None:
    topo = pair.topology
    site1, site2 = pair.sites
    capture = start_capture(topo.lab, topo.wan, topo.wan_bridge, capture_filter="udp")

    pair.initiator.initiate(CHILD)
    ike = pair.initiator.wait_for_child_sa(CHILD)
    peer_ike = pair.responder.wait_for_child_sa(CHILD)

    # The negotiated suite and identities are what the anchor promises.
    assert ike.state == "ESTABLISHED" and ike.initiator and not peer_ike.initiator
    assert (ike.encr_alg, ike.encr_keysize, ike.prf_alg, ike.dh_group) == (
        "AES_GCM_16",
        256,
        "PRF_HMAC_SHA2_256",
        "CURVE_25519",
    )
    assert ike.local_id == site_dn("trellis.test", "site1")
    assert ike.remote_id == site_dn("trellis.test", "site2")
    assert ike.remote_port == 4500  # kernel-libipsec: always UDP-encapsulated
    child = ike.child(CHILD)
    assert (child.protocol, child.mode, child.encap) == ("ESP", "TUNNEL", True)
    assert (child.encr_alg, child.encr_keysize) == ("AES_GCM_16", 256)
    assert child.local_ts == ("10.1.0.0/24",) and child.remote_ts == ("10.2.0.0/24",)
    assert (child.spi_in, child.spi_out) == (peer_ike.child(CHILD).spi_out, peer_ike.child(CHILD).spi_in)

    # LAN host to LAN host through the tunnel; strongSwan's counters grow on both sides.
    before = child
    assert site1.hosts[0].netns.ping(str(site2.hosts[0].ip), count=3)
    after = pair.initiator.list_sas()[0].child(CHILD)
    peer_after = pair.responder.list_sas()[0].child(CHILD)
    assert after.packets_out >= before.packets_out + 3 and after.bytes_out > before.bytes_out
    assert after.packets_in >= before.packets_in + 3 and after.bytes_in > before.bytes_in
    assert peer_after.packets_in >= 3 and peer_after.packets_out >= 3
    pcap = capture.stop()

    # Keys: save-keys is not in Debian's strongSwan, so they come from charon's level-4 log.
    # Both peers' logs must yield the same SAs (each from its own side's point of view).
    assert not save_keys_plugin_available()
    esp = pair.initiator.esp_sas()
    assert sorted((r.spi, r.encryption_key) for r in esp) == sorted(
        (r.spi, r.encryption_key) for r in pair.responder.esp_sas()
    )
    assert {r.spi for r in esp} == {child.spi_in, child.spi_out}
    assert all(len(r.encryption_key) == 36 for r in esp)  # AES-256 key + 4-byte salt (RFC 4106)

    fields = ["ip.src", "ip.dst", "esp.spi", "icmp.type"]
    sealed = decode(pcap, fields=fields, display_filter="esp")
    assert len(sealed) >= 6
    assert not any(p.has("icmp.type") for p in sealed), "without keys tshark must not see inside"

    prefs = decryption_preferences(esp, pair.initiator.ikev2_sas())
    opened = decode(pcap, fields=fields, display_filter="esp && icmp", preferences=prefs)
    requests = [p for p in opened if p.first("icmp.type") == "8"]
    replies = [p for p in opened if p.first("icmp.type") == "0"]
    assert len(requests) >= 3 and len(replies) >= 3
    for p in requests:
        assert p.values("ip.src") == ("192.0.2.1", "10.1.0.10")
        assert p.values("ip.dst") == ("192.0.2.2", "10.2.0.10")
        assert int(p.values("esp.spi")[0], 16) == child.spi_out
    for p in replies:
        assert p.values("ip.src") == ("192.0.2.2", "10.2.0.10")
        assert int(p.values("esp.spi")[0], 16) == child.spi_in

    # IKE_AUTH decrypted: the identities inside are the DN and the URI SAN of the Trellis certificate.
    auth = decode(
        pcap,
        fields=["isakmp.id.type", "x509ce.uniformResourceIdentifier"],
        display_filter="isakmp.exchangetype == 35",
        preferences=prefs,
    )
    assert len(auth) == 2
    assert all("9" in p.values("isakmp.id.type") for p in auth)  # ID_DER_ASN1_DN
    uris = {uri for p in auth for uri in p.values("x509ce.uniformResourceIdentifier")}
    assert uris == {"spiffe://trellis.test/site/site1", "spiffe://trellis.test/site/site2"}


def test_underlay_fault_stops_the_tunnel_and_restore_heals_it(pair: StrongswanPair) -> None:
    site1, site2 = pair.sites
    pair.initiator.initiate(CHILD)
    pair.responder.wait_for_child_sa(CHILD)
    h1, h2 = site1.hosts[0], site2.hosts[0]
    assert h1.netns.ping(str(h2.ip))

    rules = pair.topology.faults.drop_udp(site1.underlay_ip, site2.underlay_ip, both_directions=True)
    assert not h1.netns.ping(str(h2.ip), count=2, timeout=0.5)
    assert sum(pair.topology.faults.dropped_packets(r) for r in rules) >= 2
    pair.topology.faults.restore_all()
    assert h1.netns.ping(str(h2.ip), count=2)


def test_wrong_peer_identity_fails_with_the_log_in_the_error() -> None:
    if os.geteuid() != 0:
        pytest.skip("strongSwan in network namespaces needs root")
    with strongswan_pair(initiate=False) as p:
        site1, site2 = p.sites
        # site2 is restarted expecting someone else than site1.
        p.responder.stop()
        impostor_view = start_strongswan_site(
            p.topology, site2, site1, p.ca, name="site2-strict", remote_id=site_dn("trellis.test", "x")
        )
        with pytest.raises(LabError) as failure:
            p.initiator.initiate(CHILD, timeout=10)
        message = str(failure.value)
        assert "initiating lan failed" in message
        assert "charon.log" in message  # the log tail is part of the error
        assert impostor_view.list_sas() == []


def test_anchor_measurement_reports_throughput_and_rtt() -> None:
    if os.geteuid() != 0:
        pytest.skip("strongSwan in network namespaces needs root")
    with strongswan_pair() as p:
        measured = measure_lan_to_lan(p.topology, seconds=1, ping_count=5)
        child: ChildSa = p.initiator.list_sas()[0].child(CHILD)
    assert measured.throughput.mbit_per_s > 1
    assert measured.rtt.received == 5 and measured.rtt.rtt_avg_ms is not None
    # The iperf3 bytes really went through the tunnel.
    assert child.bytes_out + child.bytes_in > measured.throughput.bytes_received
