"""The control-plane demo: a controller on the embedded defaults (SQLite in a data directory) and
two agents enrolling with it on loopback, run as the real commands an operator would type."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trellis.lab.ports import free_port_pair

BIN = Path(sys.executable).parent
SITES = (("branch-a", "10.1.0.0/24", "region=eu"), ("dc-1", "10.9.0.0/16", "role=dc"))
POLICY = """\
apiVersion: trellis/v1
kind: Policy
rules:
  - name: branches-to-dc
    from: {region: eu}
    to: {role: dc}
    ports: [tcp/443, icmp]
tests:
  - {from: branch-a, to: dc-1, proto: tcp, port: 443, expect: allow}
  - {from: dc-1, to: branch-a, proto: tcp, port: 22, expect: deny}
"""
STARTUP_TIMEOUT = 30.0


class DemoError(RuntimeError):
    pass


def _command(*args: str, env: dict[str, str] | None = None) -> str:
    shown = " ".join(a if len(a) < 60 else a[:20] + "..." for a in args)
    print(f"$ {shown}", flush=True)
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        raise DemoError(f"{args[0]} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def _wait(predicate: Any, what: str, logs: list[Path]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tails = "\n".join(f"--- {log}:\n{log.read_text()[-2000:]}" for log in logs if log.exists())
    raise DemoError(f"timed out waiting for {what}\n{tails}")


def _agent_status(state_dir: Path) -> dict[str, Any] | None:
    result = subprocess.run(
        [str(BIN / "trellis-agent"), "status", "--state-dir", str(state_dir), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(result.stdout) if result.returncode == 0 else None


def run_demo(directory: Path, *, keep_running: bool) -> int:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    data = directory / "controller"
    port = free_port_pair()
    env = {
        **os.environ,
        "TRELLIS_CONTROLLER": f"127.0.0.1:{port}",
        "TRELLIS_CREDENTIALS": str(data / "admin.pem"),
    }
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def spawn(name: str, *args: str, extra_env: dict[str, str] | None = None) -> None:
        log = directory / f"{name}.log"
        logs.append(log)
        print(f"$ {' '.join(args)} &   (log: {log})", flush=True)
        with log.open("w") as out:
            processes.append(
                subprocess.Popen(
                    [str(BIN / args[0]), *args[1:]],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**env, **(extra_env or {})},
                )
            )

    try:
        print(
            _command("trellis-controller", "init", "--data-dir", str(data), "--trust-domain", "demo.trellis")
        )
        spawn(
            "controller",
            "trellis-controller",
            "serve",
            "--data-dir",
            str(data),
            "--listen",
            f"127.0.0.1:{port}",
        )
        _wait(lambda: "serving demo.trellis" in logs[0].read_text(), "the controller", logs)
        for name, subnet, label in SITES:
            added = json.loads(
                _command(
                    "trellisctl", "site", "add", name, "--subnet", subnet, "--label", label, "--json", env=env
                )
            )
            print(f"  join token for {name}: {added['token']['token'][:24]}... (single use)\n")
            spawn(
                f"agent-{name}",
                "trellis-agent",
                "run",
                "--state-dir",
                str(directory / name),
                "--controller",
                f"127.0.0.1:{port}",
                "--no-mesh",  # both agents share loopback: control plane only (trellis-lab up has tunnels)
                extra_env={"TRELLIS_TOKEN": added["token"]["token"]},
            )
        (directory / "policy.yaml").write_text(POLICY)
        print(_command("trellisctl", "policy", "apply", "-f", str(directory / "policy.yaml"), env=env))
        for name, _, _ in SITES:

            def connected(state_dir: Path = directory / name) -> bool:
                status = _agent_status(state_dir)
                return status is not None and status["connection"] == "connected" and status["peers"] == 1

            _wait(connected, f"agent {name} to connect and see its peer", logs)
        for name, _, _ in SITES:
            print(_command("trellis-agent", "status", "--state-dir", str(directory / name)))
        print(_command("trellisctl", "site", "list", env=env))
        print(
            _command(
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
        )
        print(_command("trellisctl", "audit", "--limit", "10", env=env))
        if keep_running:
            exports = " ".join(f"{k}={env[k]}" for k in ("TRELLIS_CONTROLLER", "TRELLIS_CREDENTIALS"))
            print(f"running; environment for trellisctl:\n  export {exports}")
            print("press Ctrl-C to stop", flush=True)
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
