"""The lab's namespaces, links and faults, checked with the kernel's own tools (ip, ping, nft)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from trellis.lab.iperf import iperf3_tcp, ping
from trellis.lab.netns import Lab, cleanup_stale, list_namespaces, namespace_pids, owner_pid, process_alive
from trellis.lab.process import LabError, run
from trellis.lab.topology import StandardTopology, build_standard_topology, standard_lab

pytestmark = pytest.mark.netns


def _root_links() -> set[str]:
    return {line.split(":", 2)[1].strip() for line in run(["ip", "-o", "link", "show"]).stdout.splitlines()}


def _ours(prefix: str) -> list[str]:
    return [n for n in list_namespaces() if n.startswith(prefix + "-")]


def test_standard_topology_connects_sites_and_lan_hosts(lab: Lab) -> None:
    links_before = _root_links()
    topo = build_standard_topology(lab, sites=3, hosts_per_site=2)
    s1, s2, _ = topo.sites

    assert {ns.name for ns in lab.namespaces} == set(_ours(lab.prefix))
    assert len(lab.namespaces) == 1 + 3 + 3 * 2
    assert [str(s.underlay) for s in topo.sites] == ["192.0.2.1/24", "192.0.2.2/24", "192.0.2.3/24"]
    assert [str(s.lan) for s in topo.sites] == ["10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24"]
    # The underlay: every site reaches every other one over the wan bridge.
    for a in topo.sites:
        for b in topo.sites:
            if a is not b:
                assert a.netns.ping(str(b.underlay_ip)), f"{a.name} cannot reach {b.name}"
    # LAN hosts reach their gateway, each other, and the site's underlay address (via the route).
    h11, h12 = s1.hosts
    assert h11.netns.ping(str(s1.lan_gateway.ip))
    assert h11.netns.ping(str(h12.ip))
    assert h12.netns.ping(str(s1.underlay_ip))
    assert run(["ip", "-n", h11.netns.name, "route", "show", "default"]).stdout.startswith(
        "default via 10.1.0.1"
    )
    # No tunnel yet: nothing routes one site's LAN to another's.
    assert not h11.netns.ping(str(s2.hosts[0].ip), timeout=0.5)
    # Nothing of the lab appears in the root namespace.
    assert _root_links() == links_before


def test_everything_is_removed_on_exit() -> None:
    links_before = _root_links()
    with standard_lab(sites=2) as topo:
        lab = topo.lab
        prefix, workdir = lab.prefix, lab.workdir
        sleeper = lab.start(topo.sites[0].netns, ["sleep", "600"], name="sleeper")
        stray = subprocess.Popen(["ip", "netns", "exec", topo.wan.name, "sleep", "600"])
        assert _ours(prefix)
        assert workdir.is_dir()
    assert _ours(prefix) == []
    assert sleeper.poll() is not None
    assert stray.wait(5) == -signal.SIGKILL  # a process the lab did not start is killed too
    assert not workdir.exists()
    assert _root_links() == links_before


def test_everything_is_removed_after_an_exception_and_logs_are_kept() -> None:
    with pytest.raises(RuntimeError, match="boom"), standard_lab(sites=2) as topo:
        prefix, workdir = topo.lab.prefix, topo.lab.workdir
        process = topo.lab.start(
            topo.sites[1].netns, ["sh", "-c", "echo said-something; sleep 600"], name="talker"
        )
        time.sleep(0.2)
        raise RuntimeError("boom")
    assert _ours(prefix) == []
    assert process.poll() is not None
    assert "said-something" in (workdir / "logs" / "talker.log").read_text()
    shutil.rmtree(workdir)


def test_leftovers_of_a_crashed_run_are_removed_and_live_runs_kept(lab: Lab) -> None:
    # A separate process builds a lab, starts a process in it and dies without cleaning up.
    crasher = textwrap.dedent(
        """
        import os, signal
        from trellis.lab.netns import Lab
        from trellis.lab.topology import build_standard_topology
        lab = Lab(remove_stale=False).__enter__()
        topo = build_standard_topology(lab, sites=2)
        lab.start(topo.sites[0].netns, ["sleep", "600"], name="orphan")
        print(lab.prefix, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", crasher], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    dead_prefix = done.stdout.strip()
    leftovers = _ours(dead_prefix)
    assert len(leftovers) == 5
    orphans = [pid for name in leftovers for pid in namespace_pids(name)]
    assert len(orphans) == 1

    mine = lab.namespace("alive")
    removed = cleanup_stale()

    assert set(leftovers) <= set(removed)
    assert _ours(dead_prefix) == []
    assert mine.name in list_namespaces()
    assert owner_pid(mine.name) == os.getpid()
    assert not process_alive(orphans[0])


def test_underlay_fault_drops_udp_only_and_restores(topology: StandardTopology) -> None:
    s1, s2 = topology.sites
    receiver_script = textwrap.dedent(
        f"""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("{s2.underlay_ip}", 9999))
        print("ready", flush=True)
        while True:
            print(s.recv(100).decode(), flush=True)
        """
    )
    receiver = topology.lab.start(s2.netns, [sys.executable, "-c", receiver_script], name="udp-receiver")
    deadline = time.monotonic() + 10
    while "ready" not in receiver.output():
        assert time.monotonic() < deadline, receiver.output_tail()
        time.sleep(0.05)

    def send(word: str) -> None:
        s1.netns.run(["bash", "-c", f"echo {word} > /dev/udp/{s2.underlay_ip}/9999"])

    [rule] = topology.faults.drop_udp(s1.underlay_ip, s2.underlay_ip)
    send("while-dropped")
    assert s1.netns.ping(str(s2.underlay_ip)), "ICMP must still pass: the fault is UDP only"
    time.sleep(0.3)
    assert topology.faults.dropped_packets(rule) == 1
    topology.faults.restore(rule)
    send("after-restore")
    deadline = time.monotonic() + 5
    while "after-restore" not in receiver.output():
        assert time.monotonic() < deadline, receiver.output_tail()
        time.sleep(0.05)
    assert "while-dropped" not in receiver.output()


def test_mtu_is_applied_on_the_underlay(lab: Lab) -> None:
    topo = build_standard_topology(lab, sites=2, underlay_mtu=1400)
    s1, s2 = topo.sites
    assert "mtu 1400" in s1.netns.ip("link", "show", "wan0")
    # 1372 bytes of ICMP payload + 28 bytes of headers fill 1400 exactly; one more needs fragmenting.
    fits = s1.netns.run(["ping", "-c1", "-W1", "-M", "do", "-s", "1372", str(s2.underlay_ip)], check=False)
    too_big = s1.netns.run(["ping", "-c1", "-W1", "-M", "do", "-s", "1373", str(s2.underlay_ip)], check=False)
    assert fits.returncode == 0
    assert too_big.returncode != 0


def test_ping_and_iperf3_between_lan_hosts(lab: Lab) -> None:
    topo = build_standard_topology(lab, sites=1, hosts_per_site=2)
    a, b = topo.sites[0].hosts
    rtt = ping(a.netns, str(b.ip), count=5, interval=0.05)
    assert (rtt.transmitted, rtt.received, rtt.loss) == (5, 5, 0.0)
    assert rtt.rtt_min_ms is not None and rtt.rtt_max_ms is not None and rtt.rtt_avg_ms is not None
    assert 0 < rtt.rtt_min_ms <= rtt.rtt_avg_ms <= rtt.rtt_max_ms

    result = iperf3_tcp(lab, b.netns, a.netns, str(b.ip), seconds=1)
    assert result.mbit_per_s > 10
    assert result.bytes_received > 0
    assert result.retransmits >= 0

    lost = ping(a.netns, "10.99.0.1", count=2, interval=0.2, deadline=1)
    assert lost.received == 0 and lost.loss == 1.0 and lost.rtt_avg_ms is None


def test_namespace_role_and_interface_names_are_checked(lab: Lab) -> None:
    ns = lab.namespace("checks")
    with pytest.raises(ValueError, match="already exists"):
        lab.namespace("checks")
    with pytest.raises(ValueError, match="invalid namespace role"):
        lab.namespace("Bad Role")
    with pytest.raises(ValueError, match="invalid interface name"):
        lab.veth(ns, "this-name-is-too-long", ns, "x")
    with pytest.raises(LabError, match="exit code"):
        ns.ip("link", "set", "nonexistent0", "up")
