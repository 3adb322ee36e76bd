"""The three commands as an operator runs them: trellis-controller, trellisctl, trellis-agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trellis.lab.ports import free_port_pair

BIN = Path(sys.executable).parent


def run(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


class Process:
    def __init__(self, *args: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._file = log.open("w")
        self.proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], stdout=self._file, stderr=subprocess.STDOUT, env=env
        )

    def wait_for_output(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in output:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()
        return self.proc.returncode


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


def wait_until(predicate: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def agent_status(state_dir: Path) -> dict[str, Any]:
    return dict(json.loads(run("trellis-agent", "status", "--state-dir", str(state_dir), "--json").stdout))


BROKEN_POLICY = """\
apiVersion: trellis/v1
kind: Policy
rules:
  - name: web
    from: {region: eu}
    to: dc-1
    ports: [tcp/99999]
"""

POLICY = """\
apiVersion: trellis/v1
kind: Policy
rules:
  - name: branches-to-dc
    from: {region: eu}
    to: dc-1
    ports: [tcp/443, icmp]
  - name: dc-to-branches
    from: dc-1
    to: {region: eu}
    ports: [udp/5000-5010]
tests:
  - {from: branch-a, to: dc-1, proto: tcp, port: 443, expect: allow}
  - {from: branch-a, to: dc-1, proto: tcp, port: 22, expect: deny}
