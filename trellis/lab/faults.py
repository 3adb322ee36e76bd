"""Faults on the lab underlay with nftables (there is no netem here): drop traffic, then restore.

Rules live in a ``bridge`` table of the wan namespace, on the forward hook, so they act on what the
wan bridge forwards between sites and never on anything outside the lab.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from trellis.lab.netns import Netns
from trellis.lab.process import LabError

TABLE = "trellis_faults"
CHAIN = "forward"


@dataclass(frozen=True, slots=True)
class FaultRule:
    """One installed rule, identified by its nftables handle."""

    handle: int
    description: str


class UnderlayFaults:
    """Drop rules on the wan bridge. ``restore_all()`` (or deleting the namespace) undoes them."""

    def __init__(self, wan: Netns) -> None:
        self.wan = wan
        self._table_ready = False
        self.rules: list[FaultRule] = []

    def drop_udp(
        self,
        src: ipaddress.IPv4Address | str,
        dst: ipaddress.IPv4Address | str,
        *,
        dport: int | None = None,
        both_directions: bool = False,
    ) -> list[FaultRule]:
        """Drop UDP from ``src`` to ``dst`` (only to ``dport`` if given); also back if asked."""
        pairs = [(src, dst), (dst, src)] if both_directions else [(src, dst)]
        rules = []
        for a, b in pairs:
            match = f"ip saddr {_ip(a)} ip daddr {_ip(b)} meta l4proto udp"
            if dport is not None:
                match += f" udp dport {int(dport)}"
            rules.append(self._add(match, f"drop udp {a} -> {b}" + (f" port {dport}" if dport else "")))
        return rules

    def drop_all(self, src: ipaddress.IPv4Address | str, dst: ipaddress.IPv4Address | str) -> FaultRule:
        """Drop every IPv4 packet from ``src`` to ``dst``."""
        return self._add(f"ip saddr {_ip(src)} ip daddr {_ip(dst)}", f"drop ip {src} -> {dst}")

    def dropped_packets(self, rule: FaultRule) -> int:
        """How many packets ``rule`` has dropped so far."""
        out = self.wan.run(["nft", "-j", "list", "chain", "bridge", TABLE, CHAIN]).stdout
        for item in json.loads(out)["nftables"]:
            r = item.get("rule")
            if r and r["handle"] == rule.handle:
                for expr in r["expr"]:
                    if "counter" in expr:
                        return int(expr["counter"]["packets"])
        raise LabError(f"no fault rule with handle {rule.handle} in {self.wan.name}")

    def restore(self, rule: FaultRule) -> None:
        self.wan.run(["nft", "delete", "rule", "bridge", TABLE, CHAIN, "handle", str(rule.handle)])
        self.rules.remove(rule)

    def restore_all(self) -> None:
        if self._table_ready:
            self.wan.run(["nft", "flush", "chain", "bridge", TABLE, CHAIN])
        self.rules.clear()

    def _add(self, match: str, description: str) -> FaultRule:
        self._ensure_table()
        done = self.wan.run(
            [
                "nft",
                "--echo",
                "--handle",
                "add",
                "rule",
                "bridge",
                TABLE,
                CHAIN,
                *match.split(),
                "counter",
                "drop",
            ]
        )
        m = re.search(r"# handle (\d+)", done.stdout)
        if not m:
            raise LabError(f"nft did not report the handle of the new rule: {done.stdout!r}")
        rule = FaultRule(handle=int(m.group(1)), description=description)
        self.rules.append(rule)
        return rule

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        ruleset = (
            f"table bridge {TABLE} {{\n"
            f"  chain {CHAIN} {{ type filter hook forward priority 0; policy accept; }}\n"
            "}\n"
        )
        self.wan.run(["nft", "-f", "-"], input=ruleset)
        self._table_ready = True


def _ip(address: ipaddress.IPv4Address | str) -> str:
    # Validates the address, so nothing but an address reaches the nft command line.
    return str(ipaddress.IPv4Address(str(address)))
