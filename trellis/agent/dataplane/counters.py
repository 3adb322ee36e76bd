"""Counter snapshots of a data plane, for the agent's ``status`` command."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trellis.agent.esp.constants import DropReason
from trellis.agent.esp.sa import SaCounters


@dataclass(frozen=True, slots=True)
class DataplaneCounters:
    """A snapshot. ``drops`` are totals per reason over all SAs and packets without an SA;
    ``policy_reasons`` splits the POLICY drops by the filter's reason; ``traffic`` has the
    plain counters (TUN packets read/written, ESP datagrams sent/received, IKE datagrams
    handed over, keepalives, ICMP errors sent, GSO/GRO batches)."""

    sas: tuple[SaCounters, ...]
    drops: dict[DropReason, int]
    policy_reasons: dict[str, int] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)
    tun_mtu: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``trellis-agent status --json``)."""
        return {
            "tun_mtu": self.tun_mtu,
            "drops": {str(reason): count for reason, count in sorted(self.drops.items())},
            "policy_reasons": dict(sorted(self.policy_reasons.items())),
            "traffic": dict(sorted(self.traffic.items())),
            "sas": [
                {
                    "spi": f"0x{sa.spi:08x}",
                    "direction": str(sa.direction),
                    "tag": sa.tag,
                    "cipher": sa.cipher.name,
                    "peer": f"{sa.remote_address}:{sa.remote_port}",
                    "packets": sa.packets,
                    "bytes": sa.bytes,
                    "age_seconds": round(sa.age_seconds, 3),
                    "drops": {str(r): c for r, c in sorted(sa.drops.items())},
                    "rekey_requested": sa.rekey_requested,
                    "expired": sa.expired,
                }
                for sa in self.sas
            ],
        }

    def sa(self, spi: int, direction: str) -> SaCounters:
        for counters in self.sas:
            if counters.spi == spi and counters.direction == direction:
                return counters
        raise KeyError(f"no SA {spi:#x}/{direction}")
