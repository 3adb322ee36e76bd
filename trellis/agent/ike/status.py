"""A snapshot of the IKE SAs for humans and scripts (``trellis-agent`` writes it as JSON to its
state directory; ``python -m trellis.agent.ike.status FILE`` prints it as a table)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trellis.agent.ike.selectors import format_selector

if TYPE_CHECKING:
    from trellis.agent.ike.sa import IkeSa


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSaStatus:
    name: str
    state: str
    inbound_spi: str
    outbound_spi: str
    suite: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    rekey_at: float | None
    expires_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeSaStatus:
    peer: str | None
    spi_i: str
    spi_r: str
    state: str
    initiator: bool
    local_port: int
    remote: str
    suite: str | None
    local_id: str
    remote_id: str | None
    peer_identity: str | None
    nat: bool
    established_at: float | None
    auth_expires: float | None
    children: tuple[ChildSaStatus, ...]


def describe_sa(sa: IkeSa) -> IkeSaStatus:
    auth = sa.peer_auth
    return IkeSaStatus(
        peer=sa.peer_name,
        spi_i=sa.spi_i.hex(),
        spi_r=sa.spi_r.hex(),
        state=sa.state.value,
        initiator=sa.initiator,
        local_port=sa.local_port,
        remote=f"{sa.remote[0]}:{sa.remote[1]}",
        suite=str(sa.suite) if sa.suite is not None else None,
        local_id=sa.local_id,
        remote_id=auth.remote_id if auth else None,
        peer_identity=auth.identity if auth else None,
        nat=sa.udp_encapsulation,
        established_at=sa.established_at,
        auth_expires=sa.auth_expires,
        children=tuple(
            ChildSaStatus(
                name=c.name,
                state=c.state.value,
                inbound_spi=c.inbound_spi.hex(),
                outbound_spi=c.outbound_spi.hex(),
                suite=str(c.suite),
                local_ts=tuple(format_selector(t) for t in c.local_ts),
                remote_ts=tuple(format_selector(t) for t in c.remote_ts),
                rekey_at=c.rekey_at,
                expires_at=c.expires_at,
            )
            for c in sa.children.values()
        ),
    )


def status_json(sas: list[IkeSaStatus], *, now: float) -> str:
    return json.dumps({"time": now, "ike_sas": [asdict(s) for s in sas]}, indent=2)


def _when(value: float | None, now: float) -> str:
    if value is None:
        return "-"
    return f"{dt.datetime.fromtimestamp(value, dt.UTC):%H:%M:%S} (in {int(value - now)}s)"


def render(document: dict[str, Any]) -> str:
    now = float(document["time"])
    lines: list[str] = []
    for sa in document["ike_sas"]:
        role = "initiator" if sa["initiator"] else "responder"
        lines.append(
            f"{sa['peer'] or '?'}: {sa['state']}, {sa['spi_i']}_i {sa['spi_r']}_r, {role}, "
            f"port {sa['local_port']} <-> {sa['remote']}{' (NAT-T)' if sa['nat'] else ''}"
        )
        lines.append(f"  {sa['suite'] or '-'}; {sa['local_id'] or '-'} <-> {sa['remote_id'] or '-'}")
        lines.append(f"  certificates valid until {_when(sa['auth_expires'], now)}")
        for child in sa["children"]:
            lines.append(
                f"  {child['name']}: {child['state']}, {child['inbound_spi']}_i {child['outbound_spi']}_o, "
                f"{child['suite']}, rekey {_when(child['rekey_at'], now)}"
            )
            lines.append(f"    {', '.join(child['local_ts'])} === {', '.join(child['remote_ts'])}")
    return "\n".join(lines) if lines else "no IKE SAs"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trellis.agent.ike.status STATUS.json", file=sys.stderr)
        return 2
    print(render(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
