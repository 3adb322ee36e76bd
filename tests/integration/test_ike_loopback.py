"""Two Trellis agents over real UDP on loopback: in process (asyncio shells) and as
``trellis-agent run --config`` subprocesses, with real time, certificates from the Trellis CA,
rekeys, deletes, peer death and the status and key-log files."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from trellis.agent.ike.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    DownReason,
    Event,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
)
from trellis.agent.ike.keylogfile import ESP_TABLE, IKEV2_TABLE
from trellis.agent.ike.static import StaticAgent
from trellis.agent.ikeconfig import parse_static_config
from trellis.controller.ca import CertificateAuthority, make_csr, write_private_key
from trellis.v1.identity import Identity

LOOPBACK = "127.0.0.1"
AGENT = Path(sys.executable).parent / "trellis-agent"


def free_udp_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_site(directory: Path, ca: CertificateAuthority, name: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    leaf = ca.issue(
        make_csr(key, None), Identity.site("example.org", name), now=now, ttl=dt.timedelta(hours=1)
    )
    (directory / "site.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    write_private_key(directory / "site.key", key)
    (directory / "ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))


def site_config(
    *,
    me: str,
    other: str,
    ports: tuple[int, int],
    peer_ports: tuple[int, int],
    initiate: bool,
    lans: tuple[str, str],
) -> str:
    return f"""
listen: {{address: {LOOPBACK}, ike_port: {ports[0]}, nat_t_port: {ports[1]}}}
retransmit: {{timeout: 0.5, base: 1.5, tries: 3}}
keylog: keys
status_file: status.json
events_file: events.jsonl
credentials:
  default: {{certificate: site.pem, key: site.key}}
peers:
  - name: {other}
    address: {LOOPBACK}
    port: {peer_ports[0]}
    nat_t_port: {peer_ports[1]}
    auth: {{certificate: default, ca: ca.pem}}
    remote_id: spiffe://example.org/site/{other}
    initiate: {str(initiate).lower()}
    dpd: 2s
    children:
      - name: lan
        local_ts: [{lans[0]}]
        remote_ts: [{lans[1]}]
