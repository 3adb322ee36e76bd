"""What a running site says of itself: the status document and its human form.

The agent writes the document as JSON (``tunnels.json`` in its state directory, and the
configuration's ``status_file`` if one is given) every second and whenever an SA comes or goes;
``trellis-agent status`` reads and prints it. The document::

    {
      "time": 1767225600.0, "pid": 1234, "started_at": ..., "backend": "userspace",
      "failed": null,                      # or why the data plane stopped
      "routes": ["10.2.0.0/24"],           # prefixes routed into the tunnel device
      "policy": {"version": 3, "peers": 2, "enforced": true, "applied_at": ...},
                                           # the PolicyView in force, or null: no policy filter
      "ike_sas": [                         # as trellis.agent.ike.status.IkeSaStatus, plus:
        {"peer": "hq", "spi_i": "...", "spi_r": "...", "state": "established", ...,
         "children": [
           {"name": "lan", "inbound_spi": "c0ffee01", "outbound_spi": "...", "state": "installed",
            "local_ts": ["10.1.0.0/24"], "remote_ts": ["10.2.0.0/24"], "rekey_at": ..., "expires_at": ...,
            "esp": {"in":  {"packets": 10, "bytes": 840, "drops": {"replay": 1}, ...},
                    "out": {"packets": 10, "bytes": 840, "drops": {}, ...}}}]}],
      "dataplane": {"tun_mtu": 1438, "drops": {"authentication": 1, "no_sa": 2},
                    "policy_reasons": {}, "traffic": {...}, "sas": [...]}   # null without one
    }

SPIs are hexadecimal without 0x, as in the IKE status. A CHILD SA's ``esp`` entry is absent
while the data plane has not reported on it yet.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trellis.agent.dataplane.counters import DataplaneCounters
from trellis.agent.esp.selectors import IPNetwork

STATUS_FILE_NAME = "tunnels.json"


def site_status(
    ike_sas: list[dict[str, Any]],
    *,
    policy: dict[str, Any] | None = None,
    counters: DataplaneCounters | None,
    backend: str,
    routes: Sequence[IPNetwork],
    failed: str | None,
    started_at: float,
    now: float,
    pid: int,
) -> dict[str, Any]:
    dataplane = counters.to_dict() if counters is not None else None
    by_spi: dict[tuple[int, str], dict[str, Any]] = {}
    if dataplane is not None:
        for sa in dataplane["sas"]:
            by_spi[(int(sa["spi"], 16), sa["direction"])] = sa
    for ike_sa in ike_sas:
        ike_sa["children"] = [dict(child) for child in ike_sa["children"]]
        for child in ike_sa["children"]:
            esp = {}
            for direction, key in (("in", "inbound_spi"), ("out", "outbound_spi")):
                sa = by_spi.get((int(child[key], 16), direction))
                if sa is not None:
                    esp[direction] = {k: v for k, v in sa.items() if k not in ("spi", "direction", "tag")}
            if esp:
                child["esp"] = esp
    return {
        "time": now,
        "pid": pid,
        "started_at": started_at,
        "backend": backend,
        "failed": failed,
        "routes": [str(prefix) for prefix in routes],
        "policy": policy,
        "ike_sas": ike_sas,
        "dataplane": dataplane,
    }


def write_status_file(path: Path, document: dict[str, Any]) -> None:
    """Replace ``path`` atomically (rename), without fsync: a status file is rewritten every
    second, and waiting for the disk would stall the event loop that runs IKE."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(temporary, path)


def read_status_file(path: Path) -> dict[str, Any] | None:
    """The document at ``path``, or None if there is none (yet) or it is not one."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and "ike_sas" in document else None


def _when(value: float | None, now: float) -> str:
    if value is None:
        return "-"
    at = dt.datetime.fromtimestamp(value, dt.UTC)
    return f"{at:%H:%M:%S} (in {int(value - now)}s)"


def _drops(drops: dict[str, int]) -> str:
    shown = ", ".join(f"{reason} {count}" for reason, count in sorted(drops.items()) if count)
    return shown or "none"


def _esp_line(direction: str, sa: dict[str, Any]) -> str:
    flags = [
        f for f, on in (("rekey requested", sa.get("rekey_requested")), ("expired", sa.get("expired"))) if on
    ]
    return (
        f"    {direction:<3} {sa['packets']} packets, {sa['bytes']} bytes, drops: {_drops(sa['drops'])}"
        + (f" [{', '.join(flags)}]" if flags else "")
    )


def render_site_status(document: dict[str, Any], *, running: bool | None = None) -> str:
    """The status document as text for people."""
    now = float(document["time"])
    at = dt.datetime.fromtimestamp(now, dt.UTC)
    state = "" if running is None else ("running" if running else "not running") + ", "
    lines = [
        f"site:         {state}pid {document['pid']}, status of {at:%Y-%m-%d %H:%M:%S} UTC",
        f"data plane:   {document['backend']}"
        + (f", FAILED: {document['failed']}" if document.get("failed") else ""),
    ]
    dataplane = document.get("dataplane")
    if dataplane is not None:
        lines[-1] += f", TUN MTU {dataplane['tun_mtu']}"
        lines.append(f"routes:       {', '.join(document['routes']) or '-'}")
        policy = document.get("policy")
        lines.append(
            "policy:       none (everything the SAs carry passes)"
            if policy is None
            else f"policy:       version {policy['version']}, {policy['peers']} peers"
            + ("" if policy["enforced"] else " (not enforced)")
        )
        lines.append(f"drops:        {_drops(dataplane['drops'])}")
        if dataplane.get("policy_reasons"):
            lines.append(f"policy drops: {_drops(dataplane['policy_reasons'])}")
    sas = document["ike_sas"]
    if not sas:
        lines.append("IKE SAs:      none")
    known: set[tuple[int, str]] = set()
    for sa in sas:
        role = "initiator" if sa["initiator"] else "responder"
        lines.append(
            f"IKE SA {sa['peer'] or '?'}: {sa['state']}, {sa['spi_i']}_i {sa['spi_r']}_r, {role}, "
            f"port {sa['local_port']} <-> {sa['remote']}{' (NAT-T)' if sa['nat'] else ''}"
        )
        lines.append(f"  {sa['suite'] or '-'}; {sa['local_id'] or '-'} <-> {sa['remote_id'] or '-'}")
        lines.append(f"  certificates valid until {_when(sa['auth_expires'], now)}")
        for child in sa["children"]:
            lines.append(
                f"  CHILD SA {child['name']}: {child['state']}, {child['inbound_spi']}_i "
                f"{child['outbound_spi']}_o, {child['suite']}, rekey {_when(child['rekey_at'], now)}, "
                f"expires {_when(child['expires_at'], now)}"
            )
            lines.append(f"    {', '.join(child['local_ts'])} === {', '.join(child['remote_ts'])}")
            for direction, key in (("in", "inbound_spi"), ("out", "outbound_spi")):
                known.add((int(child[key], 16), direction))
                esp = child.get("esp", {}).get(direction)
                if esp is not None:
                    lines.append(_esp_line(direction, esp))
    others = [s for s in (dataplane or {}).get("sas", []) if (int(s["spi"], 16), s["direction"]) not in known]
    if others:
        lines.append("data-plane SAs outside IKE's view (being replaced or removed):")
        for sa in others:
            lines.append(f"  {sa['spi']} {sa['tag']}")
            lines.append(_esp_line(sa["direction"], sa))
    return "\n".join(lines)
