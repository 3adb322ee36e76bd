"""End to end: a controller and three sites in network namespaces. Agents enroll with join tokens,
receive their views, build IKEv2/ESP tunnels through the userspace data plane; policy decides what
passes (tunnels and the packet filter); a revocation takes a site off the mesh at once."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator

import pytest

from trellis.lab.mesh import MeshLab
from trellis.lab.netns import Lab
from trellis.lab.up import POLICY, SITES, TUNNELS

SSH_RULE = "  - name: dc-ssh-to-branches\n    from: {role: dc}\n    to: {role: branch}\n    ports: [tcp/22]\n"
WITH_SSH = (
    POLICY.replace("tests:", SSH_RULE + "tests:").replace(
        "port: 22, expect: deny", "port: 22, expect: allow"
    )  # the document's own test follows
)


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


pytestmark = pytest.mark.netns


@pytest.fixture
def mesh() -> Iterator[MeshLab]:
    with Lab() as lab:
        built = MeshLab.build(lab, list(SITES))
        built.start_controller()
        try:
            yield built
        finally:
            built.stop()


LISTENER = (
    "import socket,sys\n"
    "s=socket.create_server(('0.0.0.0',int(sys.argv[1])));s.settimeout(6)\n"
    "print('listening',flush=True)\n"
    "c,_=s.accept();c.sendall(b'ok');c.close()\n"
)
CONNECT = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=3)\n"
    "print(c.recv(2).decode())\n"
)


_listeners = itertools.count()


def tcp_connects(mesh: MeshLab, source: str, destination: str, port: int) -> bool:
    """Whether the first LAN host of ``source`` gets a TCP answer from ``destination``'s."""
    server = mesh.sites[destination].site.hosts[0]
    client = mesh.sites[source].site.hosts[0]
    name = f"listen-{destination}-{next(_listeners)}"
    listener = mesh.lab.start(server.netns, ["python3", "-c", LISTENER, str(port)], name=name)
    try:
        if not wait_until(lambda: "listening" in listener.output(), timeout=10):
            raise AssertionError(f"the listener did not start:\n{listener.output_tail()}")
        result = client.netns.run(["python3", "-c", CONNECT, str(server.ip), str(port)], check=False)
        return result.returncode == 0 and result.stdout.strip() == "ok"
    finally:
        listener.stop(grace=1)


def test_a_policy_driven_mesh(mesh: MeshLab) -> None:
    tokens = {name: mesh.add_site(name, labels) for name, labels in SITES.items()}
    assert "applied version 1" in mesh.apply_policy(POLICY)
    for name, token in tokens.items():
        mesh.start_agent(name, token)
    mesh.wait_for_tunnels(TUNNELS)

    # Tunnels exist only where policy allows traffic; packets the rules allow pass.
    assert mesh.ping("branch-a", "hq")
    assert mesh.ping("hq", "branch-b")
    assert not mesh.ping("branch-a", "branch-b", count=1)  # no tunnel: default deny
    assert tcp_connects(mesh, "branch-a", "hq", 443)
    # Selectors are exact here, so what the rules do not allow has no SA to leave by.
    assert not tcp_connects(mesh, "branch-a", "hq", 22)
    assert not tcp_connects(mesh, "hq", "branch-a", 443)  # hq may only ping branches

    # A policy change reaches the live mesh. With rules in both directions on different ports
    # the selectors must be wider than the rules, and the packet filter narrows.
    assert "applied version 2" in mesh.apply_policy(WITH_SSH)
    mesh.wait_for_tunnels(TUNNELS)
    assert wait_until(lambda: tcp_connects(mesh, "hq", "branch-a", 22))
    assert tcp_connects(mesh, "branch-a", "hq", 443)
    assert not tcp_connects(mesh, "branch-a", "hq", 22)  # filtered at branch-a on the way out
    assert not tcp_connects(mesh, "hq", "branch-a", 443)  # filtered at hq
    for name in ("branch-a", "hq"):
        status = mesh.sites[name].status()
        assert status is not None
        dataplane = status["tunnels"]["site"]["dataplane"]
        assert dataplane["drops"].get("policy", 0) >= 1, (name, dataplane)

    # Revocation: branch-b's agent stops, hq's tunnel to it goes, traffic to it stops.
    mesh.trellisctl("site", "revoke", "branch-b", "--reason", "test")
    mesh.wait_for_tunnels({"hq": {"branch-a"}, "branch-a": {"hq"}}, timeout=20)
    process = mesh.sites["branch-b"].process
    assert process is not None and process.poll() == 3
    assert not mesh.ping("hq", "branch-b", count=1)
    assert mesh.ping("branch-a", "hq")
