"""LAN traffic between a Trellis site and a strongSwan site (kernel-libipsec), in namespaces.

site1 runs ``trellis-agent run --config`` (IKE and the userspace data plane), site2 runs charon
with kernel-libipsec; each side initiates in turn. A LAN host behind each site reaches the
other (ping both ways, a TCP transfer checked by SHA-256), tshark decrypts the ESP on the wire
with nothing but our key log, and CHILD SA rekeys started by either side keep a ping answered.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from tests.support.lan import long_ping, transfer, tshark_sees_inside
from trellis.controller.ca import CertificateAuthority
from trellis.lab.anchor import CHILD, TRUST_DOMAIN, issue_site_certificate, site_to_site_connection
from trellis.lab.strongswan import Charon, start_charon
from trellis.lab.swanctl import SwanctlConfig
from trellis.lab.topology import StandardTopology
from trellis.lab.trellis_site import TrellisSite, agent_yaml, wait_until
from trellis.lab.tshark import start_capture
from trellis.lab.vici_text import ChildSa
from trellis.v1.identity import Identity

pytestmark = pytest.mark.interop


@dataclass
class Setup:
    topology: StandardTopology
    trellis: TrellisSite
    charon: Charon

    def diagnostics(self) -> str:
        return f"{self.trellis.diagnostics()}\n{self.charon.diagnostics()}"

    def strongswan_child(self) -> ChildSa | None:
        sas = [sa for sa in self.charon.list_sas() if sa.state == "ESTABLISHED"]
        children = [c for sa in sas for c in sa.children if c.name == CHILD and c.state == "INSTALLED"]
        return children[0] if len(sas) == 1 and len(children) == 1 else None

    def wait_up(self, timeout: float = 30.0) -> tuple[dict[str, Any], ChildSa]:
        """Until both sides have one installed CHILD SA, the same one (SPIs mirrored), and our
        data plane reports on it."""

        def same() -> bool:
            ours, theirs = self.trellis.installed_child(), self.strongswan_child()
            return (
                ours is not None
                and theirs is not None
                and "esp" in ours
                and (int(ours["inbound_spi"], 16), int(ours["outbound_spi"], 16))
                == (theirs.spi_out, theirs.spi_in)
            )

        wait_until("the same CHILD SA on both sides", same, timeout, self.diagnostics)
        ours, theirs = self.trellis.installed_child(), self.strongswan_child()
        assert ours is not None and theirs is not None
        return ours, theirs


@pytest.fixture
def lan_interop(topology: StandardTopology) -> Iterator[Callable[..., Setup]]:
    """``make(trellis_initiates=..., esp_lifetime=..., strongswan_child=...)``."""
    if os.geteuid() != 0:
        pytest.skip("strongSwan in network namespaces needs root")
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=dt.datetime.now(dt.UTC))
    site1, site2 = topology.sites

    def make(
        *, trellis_initiates: bool, esp_lifetime: str = "", strongswan_child: dict[str, Any] | None = None
    ) -> Setup:
        charon = start_charon(topology.lab, site2.netns, name="strongswan")
        cert, key = issue_site_certificate(ca, site2.name)
        installed = charon.install_credentials(cacerts=[ca.certificate], cert=cert, key=key)
        connection = site_to_site_connection(site2, site1, installed, trust_domain=TRUST_DOMAIN)
        child = replace(connection.children[0], **(strongswan_child or {}))
        charon.load(
            SwanctlConfig(connections=(replace(connection, children=(child,), encap=True, mobike=False),))
        )
        trellis = TrellisSite.in_lab(topology.lab, site1)
        trellis.install_credentials(ca)
        trellis.write_config(
            agent_yaml(
                site1,
                site2,
                auth="{certificate: default, ca: ca.pem}",
                initiate=trellis_initiates,
                remote_id=Identity.site(TRUST_DOMAIN, site2.name).uri,
                esp_lifetime=esp_lifetime,
                extra="dataplane: {tun_name: trellis0}",
            )
        )
        trellis.start()
        setup = Setup(topology=topology, trellis=trellis, charon=charon)
        if not trellis_initiates:
            wait_until("the Trellis site", lambda: trellis.status() is not None, 30, setup.diagnostics)
            charon.initiate(CHILD)
        return setup

    yield make


@pytest.mark.parametrize(
    "trellis_initiates", [True, False], ids=["trellis-initiates", "strongswan-initiates"]
)
def test_lan_hosts_reach_each_other_and_back(
    topology: StandardTopology, lan_interop: Callable[..., Setup], trellis_initiates: bool
) -> None:
    setup = lan_interop(trellis_initiates=trellis_initiates)
    ours, theirs = setup.wait_up()
    h1, h2 = topology.sites[0].hosts[0], topology.sites[1].hosts[0]
    assert h1.netns.ping(str(h2.ip), count=3)
    assert h2.netns.ping(str(h1.ip), count=3)
    server, client = transfer(topology, h1, h2)
    assert server == "server received 4194304 OK" and client == "client received 4194304 OK"
    server, client = transfer(topology, h2, h1, name="tcp-back")  # and the other way round
    assert server == "server received 4194304 OK" and client == "client received 4194304 OK"

    their_child = setup.strongswan_child()
    assert their_child is not None and their_child.spi_in == theirs.spi_in
    assert their_child.bytes_in > 8_000_000 and their_child.bytes_out > 8_000_000
    status = setup.trellis.fresh_status()
    (sa,) = [s for s in status["ike_sas"] if s["state"] == "established"]
    assert sa["initiator"] is trellis_initiates
    (child,) = sa["children"]
    assert child["local_ts"] == ["10.1.0.0/24"] and child["remote_ts"] == ["10.2.0.0/24"]
    for direction in ("in", "out"):
        assert child["esp"][direction]["bytes"] > 8_000_000 and child["esp"][direction]["drops"] == {}
    # strongSwan counts ESP payload bytes as we do (inner packets): within a few percent
    assert abs(child["esp"]["in"]["bytes"] - their_child.bytes_out) < 0.05 * their_child.bytes_out
    bad = {k: v for k, v in status["dataplane"]["drops"].items() if k != "too_big"}
    assert bad == {}, status["dataplane"]["drops"]
    del ours


def test_tshark_decrypts_our_esp_with_our_key_log(
    topology: StandardTopology, lan_interop: Callable[..., Setup]
) -> None:
    site1 = topology.sites[0]
    site1.netns.run(["ethtool", "-K", site1.underlay_if, "tx-udp-segmentation", "off"])
    setup = lan_interop(trellis_initiates=True)
    ours, _ = setup.wait_up()
    h1, h2 = site1.hosts[0], topology.sites[1].hosts[0]
    with start_capture(
        topology.lab, site1.netns, site1.underlay_if, capture_filter="udp port 4500"
    ) as capture:
        assert h1.netns.ping(str(h2.ip), count=3)
        transfer(topology, h1, h2, size=256 << 10)
    rows = setup.trellis.esp_keylog_rows()
    assert len(rows) == 2
    assert {row.split(",")[3].strip('"') for row in rows} == {
        f"0x{ours['inbound_spi']}",
        f"0x{ours['outbound_spi']}",
    }
    seen, esp, good = tshark_sees_inside(capture, rows)
    # both directions: what we sealed and what strongSwan sealed, opened with our keys alone
    assert seen == {(str(h1.ip), str(h2.ip), "8"), (str(h2.ip), str(h1.ip), "0")}
    assert esp == good > 2 * (256 << 10) // 1400


@pytest.mark.parametrize(
    ("who", "options"),
    [
        ("trellis", {"esp_lifetime": ", rekey: 4s, lifetime: 60s, jitter: 0s"}),
        ("strongswan", {"strongswan_child": {"rekey_time": 4, "life_time": 60, "rand_time": 0}}),
    ],
)
def test_child_rekeys_under_a_ping_lose_nothing(
    topology: StandardTopology, lan_interop: Callable[..., Setup], who: str, options: dict[str, Any]
) -> None:
    setup = lan_interop(trellis_initiates=True, **options)
    first, _ = setup.wait_up()
    h1, h2 = topology.sites[0].hosts[0], topology.sites[1].hosts[0]
    run = long_ping(h1.netns, str(h2.ip), count=200, interval=0.05)  # 10 s: two rekeys or more
    assert run.sent == 200 and run.received == 200, f"{run.output[-400:]}\n{setup.diagnostics()}"
    rekeys = setup.trellis.events("ChildSaRekeyed")
    assert len(rekeys) >= 2, setup.diagnostics()
    assert {e["reason"] for e in setup.trellis.events("ChildSaDeleted")} == {"rekeyed"}
    # the side configured to rekey did: strongSwan's requests are in its log, ours are not
    requests = setup.charon.log_text().count("generating CREATE_CHILD_SA request")
    assert requests >= 2 if who == "strongswan" else requests == 0, requests
    last, theirs = setup.wait_up()
    assert last["inbound_spi"] != first["inbound_spi"]
    assert theirs.spi_out == int(last["inbound_spi"], 16)
    assert h2.netns.ping(str(h1.ip), count=2)
    drops = setup.trellis.fresh_status()["dataplane"]["drops"]
    assert drops.get("no_sa", 0) == 0 and drops.get("authentication", 0) == 0, drops
