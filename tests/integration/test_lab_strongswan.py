"""The strongSwan harness against strongSwan itself: swanctl.conf as charon reads it back, a PSK
tunnel started on load, and key extraction across a CHILD SA rekey."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from trellis.lab.anchor import CHILD, strongswan_pair
from trellis.lab.strongswan import Charon, start_charon
from trellis.lab.swanctl import (
    AuthRound,
    Child,
    Connection,
    IkeSecret,
    StartAction,
    SwanctlConfig,
    SwanctlConfigError,
)
from trellis.lab.topology import Site, StandardTopology
from trellis.lab.tshark import decode, decryption_preferences, start_capture
from trellis.lab.vici_text import parse_pretty

pytestmark = pytest.mark.interop

# A secret with a quote, a backslash and spaces: it only works if swanctl.conf quoting is right.
AWKWARD_SECRET = 'lab "secret" with \\ and spaces'


def psk_config(local: Site, remote: Site, start_action: StartAction) -> SwanctlConfig:
    return SwanctlConfig(
        connections=(
            Connection(
                name="psk",
                local_addrs=(str(local.underlay_ip),),
                remote_addrs=(str(remote.underlay_ip),),
                local=AuthRound(auth="psk", id=f"{local.name}.trellis.test"),
                remote=AuthRound(auth="psk", id=f"{remote.name}.trellis.test"),
                children=(
                    Child(
                        name="lan",
                        local_ts=(str(local.lan),),
                        remote_ts=(str(remote.lan),),
                        rekey_time=600,
                        life_time=700,
                        start_action=start_action,
                        dpd_action="restart",
                    ),
                ),
                rekey_time=3000,
                over_time=60,
                dpd_delay=5,
                encap=True,
                fragmentation="yes",
                mobike=False,
            ),
        ),
        secrets=(
            IkeSecret(name="lab", secret=AWKWARD_SECRET, ids=("site1.trellis.test", "site2.trellis.test")),
        ),
    )


@pytest.fixture
def psk_sites(topology: StandardTopology) -> Iterator[tuple[Charon, Charon]]:
    s1, s2 = topology.sites
    c1 = start_charon(topology.lab, s1.netns)
    c2 = start_charon(topology.lab, s2.netns)
    c2.load(psk_config(s2, s1, "none"))
    c1.load(psk_config(s1, s2, "start"))
    yield c1, c2


def test_strongswan_reads_the_rendered_config_back(psk_sites: tuple[Charon, Charon]) -> None:
    c1, _ = psk_sites
    [(_, conns)] = [
        m for m in parse_pretty(c1.swanctl("--list-conns", "--pretty")) if m[0] == "list-conn event"
    ]
    conn = conns["psk"]
    assert isinstance(conn, dict)
    assert conn["local_addrs"] == ["192.0.2.1"] and conn["remote_addrs"] == ["192.0.2.2"]
    assert (conn["version"], conn["rekey_time"], conn["dpd_delay"]) == ("IKEv2", "3000", "5")
    local, remote, children = conn["local-1"], conn["remote-1"], conn["children"]
    assert isinstance(local, dict) and isinstance(remote, dict) and isinstance(children, dict)
    assert (local["id"], local["class"]) == ("site1.trellis.test", "pre-shared key")
    assert remote["id"] == "site2.trellis.test"
    lan = children["lan"]
    assert isinstance(lan, dict)
    assert (lan["mode"], lan["rekey_time"], lan["dpd_action"]) == ("TUNNEL", "600", "start")
    assert (lan["local-ts"], lan["remote-ts"]) == (["10.1.0.0/24"], ["10.2.0.0/24"])


def test_start_action_brings_the_psk_tunnel_up_on_load(
    topology: StandardTopology, psk_sites: tuple[Charon, Charon]
) -> None:
    c1, c2 = psk_sites
    h1, h2 = topology.sites[0].hosts[0], topology.sites[1].hosts[0]
    # site1 initiates as soon as its config is loaded; the PSK (quoted) must match on both sides.
    ike = c1.wait_for_child_sa("lan")
    assert ike.name == "psk" and ike.remote_id == "site2.trellis.test"
    assert h1.netns.ping(str(h2.ip), count=2)
    assert c2.wait_for_child_sa("lan").child("lan").packets_in >= 2

    c1.terminate(ike="psk")
    assert c1.list_sas() == []
    deadline = time.monotonic() + 5
    while c2.list_sas():
        assert time.monotonic() < deadline, c2.diagnostics()
        time.sleep(0.1)
    assert not h1.netns.ping(str(h2.ip), timeout=0.5)


def test_keys_follow_a_rekey_started_by_the_responder() -> None:
    if os.geteuid() != 0:
        pytest.skip("strongSwan in network namespaces needs root")
    with strongswan_pair(log_keys=True) as pair:
        first = pair.initiator.list_sas()[0].child(CHILD)
        # site2 (responder of IKE_AUTH) initiates the rekey: roles swap for the new CHILD SA.
        pair.responder.swanctl("--rekey", "--child", CHILD)
        # Make-before-break: wait until the old CHILD SA is gone on both sides, so that
        # traffic can only use the new one.
        deadline = time.monotonic() + 15
        while True:
            views = [c.list_sas()[0].children for c in (pair.initiator, pair.responder)]
            if all(
                len(v) == 1 and v[0].uniqueid != first.uniqueid and v[0].state == "INSTALLED" for v in views
            ):
                break
            assert time.monotonic() < deadline, pair.initiator.diagnostics()
            time.sleep(0.1)
        new = views[0][0]
        assert new.spi_in != first.spi_in and new.spi_out != first.spi_out

        topo = pair.topology
        capture = start_capture(topo.lab, topo.wan, topo.wan_bridge, capture_filter="udp port 4500")
        site1, site2 = pair.sites
        assert site1.hosts[0].netns.ping(str(site2.hosts[0].ip), count=2)
        pcap = capture.stop()

        esp = pair.initiator.esp_sas()
        assert sorted((r.spi, r.encryption_key) for r in esp) == sorted(
            (r.spi, r.encryption_key) for r in pair.responder.esp_sas()
        )
        opened = decode(
            pcap,
            fields=["esp.spi", "icmp.type"],
            display_filter="esp && icmp",
            preferences=decryption_preferences(esp),
        )
        spis = {int(p.values("esp.spi")[0], 16) for p in opened}
        assert spis == {new.spi_in, new.spi_out}
        assert sorted(p.values("icmp.type")[0] for p in opened) == ["0", "0", "8", "8"]


def test_values_that_cannot_be_written_safely_are_refused() -> None:
    base = Connection(
        name="c",
        local_addrs=("192.0.2.1",),
        remote_addrs=("192.0.2.2",),
        local=AuthRound(id="a"),
        remote=AuthRound(id="b"),
        children=(Child(name="lan", local_ts=("10.1.0.0/24",), remote_ts=("10.2.0.0/24",)),),
    )

    def render(connection: Connection) -> str:
        return SwanctlConfig(connections=(connection,)).render()

    dn = "O=trellis.test, OU=site, CN=a"
    assert f'id = "{dn}"' in render(replace(base, local=AuthRound(id=dn)))
    with pytest.raises(SwanctlConfigError, match="line breaks"):
        render(replace(base, local=AuthRound(id="a\nsecrets { }")))
    with pytest.raises(SwanctlConfigError, match="plain token"):
        render(replace(base, remote_addrs=("192.0.2.2, 192.0.2.3",)))
    with pytest.raises(SwanctlConfigError, match="empty list"):
        render(replace(base, remote_addrs=()))
    with pytest.raises(SwanctlConfigError, match=r"invalid swanctl\.conf name"):
        render(replace(base, name="two words"))
    with pytest.raises(SwanctlConfigError, match="negative"):
        render(replace(base, dpd_delay=-1))
