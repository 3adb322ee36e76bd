"""The bounded flow table that lets replies through, and the table of fragmented datagrams.

Entries are ordered by last activity. Expired entries are removed from the old end as new ones
arrive, and on lookup. When the table is full, the oldest flow that never saw a reply may be
evicted (as Linux conntrack's early drop does); established flows are never evicted, and the new
flow is refused instead.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from trellis.agent.filter.rules import Direction, MatchRule

DEFAULT_MAX_FLOWS = 65536
DEFAULT_MAX_FRAGMENTS = 4096
# How many of the oldest flows are looked at for an unreplied one to evict when the table is full.
EARLY_DROP_SCAN = 64
# A full sweep of expired entries runs at most this often (seconds) when the table is full.
FULL_SWEEP_INTERVAL = 1.0

FlowKey = tuple[int, int, int, int, int, int]  # version, protocol, src, src port, dst, dst port
FragmentKey = tuple[int, int, int, int, int]  # version, src, dst, protocol, identification


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """Table sizes and idle timeouts in seconds."""

    max_flows: int = DEFAULT_MAX_FLOWS
    tcp_unreplied: float = 30.0
    tcp_established: float = 3600.0
    tcp_closing: float = 30.0
    udp_unreplied: float = 30.0
    udp_replied: float = 120.0
    icmp: float = 30.0
    other_unreplied: float = 30.0
    other_replied: float = 120.0
    max_fragments: int = DEFAULT_MAX_FRAGMENTS
    fragment_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.max_flows < 1 or self.max_fragments < 1:
            raise ValueError("table sizes must be at least 1")


TCP_FIN_OPENER = 1
TCP_FIN_RESPONDER = 2
# Bits of the state a flow's packets change, as shared with another copy of the table: the FINs
# seen (TCP_FIN_OPENER, TCP_FIN_RESPONDER) and whether a reply was seen.
FLOW_REPLIED = 4


@dataclass(slots=True)
class Flow:
    """A flow opened in ``opened`` direction; ``key`` is its first packet's tuple.

    ``shared_expires``/``shared_bits``: what the other copy of the table (another worker's
    filter, see PacketFilter.take_flow_records) is known to hold of this flow. ``removed``: the
    flow has left the table (caches that still point at it must let go)."""

    key: FlowKey
    opened: Direction
    rule: MatchRule
    replied: bool = False
    fins: int = 0
    expires: float = 0.0
    shared_expires: float = float("-inf")
    shared_bits: int = 0
    removed: bool = False

    @property
    def bits(self) -> int:
        return self.fins | (FLOW_REPLIED if self.replied else 0)


class FlowTable:
    def __init__(self, limits: FlowLimits) -> None:
        self.limits = limits
        self._flows: OrderedDict[FlowKey, Flow] = OrderedDict()
        self._last_sweep = float("-inf")
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def get(self, key: FlowKey, now: float) -> Flow | None:
        flow = self._flows.get(key)
        if flow is not None and now >= flow.expires:
            self._delete(key)
            return None
        return flow

    def touch(self, flow: Flow, now: float, timeout: float) -> None:
        flow.expires = now + timeout
        self._flows.move_to_end(flow.key)

    def extend(self, flow: Flow, expires: float) -> None:
        """Keep ``flow`` until ``expires`` at least (another copy of the table saw traffic)."""
        if expires > flow.expires:
            flow.expires = expires
            self._flows.move_to_end(flow.key)

    def remove(self, key: FlowKey) -> None:
        if key in self._flows:
            self._delete(key)

    def add(self, flow: Flow, now: float, timeout: float) -> bool:
        """Insert a new flow; False when the table is full of flows that may not be evicted."""
        return self.insert(flow, now, now + timeout)

    def insert(self, flow: Flow, now: float, expires: float) -> bool:
        """Insert a new flow that lasts until ``expires``; False as for ``add``."""
        self._expire_oldest(now)
        if len(self._flows) >= self.limits.max_flows and not self._make_room(now):
            return False
        flow.expires = expires
        flow.removed = False
        replaced = self._flows.get(flow.key)
        if replaced is not None and replaced is not flow:
            replaced.removed = True  # the same tuple opened the other way: this one takes its place
        self._flows[flow.key] = flow
        return True

    def _delete(self, key: FlowKey) -> None:
        self._flows.pop(key).removed = True

    def _expire_oldest(self, now: float) -> None:
        while self._flows:
            key, flow = next(iter(self._flows.items()))
            if now < flow.expires:
                return
            self._delete(key)

    def _make_room(self, now: float) -> bool:
        if now - self._last_sweep >= FULL_SWEEP_INTERVAL:
            self._last_sweep = now
            for key in [k for k, f in self._flows.items() if now >= f.expires]:
                self._delete(key)
            if len(self._flows) < self.limits.max_flows:
                return True
        for key, flow in itertools.islice(self._flows.items(), EARLY_DROP_SCAN):
            if not flow.replied:
                self._delete(key)
                self.evictions += 1
                return True
        return False


@dataclass(slots=True)
class FragmentEntry:
    rule: MatchRule
    expires: float


class FragmentTable:
    """Datagrams whose first fragment was allowed: their later fragments follow it."""

    def __init__(self, limits: FlowLimits) -> None:
        self.limits = limits
        self._entries: OrderedDict[FragmentKey, FragmentEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def allow(self, key: FragmentKey, rule: MatchRule, now: float) -> None:
        while self._entries and (
            len(self._entries) >= self.limits.max_fragments
            or now >= next(iter(self._entries.values())).expires
        ):
            self._entries.popitem(last=False)  # oldest first: fragments are short-lived
        self._entries[key] = FragmentEntry(rule=rule, expires=now + self.limits.fragment_timeout)

    def lookup(self, key: FragmentKey, now: float) -> MatchRule | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires:
            del self._entries[key]
            return None
        return entry.rule

    def clear(self) -> None:
        self._entries.clear()