"""


@pytest.fixture
def sites(tmp_path: Path) -> tuple[Path, Path]:
    ca = CertificateAuthority.create("example.org", now=dt.datetime.now(dt.UTC))
    a_ports, b_ports = free_udp_ports(2), free_udp_ports(2)
    for me, other, ports, peer_ports, initiate, lans in (
        ("a", "b", a_ports, b_ports, True, ("10.1.0.0/24", "10.2.0.0/24")),
        ("b", "a", b_ports, a_ports, False, ("10.2.0.0/24", "10.1.0.0/24")),
    ):
        write_site(tmp_path / me, ca, me)
        (tmp_path / me / "agent.yaml").write_text(
            site_config(
                me=me,
                other=other,
                ports=(ports[0], ports[1]),
                peer_ports=(peer_ports[0], peer_ports[1]),
                initiate=initiate,
                lans=lans,
            )
        )
    return tmp_path / "a", tmp_path / "b"


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def _of(events: list[Event], kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in events if isinstance(e, kind)]


async def test_two_agents_in_process(sites: tuple[Path, Path]) -> None:
    events: dict[str, list[Event]] = {"a": [], "b": []}
    esp_at_b: list[tuple[bytes, tuple[str, int]]] = []
    agents = {}
    stops = {name: asyncio.Event() for name in events}
    tasks = []
    for name, directory in zip(("a", "b"), sites, strict=True):
        config = parse_static_config((directory / "agent.yaml").read_text(), base=directory)
        hook = (lambda packet, addr: esp_at_b.append((packet, addr))) if name == "b" else None
        agents[name] = StaticAgent(config, on_event=events[name].append, on_esp=hook)
    for name in ("b", "a"):  # the responder listens first
        tasks.append(asyncio.create_task(agents[name].run(stops[name])))
        await asyncio.sleep(0.05)
    a, b = events["a"], events["b"]
    await wait_for(lambda: bool(_of(a, ChildSaInstalled)) and bool(_of(b, ChildSaInstalled)))
    child_a, child_b = _of(a, ChildSaInstalled)[0].child, _of(b, ChildSaInstalled)[0].child
    assert child_a.outbound_key == child_b.inbound_key and child_a.inbound_spi == child_b.outbound_spi
    sa_id = _of(a, IkeSaUp)[0].ike_sa
    # the data-plane seam: ESP out of a's NAT-T socket arrives at b's on_esp hook
    esp = child_a.outbound_spi + (1).to_bytes(4, "big") + bytes(32)
    agents["a"].shell.send_esp(esp, child_a.remote)
    await wait_for(lambda: bool(esp_at_b))
    assert esp_at_b == [(esp, child_b.remote)]

    shell_a = agents["a"].shell
    shell_a.call(lambda now: shell_a.engine.rekey_child(child_a.inbound_spi, now))
    await wait_for(lambda: bool(_of(b, ChildSaRekeyed)) and bool(_of(a, ChildSaDeleted)))
    shell_a.call(lambda now: shell_a.engine.rekey(sa_id, now))
    await wait_for(lambda: bool(_of(a, IkeSaRekeyed)) and bool(_of(b, IkeSaDown)))
    new_id = _of(a, IkeSaRekeyed)[0].new
    shell_b = agents["b"].shell
    shell_b.call(lambda now: shell_b.engine.delete(new_id, now))
    await wait_for(
        lambda: [e.reason for e in _of(a, IkeSaDown)] == [DownReason.REKEYED, DownReason.PEER_DELETED]
    )
    for name in ("a", "b"):
        stops[name].set()
    await asyncio.gather(*tasks)
    keys = sites[0] / "keys"
    assert stat.S_IMODE((keys / IKEV2_TABLE).stat().st_mode) == 0o600
    assert len((keys / IKEV2_TABLE).read_text().splitlines()) == 2  # the first IKE SA and its rekey
    assert len((keys / ESP_TABLE).read_text().splitlines()) == 4  # two CHILD SAs, two directions


def _events(directory: Path) -> list[dict[str, object]]:
    path = directory / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_file(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_agent_commands_with_static_config(sites: tuple[Path, Path]) -> None:
    site_a, site_b = sites
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes = []
    try:
        for directory in (site_b, site_a):
            processes.append(
                subprocess.Popen(
                    [
                        *(str(AGENT), "run", "--config", str(directory / "agent.yaml")),
                        *("--dataplane", "none", "--log-level", "debug"),  # IKE only, on loopback
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=(directory / "agent.log").open("w"),
                    env=env,
                )
            )
            time.sleep(0.3)
        agent_b, agent_a = processes

        def kinds(directory: Path) -> list[object]:
            return [e["event"] for e in _events(directory)]

        _wait_file(lambda: "ChildSaInstalled" in kinds(site_a) and "ChildSaInstalled" in kinds(site_b))
        up = next(e for e in _events(site_a) if e["event"] == "IkeSaUp")
        assert up["peer_identity"] == "spiffe://example.org/site/b"
        children = [e["child"] for e in _events(site_a) if isinstance(e.get("child"), dict)]
        assert children and not [k for c in children for k in c if str(k).endswith("_key")]  # type: ignore[attr-defined]
        _wait_file(
            lambda: (
                (site_a / "status.json").exists()
                and json.loads((site_a / "status.json").read_text())["ike_sas"]
            )
        )
        shown = subprocess.run(
            [sys.executable, "-m", "trellis.agent.ike.status", str(site_a / "status.json")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "b: established" in shown and "10.1.0.0/24 === 10.2.0.0/24" in shown
        # b dies without a word: a notices within dpd (2 s) + retransmissions (0.5 + 0.75 + 1.1 s)
        agent_b.send_signal(signal.SIGKILL)
        agent_b.wait(timeout=10)
        _wait_file(lambda: "PeerDead" in kinds(site_a), timeout=15)
        agent_a.send_signal(signal.SIGTERM)
        assert agent_a.wait(timeout=10) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
