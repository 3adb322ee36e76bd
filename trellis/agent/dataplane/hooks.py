"""The policy filter hook: the data plane asks it about every packet it is about to forward.

The site's policy view is enforced by ``policy.PolicyHook`` (``set_policy``: the stateful filter
of trellis.agent.filter, its flows shared between the two workers); anything else with a
matching ``check`` method fits too (``set_filter``). The userspace backend runs the filter
inside its worker processes, so a filter object must be picklable (``UserspaceDataplane.
set_filter`` sends it there) and must not block. Outbound, a TCP super-packet (TSO) is checked
once for all the segments it becomes: they share their headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from trellis.agent.esp.constants import Direction
from trellis.agent.esp.transforms import Buffer

MAX_POLICY_REASON = 64  # characters of a drop reason kept in counters


@dataclass(frozen=True, slots=True)
class Verdict:
    """``allowed`` or not; ``reason`` names the rule that dropped (counted per reason)."""

    allowed: bool
    reason: str = ""


ALLOW = Verdict(allowed=True)


class PacketFilter(Protocol):
    def check(self, packet: Buffer, direction: Direction, now: float) -> Verdict:
        """``packet`` is the inner IP packet: outbound before encryption, inbound after
        decryption and the SA's selector check."""
        ...
