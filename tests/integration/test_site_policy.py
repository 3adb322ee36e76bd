"""A policy view enforced by the data plane of real ``trellis-agent run --config`` sites.

Two sites in network namespaces, tunnel negotiated by IKE, each with the view the controller's
own compiler makes for it (trellis.controller.policy) from a policy that lets site1 open
tcp/5201 and ping towards site2, and nothing the other way. Checked from the LAN hosts: the TCP
transfer works both ways of the connection (its replies cross from one worker process to the
other), pings get answers, site2's pings and connections towards site1 are dropped and counted
in ``trellis-agent status``; a view reloaded on SIGHUP that still allows a live connection keeps
it going, one that does not ends it at once.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from tests.support.lan import TRANSFER
from trellis.controller.ca import CertificateAuthority
from trellis.controller.policy import Inventory, Site, compile_view, parse_policy
from trellis.controller.policy.wire import view_to_proto
from trellis.lab.anchor import TRUST_DOMAIN
from trellis.lab.process import BackgroundProcess
from trellis.lab.topology import Site as LabSite
from trellis.lab.topology import StandardTopology
from trellis.lab.trellis_site import TrellisSite, agent_yaml, wait_until
from trellis.v1 import common_pb2
from trellis.v1.identity import Identity

pytestmark = pytest.mark.netns

PORT = 5201
POLICY = """
apiVersion: trellis/v1
kind: Policy
rules:
  - name: site1-to-site2
    from: site1
    to: site2
    ports: [tcp/5201, icmp]
"""
# the same access under other names, plus DNS: the live connection must go on
STILL_ALLOWS = """
apiVersion: trellis/v1
kind: Policy
rules:
  - {name: iperf, from: site1, to: site2, ports: [tcp/5201]}
  - {name: ping-and-dns, from: site1, to: site2, ports: [icmp, udp/53]}
"""
PING_ONLY = """
apiVersion: trellis/v1
kind: Policy
rules:
  - {name: ping, from: site1, to: site2, ports: [icmp]}
