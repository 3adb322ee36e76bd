"""A whole Trellis mesh on this machine: a controller and N sites in network namespaces.

::

    ctl namespace:   the controller, 192.0.2.250 on the underlay (SQLite in the lab directory)
    site i:          trellis-agent (enrolled with a join token), its TUN device, its LAN hosts

Everything runs as the real commands (trellis-controller, trellisctl, trellis-agent) inside the
namespaces of a ``Lab``, so it all goes away when the lab does. Used by ``trellis-lab up`` and by
the end-to-end tests.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trellis.lab.netns import Lab, Netns
from trellis.lab.process import BackgroundProcess, LabError
from trellis.lab.topology import UNDERLAY, WAN_BRIDGE, Site, StandardTopology, build_standard_topology

BIN = Path(sys.executable).parent
TRUST_DOMAIN = "lab.trellis"
CONTROLLER_ADDRESS = ipaddress.IPv4Interface(f"{UNDERLAY.network_address + 250}/{UNDERLAY.prefixlen}")
CONTROLLER_PORT = 7400
STARTUP_TIMEOUT = 30.0
TUNNEL_TIMEOUT = 60.0


def wait_for(
    what: str, predicate: Callable[[], bool], timeout: float, diagnostics: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out waiting for {what}\n{diagnostics()}")
        time.sleep(0.2)


@dataclass
class LabAgent:
    """One site's agent and what it says of itself."""

    site: Site
    state_dir: Path
    process: BackgroundProcess | None = None

    @property
    def name(self) -> str:
        return self.site.name

    def status(self) -> dict[str, Any] | None:
        result = subprocess.run(
            [str(BIN / "trellis-agent"), "status", "--state-dir", str(self.state_dir), "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
        return dict(json.loads(result.stdout)) if result.returncode == 0 else None

    def status_text(self) -> str:
        result = subprocess.run(
            [str(BIN / "trellis-agent"), "status", "--state-dir", str(self.state_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout + result.stderr

    def established_peers(self) -> set[str]:
        """Peers with an installed CHILD SA, from the agent's own status."""
        status = self.status()
        site = (status or {}).get("tunnels", {}).get("site") or {}
        return {
            sa["peer"]
            for sa in site.get("ike_sas", [])
            if any(child.get("state") == "installed" for child in sa.get("children", []))
        }


@dataclass
class MeshLab:
    lab: Lab
    topology: StandardTopology
    ctl: Netns
    directory: Path
    controller: BackgroundProcess | None = None
    sites: dict[str, LabAgent] = field(default_factory=dict)

    @classmethod
    def build(
        cls, lab: Lab, site_names: Sequence[str], *, hosts_per_site: int = 1, underlay_mtu: int | None = None
    ) -> MeshLab:
        topology = build_standard_topology(
            lab, sites=site_names, hosts_per_site=hosts_per_site, underlay_mtu=underlay_mtu
        )
        ctl = lab.namespace("ctl")
        lab.veth(ctl, "wan0", topology.wan, "ctl", mtu=underlay_mtu)
        lab.bridge_port(topology.wan, WAN_BRIDGE, "ctl")
        ctl.add_address("wan0", CONTROLLER_ADDRESS)
        mesh = cls(lab=lab, topology=topology, ctl=ctl, directory=lab.path("mesh", "README").parent)
        mesh.sites = {
            s.name: LabAgent(site=s, state_dir=mesh.directory / "agents" / s.name) for s in topology.sites
        }
        return mesh

    @property
    def controller_address(self) -> str:
        return f"{CONTROLLER_ADDRESS.ip}:{CONTROLLER_PORT}"

    @property
    def data_dir(self) -> Path:
        return self.directory / "controller"

    # -- the controller -------------------------------------------------------------------------

    def start_controller(self, *, cert_ttl: str = "1h") -> None:
        self.ctl.run(
            [
                str(BIN / "trellis-controller"),
                "init",
                "--data-dir",
                str(self.data_dir),
                "--trust-domain",
                TRUST_DOMAIN,
            ]
        )
        self.controller = self.lab.start(
            self.ctl,
            [
                str(BIN / "trellis-controller"),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--listen",
                self.controller_address,
                "--cert-ttl",
                cert_ttl,
            ],
            name="controller",
        )
        controller = self.controller
        wait_for(
            "the controller",
            lambda: "serving" in controller.output(),
            STARTUP_TIMEOUT,
            controller.output_tail,
        )

    def trellisctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """trellisctl as the lab's administrator, from the controller's namespace."""
        argv = [
            str(BIN / "trellisctl"),
            "--controller",
            self.controller_address,
            "--credentials",
            str(self.data_dir / "admin.pem"),
            *args,
        ]
        result = self.ctl.run(argv, check=False)
        if check and result.returncode != 0:
            raise LabError(f"trellisctl {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result

    def add_site(self, name: str, labels: dict[str, str]) -> str:
        """Add a site with its LAN; returns its join token."""
        site = self.sites[name].site
        label_args = [a for k, v in labels.items() for a in ("--label", f"{k}={v}")]
        added = self.trellisctl("site", "add", name, "--subnet", str(site.lan), *label_args, "--json")
        return str(json.loads(added.stdout)["token"]["token"])

    def apply_policy(self, text: str) -> str:
        path = self.directory / "policy.yaml"
        path.write_text(text)
        return self.trellisctl("policy", "apply", "-f", str(path)).stdout

    # -- agents ---------------------------------------------------------------------------------

    def start_agent(self, name: str, token: str | None, *, extra: Sequence[str] = ()) -> None:
        mesh_site = self.sites[name]
        argv = [
            str(BIN / "trellis-agent"),
            "run",
            "--state-dir",
            str(mesh_site.state_dir),
            "--controller",
            self.controller_address,
            "--max-backoff",
            "2",
            *extra,
        ]
        if token is not None:
            token_file = self.directory / "tokens" / name
            token_file.parent.mkdir(mode=0o700, exist_ok=True)
            token_file.write_text(token)
            token_file.chmod(0o600)
            argv += ["--token-file", str(token_file)]
        mesh_site.process = self.lab.start(mesh_site.site.netns, argv, name=f"agent-{name}")

    def wait_for_tunnels(self, expected: dict[str, set[str]], timeout: float = TUNNEL_TIMEOUT) -> None:
        """Until every site has installed CHILD SAs with exactly the expected peers."""

        def reached() -> bool:
            return all(self.sites[n].established_peers() == peers for n, peers in expected.items())

        wait_for("the tunnels", reached, timeout, self.diagnostics)

    def diagnostics(self) -> str:
        parts = []
        if self.controller is not None:
            parts.append(self.controller.output_tail())
        for mesh_site in self.sites.values():
            parts.append(f"--- trellis-agent status ({mesh_site.name}) ---\n{mesh_site.status_text()}")
            if mesh_site.process is not None:
                parts.append(mesh_site.process.output_tail())
        return "\n".join(parts)

    def ping(self, source: str, destination: str, *, count: int = 2) -> bool:
        """From the first LAN host of ``source`` to the first LAN host of ``destination``."""
        src = self.sites[source].site.hosts[0]
        dst = self.sites[destination].site.hosts[0]
        return src.netns.ping(str(dst.ip), count=count, timeout=1.0)

    def stop(self) -> None:
        for mesh_site in self.sites.values():
            if mesh_site.process is not None:
                mesh_site.process.stop()
        if self.controller is not None:
            self.controller.stop()
