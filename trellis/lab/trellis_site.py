"""A Trellis site in the lab: ``trellis-agent run --config`` in a site namespace, its files in
the lab's work directory (agent.yaml, site.pem/site.key/ca.pem, keys/, state/, events.jsonl,
status.json), and what tests and benchmarks read from it: events, status, key log, and the
``trellis-agent status`` command.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from trellis.controller.ca import CertificateAuthority, write_private_key
from trellis.lab.anchor import CHILD, issue_site_certificate
from trellis.lab.netns import Lab
from trellis.lab.process import BackgroundProcess, LabError
from trellis.lab.topology import Site

AGENT = Path(sys.executable).parent / "trellis-agent"
STATE_DIR = "state"
KEYLOG_DIR = "keys"
ESP_TABLE = "esp_sa"  # the key log's esp_sa file (trellis.agent.ike.keylogfile.ESP_TABLE)
TUNNELS_FILE = "tunnels.json"  # what the agent writes in its state dir (trellis.agent.site.status)


def wait_until(
    what: str, predicate: Callable[[], object], timeout: float, diagnostics: Callable[[], str]
) -> None:
    """Poll ``predicate`` every 0.1 s; LabError with ``diagnostics()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out waiting for {what}\n{diagnostics()}")
        time.sleep(0.1)


@dataclass
class TrellisSite:
    """``trellis-agent run --config`` in a lab site. ``dataplane`` overrides the configuration's
    backend (``none``: IKE only) with ``--dataplane``."""

    lab: Lab
    site: Site
    directory: Path
    dataplane: str | None = None
    process: BackgroundProcess | None = None

    @classmethod
    def in_lab(cls, lab: Lab, site: Site, *, dataplane: str | None = None) -> TrellisSite:
        return cls(
            lab=lab,
            site=site,
            directory=lab.path("trellis", site.name, "agent.yaml").parent,
            dataplane=dataplane,
        )

    @property
    def config_path(self) -> Path:
        return self.directory / "agent.yaml"

    @property
    def state_dir(self) -> Path:
        return self.directory / STATE_DIR

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text)

    def install_credentials(self, ca: CertificateAuthority) -> None:
        """A fresh P-256 key and certificate for this site (site.pem, site.key) and the CA (ca.pem)."""
        cert, key = issue_site_certificate(ca, self.site.name)
        (self.directory / "site.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private_key(self.directory / "site.key", key)
        (self.directory / "ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))

    def start(self, *, log_level: str = "debug") -> None:
        argv = [str(AGENT), "run", "--config", str(self.config_path), "--state-dir", str(self.state_dir)]
        if self.dataplane is not None:
            argv += ["--dataplane", self.dataplane]
        self.process = self.lab.start(
            self.site.netns,
            [*argv, "--log-level", log_level],
            name=f"trellis-{self.site.name}",
            env={"PYTHONUNBUFFERED": "1"},
        )

    def stop(self, *, grace: float = 10.0) -> int | None:
        """SIGTERM, and the exit code (None if it had to be killed)."""
        if self.process is None:
            return None
        return self.process.stop(sig=signal.SIGTERM, grace=grace)

    # --- what it says ----------------------------------------------------------------------

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.directory / "events.jsonl"
        if not path.exists():
            return []
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in records if kind is None or r["event"] == kind]

    def status(self) -> dict[str, Any] | None:
        """The agent's status document (tunnels.json in its state dir), or None before the first."""
        path = self.state_dir / TUNNELS_FILE
        try:
            document: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return document

    def fresh_status(self, timeout: float = 10.0) -> dict[str, Any]:
        """A status document written after this call (the agent rewrites it every second)."""
        before = float((self.status() or {}).get("time", 0.0))

        def newer() -> bool:
            return float((self.status() or {}).get("time", 0.0)) > before

        wait_until("a fresh status", newer, timeout, self.diagnostics)
        status = self.status()
        if status is None:
            raise LabError(f"no status\n{self.diagnostics()}")
        return status

    def current_sa(self) -> dict[str, Any] | None:
        """The one established IKE SA, or None (none, or several)."""
        status = self.status()
        if status is None:
            return None
        sas = [s for s in status["ike_sas"] if s["state"] == "established"]
        return sas[0] if len(sas) == 1 else None

    def installed_child(self, name: str = CHILD) -> dict[str, Any] | None:
        """The installed CHILD SA ``name`` of the one established IKE SA, with its counters."""
        sa = self.current_sa()
        children = [
            c for c in (sa or {}).get("children", []) if c["name"] == name and c["state"] == "installed"
        ]
        return children[0] if len(children) == 1 else None

    def status_command(self, *, as_json: bool = True) -> Any:
        """``trellis-agent status --state-dir DIR [--json]`` as the operator would run it."""
        argv = [str(AGENT), "status", "--state-dir", str(self.state_dir)] + (["--json"] if as_json else [])
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise LabError(f"trellis-agent status failed ({done.returncode}): {done.stderr}")
        return json.loads(done.stdout) if as_json else done.stdout

    def esp_keylog_rows(self) -> list[str]:
        """The esp_sa rows of the agent's key log (Wireshark's format)."""
        path = self.directory / KEYLOG_DIR / ESP_TABLE
        if not path.exists():
            return []
        return [line for line in path.read_text().splitlines() if line.strip()]

    def diagnostics(self) -> str:
        log = self.process.output_tail(40) if self.process is not None else ""
        return f"--- trellis {self.site.name} events ---\n{self.events()}\n--- trellis log ---\n{log}"

    def wait_event(self, kind: str, *, count: int = 1, timeout: float = 20.0) -> dict[str, Any]:
        wait_until(f"{count} x {kind}", lambda: len(self.events(kind)) >= count, timeout, self.diagnostics)
        return self.events(kind)[count - 1]


def agent_yaml(
    local: Site,
    remote: Site,
    *,
    auth: str,
    initiate: bool,
    remote_id: str,
    local_id: str | None = None,
    ike_proposals: tuple[str, ...] = ("aes256gcm16-prfsha256-x25519-ecp256-ecp384",),
    esp_proposals: tuple[str, ...] = ("aes256gcm16",),
    ike_lifetime: str = "",
    esp_lifetime: str = "",
    dpd: str = "30s",
    extra: str = "",
) -> str:
    """The configuration of ``local`` with one peer, ``remote``: LAN to LAN, key log in keys/,
    status.json and events.jsonl; ``extra`` adds top-level lines (e.g. a dataplane section)."""
    local_id_line = f'    local_id: "{local_id}"\n' if local_id else ""
    return f"""
listen: {{address: {local.underlay_ip}}}
retransmit: {{timeout: 0.5, base: 1.5, tries: 3}}
keylog: {KEYLOG_DIR}
status_file: status.json
events_file: events.jsonl
{extra}
credentials:
  default: {{certificate: site.pem, key: site.key}}
peers:
  - name: {remote.name}
    address: {remote.underlay_ip}
    auth: {auth}
{local_id_line}    remote_id: "{remote_id}"
    initiate: {str(initiate).lower()}
    dpd: {dpd}
    ike: {{proposals: {json.dumps(list(ike_proposals))}{ike_lifetime}}}
    children:
      - name: {CHILD}
        local_ts: [{local.lan}]
        remote_ts: [{remote.lan}]
        esp: {{proposals: {json.dumps(list(esp_proposals))}{esp_lifetime}}}
"""
