"""A Trellis<->Trellis tunnel between the first two sites of a lab topology, manually keyed.

The userspace data plane runs in each site namespace (``python -m
trellis.agent.dataplane.static``) with freshly generated SAs: the same code path the agent uses,
minus IKE. Used by bench/throughput.py and the data-plane integration tests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trellis.agent.dataplane.static import manual_tunnel, sa_to_json
from trellis.agent.esp.constants import Cipher
from trellis.agent.esp.keylog import esp_sa_row
from trellis.agent.esp.sa import Lifetime, SaParams
from trellis.lab.process import BackgroundProcess, LabError
from trellis.lab.topology import Site, StandardTopology

TUN_NAME = "trellis0"
START_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class TrellisSite:
    site: Site
    process: BackgroundProcess
    status_path: Path
    keylog_path: Path | None
    sas: tuple[SaParams, ...]

    def status(self) -> dict[str, Any]:
        """The latest counters snapshot the data plane wrote (see DataplaneCounters.to_dict)."""
        data: dict[str, Any] = json.loads(self.status_path.read_text())
        return data

    def fresh_status(self, timeout: float = 10.0) -> dict[str, Any]:
        """A snapshot written after this call (the runner rewrites it every interval)."""
        before = self.status_path.stat().st_mtime_ns
        deadline = time.monotonic() + timeout
        while self.status_path.stat().st_mtime_ns == before:
            if self.process.poll() is not None:
                raise LabError(f"data plane exited\n{self.process.output_tail()}")
            if time.monotonic() >= deadline:
                raise LabError(f"no fresh status in {timeout}s\n{self.process.output_tail()}")
            time.sleep(0.05)
        return self.status()


@dataclass(frozen=True, slots=True)
class TrellisTunnel:
    a: TrellisSite
    b: TrellisSite

    def keylog_rows(self) -> list[str]:
        """Wireshark esp_sa rows written by both sites' key-log exports."""
        rows: list[str] = []
        for side in (self.a, self.b):
            if side.keylog_path is not None and side.keylog_path.exists():
                rows += [line for line in side.keylog_path.read_text().splitlines() if line]
        return rows

    def stop(self) -> None:
        for side in (self.a, self.b):
            side.process.stop()


def start_trellis_tunnel(
    topology: StandardTopology,
    *,
    cipher: Cipher = Cipher.AES_GCM_16,
    tso: bool = False,
    gro: bool = True,
    keylog: bool = False,
    lifetime: Lifetime | None = None,
    status_interval: float = 0.5,
    dataplane: dict[str, Any] | None = None,
    extra_subnets: tuple[list[str], list[str]] = ([], []),
) -> TrellisTunnel:
    """Start the userspace data plane in sites 1 and 2 with one SA pair between their LANs (plus
    ``extra_subnets`` of each site) and routes to the peer's; returns once both have installed
    everything."""
    site_a, site_b = topology.sites[0], topology.sites[1]
    subnets_a = [str(site_a.lan), *extra_subnets[0]]
    subnets_b = [str(site_b.lan), *extra_subnets[1]]
    sas_a, sas_b = manual_tunnel(
        site_a.underlay_ip, subnets_a, site_b.underlay_ip, subnets_b, cipher=cipher, lifetime=lifetime
    )
    started = []
    for site, sas, peer_subnets in ((site_a, sas_a, subnets_b), (site_b, sas_b, subnets_a)):
        lab = topology.lab
        status_path = lab.path("trellis", f"{site.name}-status.json")
        keylog_path = lab.path("trellis", f"{site.name}-esp_sa") if keylog else None
        config = {
            "dataplane": {
                "tun_name": TUN_NAME,
                "listen_address": str(site.underlay_ip),
                "tso": tso,
                "gro": gro,
                "keylog_path": str(keylog_path) if keylog_path else None,
                **(dataplane or {}),
            },
            "routes": peer_subnets,
            "sas": [sa_to_json(params) for params in sas],
            "status_path": str(status_path),
            "status_interval": status_interval,
        }
        config_path = lab.path("trellis", f"{site.name}.json")
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)
        argv = [sys.executable, "-m", "trellis.agent.dataplane.static", str(config_path)]
        process = lab.start(site.netns, argv, name=f"trellis-{site.name}")
        started.append(TrellisSite(site, process, status_path, keylog_path, tuple(sas)))
    deadline = time.monotonic() + START_TIMEOUT
    for side in started:
        while not side.status_path.exists():
            if side.process.poll() is not None or time.monotonic() >= deadline:
                raise LabError(
                    f"Trellis data plane in {side.site.name} did not start\n{side.process.output_tail()}"
                )
            time.sleep(0.05)
    return TrellisTunnel(started[0], started[1])


def expected_keylog_rows(tunnel: TrellisTunnel) -> list[str]:
    return [esp_sa_row(params) for side in (tunnel.a, tunnel.b) for params in side.sas]