"""


def apply_policy(tmp_path: Path, env: dict[str, str]) -> None:
    """The policy commands as an operator uses them, ending with POLICY running."""
    (tmp_path / "broken.yaml").write_text(BROKEN_POLICY)
    refused = run("trellisctl", "policy", "apply", "-f", str(tmp_path / "broken.yaml"), env=env, check=False)
    assert refused.returncode == 1
    assert f"{tmp_path / 'broken.yaml'}:7:13: error: rules[0].ports[0]: invalid port" in refused.stdout
    assert "the running policy (version 0) is unchanged" in refused.stdout

    (tmp_path / "policy.yaml").write_text(POLICY)
    dry = run("trellisctl", "policy", "apply", "-f", str(tmp_path / "policy.yaml"), "--dry-run", env=env)
    assert "dry run: 2 sites would get a new view" in dry.stdout
    assert "+ spiffe://corp.example/site/branch-a -> spiffe://corp.example/site/dc-1" in dry.stdout
    assert "tests: 2 of 2 passed" in dry.stdout
    deny = run(
        "trellisctl",
        "policy",
        "check",
        "--from",
        "branch-a",
        "--to",
        "dc-1",
        "--proto",
        "tcp",
        "--port",
        "443",
        env=env,
        check=False,
    )
    assert deny.returncode == 1 and deny.stdout.startswith("deny")  # nothing applied yet

    applied = run(
        "trellisctl", "policy", "apply", "-f", str(tmp_path / "policy.yaml"), "--comment", "first", env=env
    )
    assert "applied version 1: 2 sites get a new view" in applied.stdout
    allow = run(
        "trellisctl",
        "policy",
        "check",
        "--from",
        "branch-a",
        "--to",
        "dc-1",
        "--proto",
        "tcp",
        "--port",
        "443",
        env=env,
    )
    assert allow.stdout.startswith("allow: rule 'branches-to-dc' (line 4, column 5) allows branch-a -> dc-1")
    reverse = run(
        "trellisctl",
        "policy",
        "check",
        "--from",
        "dc-1",
        "--to",
        "branch-a",
        "--proto",
        "tcp",
        "--port",
        "443",
        env=env,
        check=False,
    )
    assert reverse.returncode == 1
    shown = run("trellisctl", "policy", "show", env=env).stdout
    assert shown.startswith("# version 1") and "branches-to-dc" in shown
    history = json.loads(run("trellisctl", "policy", "history", "--json", env=env).stdout)["versions"]
    assert [(v["version"], v["comment"]) for v in history] == [("1", "first")]  # uint64 is a JSON string


def test_an_operator_session(tmp_path: Path, processes: list[Process]) -> None:
    data = tmp_path / "controller"
    out = run("trellis-controller", "init", "--data-dir", str(data), "--trust-domain", "corp.example").stdout
    assert "CA pin" in out
    assert (data / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (data / "admin.pem").stat().st_mode & 0o777 == 0o600
    again = run(
        "trellis-controller", "init", "--data-dir", str(data), "--trust-domain", "corp.example", check=False
    )
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr

    port = free_port_pair()
    controller = Process(
        "trellis-controller",
        "serve",
        "--data-dir",
        str(data),
        "--listen",
        f"127.0.0.1:{port}",
        "--cert-ttl",
        "30m",
        log=tmp_path / "controller.log",
    )
    processes.append(controller)
    controller.wait_for_output("serving corp.example")
    env = {
        **os.environ,
        "TRELLIS_CONTROLLER": f"127.0.0.1:{port}",
        "TRELLIS_CREDENTIALS": str(data / "admin.pem"),
    }

    added = json.loads(
        run(
            "trellisctl",
            "site",
            "add",
            "branch-a",
            "--subnet",
            "10.1.0.0/24",
            "--label",
            "region=eu",
            "--json",
            env=env,
        ).stdout
    )
    assert added["site"]["identity"] == "spiffe://corp.example/site/branch-a"
    human = run("trellisctl", "site", "add", "dc-1", "--subnet", "10.9.0.0/16", env=env).stdout
    assert "added site dc-1" in human and "trellis1." in human
    token_b = human.split("\n")[2].strip()

    bad = run("trellisctl", "site", "add", "x", "--subnet", "10.0.0.1/24", env=env, check=False)
    assert bad.returncode == 1 and "invalid subnet" in bad.stderr and "invalid_argument" in bad.stderr
    dup = run("trellisctl", "site", "add", "dc-1", "--subnet", "10.8.0.0/16", env=env, check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr

    apply_policy(tmp_path, env)

    agent_env = {**env, "TRELLIS_TOKEN": added["token"]["token"]}
    agent_a = Process(
        "trellis-agent",
        "run",
        "--state-dir",
        str(tmp_path / "a"),
        "--controller",
        f"127.0.0.1:{port}",
        "--endpoint",
        "192.0.2.1",
        "--no-mesh",  # two agents on one loopback: the control plane only
        log=tmp_path / "a.log",
        env=agent_env,
    )
    processes.append(agent_a)
    agent_b = Process(
        "trellis-agent",
        "run",
        "--state-dir",
        str(tmp_path / "b"),
        "--controller",
        f"127.0.0.1:{port}",
        "--token",
        token_b,
        "--endpoint",
        "192.0.2.2:4500",
        "--no-mesh",
        log=tmp_path / "b.log",
    )
    processes.append(agent_b)
    agent_a.wait_for_output("spiffe://corp.example/site/branch-a, certificate")
    agent_b.wait_for_output("spiffe://corp.example/site/dc-1, certificate")
    wait_until(lambda: agent_status(tmp_path / "a")["connection"] == "connected", what="agent a connected")
    wait_until(lambda: agent_status(tmp_path / "b")["peers"] == 1, what="agent b sees a")
    status_a = agent_status(tmp_path / "a")
    assert status_a["identity"] == "spiffe://corp.example/site/branch-a"
    assert status_a["running"] and not status_a["certificate"]["expired"]
    assert "valid for 29m" in run("trellis-agent", "status", "--state-dir", str(tmp_path / "a")).stdout

    sites = json.loads(run("trellisctl", "site", "list", "--json", env=env).stdout)["sites"]
    by_name = {s["name"]: s for s in sites}
    assert by_name["dc-1"]["endpoints"] == [{"address": "192.0.2.2", "port": 4500}]
    assert by_name["branch-a"]["connected"]
    table = run("trellisctl", "site", "list", env=env).stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "STATE", "SUBNETS"]
    shown = run("trellisctl", "site", "show", "branch-a", env=env).stdout
    assert status_a["certificate"]["serial"] in shown

    # Revocation: agent b learns it, agent a stops with exit code 3.
    run("trellisctl", "site", "revoke", "branch-a", "--reason", "decommissioned", env=env)
    assert agent_a.proc.wait(10) == 3
    wait_until(
        lambda: agent_status(tmp_path / "b")["revoked_identities"] == 1, what="b told of the revocation"
    )
    assert agent_status(tmp_path / "b")["peers"] == 0
    refused = run("trellisctl", "token", "create", "branch-a", env=env, check=False)
    assert refused.returncode == 1 and "revoked" in refused.stderr

    status = json.loads(run("trellisctl", "status", "--json", env=env).stdout)
    assert status["trust_domain"] == "corp.example" and status["store"] == "sqlite"
    assert status["revoked_sites"] == 1 and status["cert_ttl_seconds"] == 1800

    audit = json.loads(run("trellisctl", "audit", "--json", env=env).stdout)["entries"]
    seen = {(e["action"], e["outcome"]) for e in audit}
    assert {("site.add", "ok"), ("site.add", "refused"), ("enroll", "ok"), ("site.revoke", "ok")} <= seen
    assert ("token.create", "refused") in seen
    assert ("site.list", "ok") in seen  # reads are audited too

    # A restarted agent without its controller starts from its stored map.
    controller.stop()
    agent_b.stop()
    restarted = Process(
        "trellis-agent", "run", "--state-dir", str(tmp_path / "b"), "--no-mesh", log=tmp_path / "b2.log"
    )
    processes.append(restarted)
    restarted.wait_for_output("starting from the stored map")
    wait_until(lambda: agent_status(tmp_path / "b")["connection"] == "disconnected", what="b disconnected")


def test_clear_errors_for_operator_mistakes(tmp_path: Path) -> None:
    no_credentials = run(
        "trellisctl", "--credentials", str(tmp_path / "missing.pem"), "site", "list", check=False
    )
    assert no_credentials.returncode == 2 and "cannot read credentials" in no_credentials.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRELLIS_")}
    unset = run("trellisctl", "site", "list", env=env, check=False)
    assert unset.returncode == 2 and "TRELLIS_CREDENTIALS" in unset.stderr
    not_init = run("trellis-controller", "serve", "--data-dir", str(tmp_path / "none"), check=False)
    assert not_init.returncode == 2 and "trellis-controller init" in not_init.stderr
    no_token = run("trellis-agent", "run", "--state-dir", str(tmp_path / "agent"), check=False)
    assert no_token.returncode == 2 and "join token" in no_token.stderr
    bad_token = run(
        "trellis-agent",
        "run",
        "--state-dir",
        str(tmp_path / "agent"),
        "--controller",
        "127.0.0.1:9",
        "--token",
        "hello",
        check=False,
    )
    assert bad_token.returncode == 2 and "not a Trellis join token" in bad_token.stderr
    bad_ttl = run("trellis-controller", "serve", "--data-dir", str(tmp_path), "--cert-ttl", "2d", check=False)
    assert bad_ttl.returncode == 2 and "--cert-ttl must be between 5m and 1d" in bad_ttl.stderr
    for command in ("trellis-controller", "trellisctl", "trellis-agent"):
        assert "usage:" in run(command, "--help").stdout
