"""Trellis-to-Trellis tunnels in network namespaces with the userspace data plane.

A LAN host behind site 1 reaches a LAN host behind site 2 and back (ping, TCP transfers checked
by content hash), tshark decrypts the ESP on the wire with our key-log export, the TUN MTU and
counters behave, and port 4500 is shared with IKE.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import textwrap
from collections.abc import Callable

import pytest

from bench.throughput_trellis import TrellisTunnel, expected_keylog_rows, start_trellis_tunnel
from tests.support import lan
from trellis.agent.esp.constants import Cipher
from trellis.agent.esp.sa import Lifetime
from trellis.lab.netns import Lab, Netns
from trellis.lab.process import wait_until
from trellis.lab.topology import StandardTopology, build_standard_topology
from trellis.lab.tshark import decode, start_capture

pytestmark = pytest.mark.netns

TRANSFER_BYTES = 8 << 20


def transfer(topology: StandardTopology, client: Netns, server: Netns, server_ip: str) -> tuple[str, str]:
    """TRANSFER_BYTES each way; returns the server's and the client's verdict lines."""
    return lan.transfer(topology, client, server, server_ip=server_ip, size=TRANSFER_BYTES)


@pytest.fixture
def tunnel(topology: StandardTopology) -> TrellisTunnel:
    return start_trellis_tunnel(topology, keylog=True)


@pytest.mark.parametrize("tso", [False, True], ids=["gro", "tso+gro"])
def test_lan_hosts_reach_each_other_through_the_tunnel(topology: StandardTopology, tso: bool) -> None:
    tunnel = start_trellis_tunnel(topology, tso=tso, lifetime=Lifetime(soft_packets=5000))
    host_a, host_b = topology.sites[0].hosts[0], topology.sites[1].hosts[0]
    assert host_a.netns.ping(str(host_b.ip), count=3)
    assert host_b.netns.ping(str(host_a.ip), count=3)
    server_verdict, client_verdict = transfer(topology, host_a.netns, host_b.netns, str(host_b.ip))
    assert server_verdict == f"server received {TRANSFER_BYTES} OK"
    assert client_verdict == f"client received {TRANSFER_BYTES} OK"

    status_a, status_b = tunnel.a.fresh_status(), tunnel.b.fresh_status()
    for status in (status_a, status_b):
        assert status["failed"] is None
        assert {sa["direction"] for sa in status["sas"]} == {"in", "out"}
        assert all(sa["packets"] > 100 for sa in status["sas"]), status["sas"]
        bad = {k: v for k, v in status["drops"].items() if k in ("authentication", "replay", "selector")}
        assert bad == {}, status["drops"]
        assert status["tun_mtu"] == 1438
    # GRO merged the received segments (and TSO, when on, took super-packets in)
    assert status_b["traffic"]["gro_out"] > 0
    assert (status_a["traffic"].get("tso_in", 0) > 0) is tso
    # the soft packet lifetime fired on the busy direction: a rekey request, nothing dropped
    assert any(e["trigger"] == "packets" and not e["hard"] for e in status_a["events"] + status_b["events"])


def test_tun_mtu_and_icmp_fragmentation_needed(topology: StandardTopology, tunnel: TrellisTunnel) -> None:
    host_a, host_b = topology.sites[0].hosts[0], topology.sites[1].hosts[0]
    fits = host_a.netns.run(
        ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1410", str(host_b.ip)], check=False
    )
    assert fits.returncode == 0, fits.stdout  # 1410 + 28 = 1438 bytes: the TUN MTU
    too_big = host_a.netns.run(
        ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1411", str(host_b.ip)], check=False
    )
    assert too_big.returncode != 0
    assert "mtu = 1438" in too_big.stdout + too_big.stderr


@pytest.mark.parametrize("cipher", [Cipher.AES_GCM_16])
def test_tshark_decrypts_our_esp_with_the_key_log(topology: StandardTopology, cipher: Cipher) -> None:
    site_a, site_b = topology.sites[0], topology.sites[1]
    for site in (site_a, site_b):
        # One datagram per ESP packet on the wire (no UDP GSO super-packets), so that the capture
        # shows what a real link would carry.
        site.netns.run(["ethtool", "-K", site.underlay_if, "tx-udp-segmentation", "off"])
    tunnel = start_trellis_tunnel(topology, cipher=cipher, keylog=True)
    host_a, host_b = site_a.hosts[0], site_b.hosts[0]
    with start_capture(
        topology.lab, site_a.netns, site_a.underlay_if, capture_filter="udp port 4500"
    ) as capture:
        assert host_a.netns.ping(str(host_b.ip), count=3)
        transfer(topology, host_a.netns, host_b.netns, str(host_b.ip))
    rows = tunnel.keylog_rows()
    assert sorted(rows) == sorted(expected_keylog_rows(tunnel))
    preferences = {
        "esp.enable_encryption_decode": "TRUE",
        "esp.enable_authentication_check": "TRUE",
        "uat:esp_sa": rows,
    }
    pings = decode(
        capture.pcap,
        fields=["esp.spi", "ip.src", "ip.dst", "icmp.type"],
        display_filter="icmp",
        preferences=preferences,
    )
    seen = {(p.values("ip.src")[-1], p.values("ip.dst")[-1], p.first("icmp.type")) for p in pings}
    assert seen == {(str(host_a.ip), str(host_b.ip), "8"), (str(host_b.ip), str(host_a.ip), "0")}
    segments = decode(
        capture.pcap,
        fields=["tcp.srcport", "tcp.dstport", "tcp.len"],
        display_filter=f"tcp.port == {lan.TRANSFER_PORT} && tcp.len > 0",
        preferences=preferences,
    )
    carried = sum(int(p.first("tcp.len") or 0) for p in segments)
    assert carried >= 2 * TRANSFER_BYTES  # every byte of both directions decrypted by tshark
    # and Wireshark verified every ICV itself
    esp = decode(capture.pcap, fields=["esp.spi"], display_filter="esp", preferences=preferences)
    good = decode(
        capture.pcap, fields=["esp.spi"], display_filter="esp.icv_good == 1", preferences=preferences
    )
    assert len(esp) == len(good) > 2 * TRANSFER_BYTES // 1400


# A small agent stand-in in a site namespace: the data plane with an IKE handler that answers
# every IKE message through send_ike (reversed bytes), as the IKE daemon will.
IKE_ECHO = textwrap.dedent(
    """
    import asyncio, sys
    from trellis.agent.dataplane.userspace import UserspaceConfig, UserspaceDataplane
    async def main():
        stop = asyncio.Event()
        holder = {}
        def on_ike(message, source):
            holder["dp"].send_ike(message[::-1], source)
            print("ike", len(message), source[0], flush=True)
        config = UserspaceConfig(tun_name="trellis0", listen_address=sys.argv[1])
        async with UserspaceDataplane(config, on_ike=on_ike) as dp:
            holder["dp"] = dp
            print("ready", flush=True)
            await asyncio.sleep(60)
    asyncio.run(main())
    """
)

PROBE = textwrap.dedent(
    """
    import socket, sys
    target = (sys.argv[1], 4500)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[2], 4501))
    s.settimeout(5)
    ike = bytes(range(40))
    s.sendto(b"\\x00\\x00\\x00\\x00" + ike, target)
    reply, source = s.recvfrom(2048)
    print("reply", reply[:4].hex(), reply[4:] == ike[::-1], source[1], flush=True)
    """
)


def test_port_4500_is_shared_with_ike(topology: StandardTopology) -> None:
    site_a, site_b = topology.sites[0], topology.sites[1]
    agent = topology.lab.start(
        site_a.netns, [sys.executable, "-c", IKE_ECHO, str(site_a.underlay_ip)], name="ike-echo"
    )
    wait_until("the data plane", lambda: "ready" in agent.output() or agent.poll() is not None, timeout=30)
    assert agent.poll() is None, agent.output_tail()
    done = site_b.netns.run([sys.executable, "-c", PROBE, str(site_a.underlay_ip), str(site_b.underlay_ip)])
    # the answer came from port 4500 with the non-ESP marker, and the message arrived intact
    assert done.stdout.split() == ["reply", "00000000", "True", "4500"]
    assert f"ike 40 {site_b.underlay_ip}" in agent.output()


GARBAGE = textwrap.dedent(
    """
    import os, socket, sys
    spi = int(sys.argv[3], 16)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[2], 4501))
    target = (sys.argv[1], 4500)
    s.sendto(b"\\xff", target)  # NAT keepalive
    s.sendto(b"\\x01\\x02\\x03", target)  # too short for anything
    s.sendto(os.urandom(4) + bytes(60), target)  # an SPI nobody installed (probably)
    s.sendto(spi.to_bytes(4, "big") + (10**6).to_bytes(4, "big") + os.urandom(80), target)  # forged
    s.sendto(bytes(4) + os.urandom(40), target)  # an IKE message nobody answers here
    """
)


def test_keepalives_and_bad_datagrams_are_counted(topology: StandardTopology, tunnel: TrellisTunnel) -> None:
    site_a, site_b = topology.sites[0], topology.sites[1]
    inbound_spi = next(sa.spi for sa in tunnel.a.sas if sa.direction == "in")
    site_b.netns.run(
        [sys.executable, "-c", GARBAGE, str(site_a.underlay_ip), str(site_b.underlay_ip), f"{inbound_spi:x}"]
    )

    def counted() -> bool:
        status = tunnel.a.fresh_status()
        return bool(status["traffic"].get("keepalive_rx") == 1 and status["ike_messages"] == 1)

    wait_until("the counters", counted, timeout=10)
    status = tunnel.a.status()
    assert status["drops"]["malformed"] == 1
    assert status["drops"]["no_sa"] >= 1
    assert status["drops"]["authentication"] == 1
    inbound = next(sa for sa in status["sas"] if sa["direction"] == "in")
    assert inbound["drops"] == {"authentication": 1}
    assert topology.sites[0].hosts[0].netns.ping(str(topology.sites[1].hosts[0].ip), count=1)


def dad_done(ns: Netns) -> Callable[[], bool]:
    return lambda: "tentative" not in ns.ip("-6", "addr")


def test_ipv6_lans_over_an_ipv4_underlay() -> None:
    """Inner IPv6 packets in the same tunnel (next header 41), alongside IPv4."""
    with Lab(ipv6=True) as lab:
        topology = build_standard_topology(lab, sites=2)
        lans = []
        for site in topology.sites[:2]:
            lan = ipaddress.IPv6Network(f"fd00:{site.index}::/64")
            gateway = ipaddress.IPv6Interface(f"{lan.network_address + 1}/64")
            site.netns.ip("addr", "add", str(gateway), "dev", site.lan_if, "nodad")
            host = site.hosts[0]
            host.netns.ip("addr", "add", f"{lan.network_address + 10}/64", "dev", "eth0", "nodad")
            host.netns.add_route("default", via=gateway.ip)
            lans.append(str(lan))
        for ns in [site.netns for site in topology.sites] + [site.hosts[0].netns for site in topology.sites]:
            # neighbour discovery needs the link-local addresses past duplicate address detection
            wait_until(f"DAD in {ns.role}", dad_done(ns), timeout=10)
        tunnel = start_trellis_tunnel(topology, extra_subnets=([lans[0]], [lans[1]]))
        host_a = topology.sites[0].hosts[0]
        target = str(ipaddress.IPv6Network(lans[1]).network_address + 10)
        assert host_a.netns.ping(target, count=3)
        server_verdict, client_verdict = transfer(
            topology, host_a.netns, topology.sites[1].hosts[0].netns, target
        )
        assert server_verdict.endswith(" OK") and client_verdict.endswith(" OK")
        assert host_a.netns.ping(str(topology.sites[1].hosts[0].ip), count=1)  # IPv4 still flows
        status = tunnel.b.fresh_status()
        assert status["drops"].get("selector", 0) == 0 and status["drops"].get("malformed", 0) == 0
        assert all(sa["packets"] > 100 for sa in status["sas"])


# The data plane with a worker killed under it: it must fail closed and say so.
WORKER_DEATH = textwrap.dedent(
    """
    import asyncio, os, sys
    from trellis.agent.dataplane.backend import DataplaneError
    from trellis.agent.dataplane.userspace import UserspaceConfig, UserspaceDataplane
    async def main():
        config = UserspaceConfig(tun_name="trellis0", listen_address=sys.argv[1])
        async with UserspaceDataplane(config) as dp:
            children = open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split()
            print("workers", *children, flush=True)
            for _ in range(200):
                if dp.failed:
                    break
                await asyncio.sleep(0.05)
            print("failed:", dp.failed, flush=True)
            try:
                await dp.counters()
            except DataplaneError as error:
                print("refused:", error, flush=True)
    asyncio.run(main())
    """
)


def test_a_dead_worker_fails_the_data_plane_closed(topology: StandardTopology) -> None:
    site = topology.sites[0]
    process = topology.lab.start(
        site.netns, [sys.executable, "-c", WORKER_DEATH, str(site.underlay_ip)], name="worker-death"
    )
    wait_until("the workers", lambda: "workers" in process.output() or process.poll() is not None, timeout=30)
    workers = [int(pid) for pid in process.output().split("workers", 1)[1].split("\n", 1)[0].split()]
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    process.wait(20)
    output = process.output()
    assert "failed: inbound worker exited (-9)" in output
    assert "refused: inbound worker exited (-9)" in output