"""

# A connection that exchanges a 64-byte message every 0.1 s; the client prints each echo.
ECHO = textwrap.dedent(
    """
    import socket, sys, time
    role, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if role == "server":
        listener = socket.create_server((address, port))
        print("listening", flush=True)
        conn, _ = listener.accept()
        while data := conn.recv(4096):
            conn.sendall(data)
    else:
        conn = socket.create_connection((address, port), timeout=5)
        conn.settimeout(1.0)
        echoes = 0
        while True:
            conn.sendall(b"m" * 64)
            try:
                got = 0
                while got < 64:
                    got += len(conn.recv(64 - got))
                echoes += 1
                print("echo", echoes, flush=True)
            except TimeoutError:
                print("timeout", echoes, flush=True)
            time.sleep(0.1)
    """
)
CONNECT = textwrap.dedent(
    """
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
        print("connected")
    except TimeoutError:
        print("timed out")
    except OSError as e:
        print("error", e)
    """
)
LISTEN = textwrap.dedent(
    """
    import socket, sys, time
    listener = socket.create_server((sys.argv[1], int(sys.argv[2])))
    print("listening", flush=True)
    time.sleep(30)
    """
)


def views(topology: StandardTopology, policy: str, version: int) -> dict[str, bytes]:
    """Each site's PolicyView, compiled from ``policy`` by the controller's compiler, serialized."""
    inventory = Inventory(
        [
            Site.build(name=s.name, identity=Identity.site(TRUST_DOMAIN, s.name).uri, subnets=[str(s.lan)])
            for s in topology.sites
        ]
    )
    compiled = parse_policy(policy)
    now = dt.datetime.now(dt.UTC)
    return {
        s.name: view_to_proto(
            compile_view(compiled, inventory, s.name, now), policy_version=version
        ).SerializeToString()
        for s in topology.sites
    }


@dataclass
class PolicyPair:
    topology: StandardTopology
    a: TrellisSite  # site1
    b: TrellisSite  # site2

    def diagnostics(self) -> str:
        return f"{self.a.diagnostics()}\n{self.b.diagnostics()}"

    def wait_up(self, timeout: float = 30.0) -> None:
        def up() -> bool:
            ca, cb = self.a.installed_child(), self.b.installed_child()
            return ca is not None and cb is not None and "esp" in ca and "esp" in cb

        wait_until("the CHILD SA on both sides", up, timeout, self.diagnostics)

    def install_views(self, policy: str, version: int) -> None:
        """Write the compiled views (site1 binary, site2 JSON), SIGHUP both agents and wait
        until both enforce ``version``."""
        compiled = views(self.topology, policy, version)
        for side in (self.a, self.b):
            view_file(side).write_bytes(as_file(side, compiled[side.site.name]))
            assert side.process is not None
            os.kill(side.process.pid, signal.SIGHUP)
        for side in (self.a, self.b):

            def enforced(side: TrellisSite = side) -> bool:
                return ((side.status() or {}).get("policy") or {}).get("version") == version

            wait_until(f"policy version {version} at {side.site.name}", enforced, 15, self.diagnostics)


def view_file(side: TrellisSite) -> Path:
    return side.directory / ("view.binpb" if side.site.name == "site1" else "view.json")


def as_file(side: TrellisSite, data: bytes) -> bytes:
    if side.site.name == "site1":
        return data
    return json_format.MessageToJson(common_pb2.PolicyView.FromString(data)).encode()


@pytest.fixture
def policy_pair(topology: StandardTopology) -> Iterator[Callable[..., PolicyPair]]:
    """``make(policy, enforce=("site1", "site2"))``: both sites started, the named ones with
    their compiled view of ``policy`` (version 1) in ``policy_view``."""
    ca = CertificateAuthority.create(TRUST_DOMAIN, now=dt.datetime.now(dt.UTC))
    site1, site2 = topology.sites

    def make(policy: str = POLICY, enforce: tuple[str, ...] = ("site1", "site2")) -> PolicyPair:
        compiled = views(topology, policy, 1)
        sides: dict[str, TrellisSite] = {}
        for local, remote in ((site1, site2), (site2, site1)):
            side = TrellisSite.in_lab(topology.lab, local)
            side.install_credentials(ca)
            extra = "dataplane: {tun_name: trellis0}"
            if local.name in enforce:
                view_file(side).write_bytes(as_file(side, compiled[local.name]))
                extra += f"\npolicy_view: {view_file(side).name}"
            side.write_config(
                agent_yaml(
                    local,
                    remote,
                    auth="{certificate: default, ca: ca.pem}",
                    initiate=local is site1,
                    remote_id=Identity.site(TRUST_DOMAIN, remote.name).uri,
                    extra=extra,
                )
            )
            sides[local.name] = side
        sides["site2"].start()
        wait_until(
            "site2's status", lambda: sides["site2"].status() is not None, 30, sides["site2"].diagnostics
        )
        sides["site1"].start()
        pair = PolicyPair(topology=topology, a=sides["site1"], b=sides["site2"])
        pair.wait_up()
        return pair

    yield make


def tcp_transfer(
    topology: StandardTopology, client: LabSite, server: LabSite, size: int = 1 << 20
) -> tuple[str, str]:
    """``size`` bytes each way over one connection to port 5201, checked by SHA-256."""
    argv = [sys.executable, "-c", TRANSFER]
    host_c, host_s = client.hosts[0], server.hosts[0]
    srv = topology.lab.start(
        host_s.netns, [*argv, "server", str(host_s.ip), str(size), str(PORT)], name="tcp-server"
    )
    wait_until("the TCP server", lambda: "listening" in srv.output(), 10, srv.output_tail)
    done = host_c.netns.run([*argv, "client", str(host_s.ip), str(size), str(PORT)], timeout=60)
    srv.wait(30)
    return srv.output().strip().splitlines()[-1], done.stdout.strip()


def connect(topology: StandardTopology, client: LabSite, server: LabSite, name: str) -> str:
    """A TCP connection attempt to a listener on port 5201: 'connected', 'timed out', ..."""
    host_s = server.hosts[0]
    listener = topology.lab.start(
        host_s.netns,
        [sys.executable, "-c", LISTEN, str(host_s.ip), str(PORT)],
        name=name,
    )
    wait_until("the listener", lambda: "listening" in listener.output(), 10, listener.output_tail)
    done = client.hosts[0].netns.run([sys.executable, "-c", CONNECT, str(host_s.ip), str(PORT)], timeout=20)
    listener.stop()
    return done.stdout.strip()


def echoes(client: BackgroundProcess) -> int:
    lines = [line for line in client.output().splitlines() if line.startswith("echo ")]
    return int(lines[-1].split()[1]) if lines else 0


def policy_drops(side: TrellisSite) -> dict[str, int]:
    document = side.fresh_status()
    reasons: dict[str, int] = document["dataplane"]["policy_reasons"]
    return reasons


def traffic(side: TrellisSite) -> dict[str, Any]:
    counters: dict[str, Any] = side.fresh_status()["dataplane"]["traffic"]
    return counters


def test_the_compiled_view_allows_one_way_and_its_replies(
    topology: StandardTopology, policy_pair: Callable[..., PolicyPair]
) -> None:
    pair = policy_pair()
    site1, site2 = topology.sites
    h1, h2 = site1.hosts[0], site2.hosts[0]
    for side in (pair.a, pair.b):
        assert side.fresh_status()["policy"]["version"] == 1
    # site1 -> site2: TCP 5201 both ways of the connection, and ping with its answers
    assert tcp_transfer(topology, site1, site2) == (
        "server received 1048576 OK",
        "client received 1048576 OK",
    )
    assert h1.netns.ping(str(h2.ip), count=3)
    # site2 -> site1: nothing (site2's own view has no rule for it: its outbound worker drops)
    assert not h2.netns.ping(str(h1.ip), count=2, timeout=1.0)
    assert connect(topology, site2, site1, "listener-1") == "timed out"
    drops = policy_drops(pair.b)
    assert drops.get("no-rule", 0) >= 3, drops  # 2 echo requests, SYN and its retransmissions
    text = pair.b.status_command(as_json=False)
    assert "policy drops: no-rule" in text
    assert "policy:       version 1, 1 peers" in text
    report = pair.b.status_command()
    assert report["tunnels"]["site"]["dataplane"]["policy_reasons"]["no-rule"] >= 3
    # the flows crossed between the worker processes of each site
    for side in (pair.a, pair.b):
        counters = traffic(side)
        assert counters["flow_records_published"] >= 2 and counters["flow_records_imported"] >= 2, counters
        assert counters.get("flow_records_dropped_full", 0) == 0
        assert policy_drops(side).get("flow-channel-full", 0) == 0
    assert policy_drops(pair.a) == {}  # nothing site1 sent or received was refused


def test_the_receiving_site_enforces_its_view_alone(
    topology: StandardTopology, policy_pair: Callable[..., PolicyPair]
) -> None:
    pair = policy_pair(enforce=("site1",))  # site2 runs without a policy view: it lets all through
    site1, site2 = topology.sites
    h1, h2 = site1.hosts[0], site2.hosts[0]
    assert pair.b.fresh_status()["policy"] is None
    assert tcp_transfer(topology, site1, site2) == (
        "server received 1048576 OK",
        "client received 1048576 OK",
    )
    assert h1.netns.ping(str(h2.ip), count=2)
    # site1's inbound worker refuses what site2 opens
    assert not h2.netns.ping(str(h1.ip), count=2, timeout=1.0)
    assert connect(topology, site2, site1, "listener-2") == "timed out"
    assert policy_drops(pair.a).get("no-rule", 0) >= 3
    assert policy_drops(pair.b) == {}


def test_a_reloaded_view_keeps_or_ends_a_live_connection(
    topology: StandardTopology, policy_pair: Callable[..., PolicyPair]
) -> None:
    pair = policy_pair()
    site1, site2 = topology.sites
    h1, h2 = site1.hosts[0], site2.hosts[0]
    argv = [sys.executable, "-c", ECHO]
    server = topology.lab.start(h2.netns, [*argv, "server", str(h2.ip), str(PORT)], name="echo-server")
    wait_until("the echo server", lambda: "listening" in server.output(), 10, server.output_tail)
    client = topology.lab.start(h1.netns, [*argv, "client", str(h2.ip), str(PORT)], name="echo-client")
    wait_until("10 echoes", lambda: echoes(client) >= 10, 20, client.output_tail)

    pair.install_views(STILL_ALLOWS, 2)
    before = echoes(client)
    wait_until(
        "10 more echoes under version 2", lambda: echoes(client) >= before + 10, 10, client.output_tail
    )
    assert "timeout" not in client.output()  # not one message lost its answer
    ended = sum(traffic(side).get("policy_flows_ended", 0) for side in (pair.a, pair.b))
    assert ended == 0

    drops_before = policy_drops(pair.a).get("no-rule", 0)
    pair.install_views(PING_ONLY, 3)
    settled = echoes(client)
    wait_until("the client to time out", lambda: "timeout" in client.output(), 10, client.output_tail)
    assert echoes(client) <= settled + 1  # at most one answer was already on its way
    assert h1.netns.ping(str(h2.ip), count=2)  # ping is still allowed
    assert policy_drops(pair.a).get("no-rule", 0) > drops_before  # the client's messages
    assert traffic(pair.a)["policy_flows_ended"] >= 1
    assert client.poll() is None and server.poll() is None  # the connection is stuck, not reset
