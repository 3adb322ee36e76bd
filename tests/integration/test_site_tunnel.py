"""Trellis-to-Trellis sites in network namespaces: two ``trellis-agent run --config`` processes
negotiate with IKE, and their userspace data planes carry the LANs' traffic on the SAs.

LAN hosts reach each other (ping both ways, a TCP transfer checked by SHA-256), tshark decrypts
the ESP with the agents' key logs, CHILD SAs rekey (IKE's timer, the data plane's packet
lifetime) under a ping that loses nothing, ``trellis-agent status`` shows the counters and the
drops provoked from the wan namespace, and a data plane that dies takes its site down cleanly.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.lan import INJECT, long_ping, transfer, tshark_sees_inside
from trellis.controller.ca import CertificateAuthority
from trellis.lab.anchor import TRUST_DOMAIN
from trellis.lab.topology import StandardTopology
from trellis.lab.trellis_site import TrellisSite, agent_yaml, wait_until
from trellis.lab.tshark import start_capture
from trellis.v1.identity import Identity

pytestmark = pytest.mark.netns


@dataclass
class Pair:
    topology: StandardTopology
    a: TrellisSite  # site1
    b: TrellisSite  # site2

    def diagnostics(self) -> str:
        return f"{self.a.diagnostics()}\n{self.b.diagnostics()}"

    def wait_up(self, timeout: float = 30.0) -> tuple[dict[str, Any], dict[str, Any]]:
        """Until each side has one installed CHILD SA, the mirror of the other's, with ESP
        counters reported by its data plane."""

        def mirrored() -> bool:
            ca, cb = self.a.installed_child(), self.b.installed_child()
            return (
                ca is not None
                and cb is not None
                and (ca["inbound_spi"], ca["outbound_spi"]) == (cb["outbound_spi"], cb["inbound_spi"])
                and "esp" in ca
                and "esp" in cb
            )

        wait_until("the CHILD SA on both sides", mirrored, timeout, self.diagnostics)
        ca, cb = self.a.installed_child(), self.b.installed_child()
        assert ca is not None and cb is not None
        return ca, cb


@pytest.fixture
def trellis_pair(topology: StandardTopology) -> Iterator[Callable[..., Pair]]:
    """``make(initiator="site1", dataplane="...", esp_lifetime="...")``: both sites configured
    and started (the responder first)."""
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=dt.datetime.now(dt.UTC))
    site1, site2 = topology.sites

    def make(
        *, initiator: str = "site1", dataplane: str = "", esp_lifetime: str = "", dpd: str = "30s"
    ) -> Pair:
        sides = {}
        for local, remote in ((site1, site2), (site2, site1)):
            side = TrellisSite.in_lab(topology.lab, local)
            side.install_credentials(ca)
            side.write_config(
                agent_yaml(
                    local,
                    remote,
                    auth="{certificate: default, ca: ca.pem}",
                    initiate=local.name == initiator,
                    remote_id=Identity.site(TRUST_DOMAIN, remote.name).uri,
                    esp_lifetime=esp_lifetime,
                    dpd=dpd,
                    extra=f"dataplane: {{tun_name: trellis0{', ' + dataplane if dataplane else ''}}}",
                )
            )
            sides[local.name] = side
        responder = "site2" if initiator == "site1" else "site1"
        sides[responder].start()
        wait_until(
            "the responder's status",
            lambda: sides[responder].status() is not None,
            30,
            sides[responder].diagnostics,
        )
        sides[initiator].start()
        return Pair(topology=topology, a=sides["site1"], b=sides["site2"])

    yield make


@pytest.mark.parametrize("initiator", ["site1", "site2"])
def test_lan_hosts_reach_each_other_over_ike_negotiated_sas(
    topology: StandardTopology, trellis_pair: Callable[..., Pair], initiator: str
) -> None:
    pair = trellis_pair(initiator=initiator)
    pair.wait_up()
    h1, h2 = topology.sites[0].hosts[0], topology.sites[1].hosts[0]
    assert h1.netns.ping(str(h2.ip), count=3)
    assert h2.netns.ping(str(h1.ip), count=3)
    server, client = transfer(topology, h1, h2)
    assert server == "server received 4194304 OK" and client == "client received 4194304 OK"

    for side, remote_lan in ((pair.a, "10.2.0.0/24"), (pair.b, "10.1.0.0/24")):
        status = side.fresh_status()
        assert status["backend"] == "userspace" and status["failed"] is None
        assert status["routes"] == [remote_lan]
        (sa,) = [s for s in status["ike_sas"] if s["state"] == "established"]
        assert sa["initiator"] is (side.site.name == initiator) and sa["nat"] and sa["local_port"] == 4500
        (child,) = sa["children"]
        for direction in ("in", "out"):
            esp = child["esp"][direction]
            assert esp["packets"] > 1000 and esp["bytes"] > 4_000_000, esp
            assert esp["drops"] == {}, esp
        bad = {k: v for k, v in status["dataplane"]["drops"].items() if k != "too_big"}
        assert bad == {}, status["dataplane"]["drops"]
        assert status["dataplane"]["tun_mtu"] == 1438
    # what the operator sees
    text = pair.a.status_command(as_json=False)
    assert "site:         running" in text and "CHILD SA lan: installed" in text
    assert "10.1.0.0/24 === 10.2.0.0/24" in text and "drops: none" in text
    report = pair.a.status_command()
    assert report["mode"] == "static" and report["tunnels"]["running"]
    assert report["tunnels"]["site"]["ike_sas"][0]["children"][0]["esp"]["in"]["packets"] > 1000


def test_tshark_decrypts_our_esp_with_the_key_log(
    topology: StandardTopology, trellis_pair: Callable[..., Pair]
) -> None:
    site1 = topology.sites[0]
    for site in topology.sites:  # one datagram per ESP packet on the wire, as a real link carries
        site.netns.run(["ethtool", "-K", site.underlay_if, "tx-udp-segmentation", "off"])
    pair = trellis_pair()
    pair.wait_up()
    h1, h2 = site1.hosts[0], topology.sites[1].hosts[0]
    with start_capture(
        topology.lab, site1.netns, site1.underlay_if, capture_filter="udp port 4500"
    ) as capture:
        assert h1.netns.ping(str(h2.ip), count=3)
        transfer(topology, h1, h2, size=256 << 10)
    rows = pair.a.esp_keylog_rows()
    assert len(rows) == 2 and rows == sorted(pair.b.esp_keylog_rows(), key=rows.index)  # both sides agree
    seen, esp, good = tshark_sees_inside(capture, rows)
    assert seen == {(str(h1.ip), str(h2.ip), "8"), (str(h2.ip), str(h1.ip), "0")}
    assert esp == good > 2 * (256 << 10) // 1400  # every ESP packet decrypted with a verified ICV


@pytest.mark.parametrize(
    ("trigger", "options"),
    [
        ("ike-timer", {"esp_lifetime": ", rekey: 4s, lifetime: 30s, jitter: 0s"}),
        ("dataplane-packets", {"dataplane": "rekey_packets: 60, life_packets: 100000"}),
    ],
)
def test_child_rekeys_under_traffic_lose_no_packet(
    topology: StandardTopology, trellis_pair: Callable[..., Pair], trigger: str, options: dict[str, str]
) -> None:
    pair = trellis_pair(**options)
    first, _ = pair.wait_up()
    h1, h2 = topology.sites[0].hosts[0], topology.sites[1].hosts[0]
    run = long_ping(h1.netns, str(h2.ip), count=200, interval=0.05)  # 10 s, over two rekeys or more
    assert run.sent == 200 and run.received == 200, run.output[-500:]
    rekeys = pair.a.events("ChildSaRekeyed") + pair.b.events("ChildSaRekeyed")
    assert len(rekeys) >= 4, pair.diagnostics()  # at least two rekeys, seen by both sides
    for side in (pair.a, pair.b):
        # replaced pairs, and in a rekey collision (both sides hit the packet limit at once) the
        # redundant new pair, deleted by the side that made it (RFC 7296 section 2.8.1)
        assert {e["reason"] for e in side.events("ChildSaDeleted")} <= {"rekeyed", "peer-deleted"}
        assert "rekeyed" in {e["reason"] for e in side.events("ChildSaDeleted")}
    last, _ = pair.wait_up()
    assert last["inbound_spi"] != first["inbound_spi"]
    status = pair.a.fresh_status()
    assert status["dataplane"]["drops"].get("no_sa", 0) == 0, status["dataplane"]["drops"]
    assert len(status["dataplane"]["sas"]) in (2, 3, 4)  # the pair, perhaps with one being replaced


def test_status_counts_replayed_tampered_and_unknown_esp(
    topology: StandardTopology, trellis_pair: Callable[..., Pair]
) -> None:
    site1 = topology.sites[0]
    pair = trellis_pair()
    child, _ = pair.wait_up()
    h1, h2 = site1.hosts[0], topology.sites[1].hosts[0]
    injector = topology.lab.start(
        topology.wan, [sys.executable, "-c", INJECT, f"s{site1.index}", str(site1.underlay_ip)], name="inject"
    )
    wait_until("the sniffer", lambda: "sniffing" in injector.output(), 10, injector.output_tail)
    assert h1.netns.ping(str(h2.ip), count=3)  # the replies come from site2 to site1
    injector.wait(20)
    assert f"injected spi {child['inbound_spi']}" in injector.output()

    def counted() -> bool:
        c = pair.a.installed_child()
        return c is not None and c["esp"]["in"]["drops"].get("authentication", 0) >= 1

    wait_until("the drops in the status", counted, 10, pair.diagnostics)
    report = pair.a.status_command()
    site = report["tunnels"]["site"]
    inbound = site["ike_sas"][0]["children"][0]["esp"]["in"]
    assert inbound["drops"] == {"authentication": 1, "replay": 1}
    assert inbound["packets"] >= 3
    assert site["dataplane"]["drops"]["no_sa"] == 1
    assert site["dataplane"]["drops"]["authentication"] == 1 and site["dataplane"]["drops"]["replay"] == 1
    text = pair.a.status_command(as_json=False)
    assert "drops: authentication 1, replay 1" in text and "no_sa 1" in text
    assert h1.netns.ping(str(h2.ip), count=1)  # none of it hurt the tunnel


def test_a_dead_data_plane_takes_the_site_down_and_tells_the_peer(
    topology: StandardTopology, trellis_pair: Callable[..., Pair]
) -> None:
    pair = trellis_pair()
    pair.wait_up()
    assert pair.a.process is not None
    pid = pair.a.process.pid
    workers = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    code = pair.a.process.wait(20)
    output = pair.a.process.output()
    assert code == 1
    assert "trellis-agent: error: data plane failed: inbound worker exited (-9)" in output
    down = pair.b.wait_event("IkeSaDown")
    assert down["reason"] == "peer-deleted"  # the failing site said goodbye
    report = pair.a.status_command()
    assert not report["tunnels"]["running"]
    assert report["tunnels"]["site"]["failed"] == "data plane failed: inbound worker exited (-9)"
