"""The policy filter as the data plane runs it: one ``trellis.agent.filter.PacketFilter`` per
worker, built from the site's PolicyView, with flows shared between the two workers.

``PolicyHook`` is the engines' filter hook (hooks.PacketFilter). For each packet it asks its
filter; the flow records the filter makes go to the other worker (flowsync.FlowChannel) before
the hook answers, so before the packet can be forwarded and its reply come back. A packet the
filter drops for want of a rule (``no-rule``) may be the reply to a flow the other worker has
just opened: the hook then imports what the channel holds and asks again. Records that cannot be
sent (the channel is full) close the flow they opened again, and its packet is dropped as
``flow-channel-full``: a retransmission tries again.

Time: the engines run on the monotonic clock, the filter on Unix time (rules expire at wall-clock
instants); the worker keeps ``wall_offset`` (Unix time minus monotonic) current.
"""

from __future__ import annotations

from collections import Counter

from trellis.agent.dataplane.flowsync import FlowChannel
from trellis.agent.dataplane.hooks import ALLOW, Verdict
from trellis.agent.esp.constants import Direction as EspDirection
from trellis.agent.esp.transforms import Buffer
from trellis.agent.filter import Allow, Direction, DropReason, FlowLimits, PacketFilter
from trellis.v1 import common_pb2

FLOW_CHANNEL_FULL = "flow-channel-full"  # policy drop reason: the new flow could not be shared

_DIRECTIONS = {EspDirection.OUTBOUND: Direction.OUTBOUND, EspDirection.INBOUND: Direction.INBOUND}
_DROPS: dict[Allow | DropReason, Verdict] = {
    reason: Verdict(allowed=False, reason=reason.value) for reason in DropReason
}
_CHANNEL_FULL = Verdict(allowed=False, reason=FLOW_CHANNEL_FULL)


class PolicyHook:
    """See the module docstring. ``channel`` None: a filter of its own, nothing shared."""

    def __init__(
        self,
        view: common_pb2.PolicyView,
        channel: FlowChannel | None,
        *,
        limits: FlowLimits | None = None,
    ) -> None:
        self.filter = PacketFilter(view, limits=limits, share_flows=channel is not None)
        self.channel = channel
        self.policy_version = view.policy_version
        self.wall_offset = 0.0
        self._counts: Counter[str] = Counter()

    def update(self, view: common_pb2.PolicyView, now: float) -> int:
        """Enforce ``view`` from now on (Unix time), keeping the flows it still allows; returns
        how many flows it ended. InvalidPolicyView leaves the current view in place."""
        ended = self.filter.update(view, now)
        self.policy_version = view.policy_version
        self._counts["policy_flows_ended"] += ended
        return ended

    def check(self, packet: Buffer, direction: EspDirection, now: float) -> Verdict:
        wall = now + self.wall_offset
        which = _DIRECTIONS[direction]
        packet_filter = self.filter
        verdict = packet_filter.check(packet, which, wall)
        if not verdict.allowed:
            if verdict.reason is not DropReason.NO_RULE or not self.drain(wall):
                return _DROPS[verdict.reason]
            verdict = packet_filter.recheck(packet, which, wall, previous=verdict)
            if not verdict.allowed:
                return _DROPS[verdict.reason]
            self._counts["flow_rechecks_allowed"] += 1
        if packet_filter.has_flow_records and self.channel is not None:
            lost = self.channel.send(packet_filter.take_flow_records())
            if lost and packet_filter.retract_flow_records(lost, wall):
                return _CHANNEL_FULL
        return ALLOW

    def drain(self, wall: float) -> int:
        """Import the other worker's records waiting in the channel; how many applied."""
        if self.channel is None:
            return 0
        records = self.channel.receive()
        if not records:
            return 0
        return self.filter.import_flow_records(records, wall).applied

    def counters(self) -> dict[str, int]:
        """For the worker's snapshot (``traffic`` counters of the data plane); ``policy_flows``
        is this worker's table size (the worker names it after its role)."""
        filter_counters = self.filter.counters()
        counts = dict(self._counts)
        counts["policy_flows"] = filter_counters.flows
        counts["flow_records_imported"] = filter_counters.records_imported
        counts["flow_records_refused"] = filter_counters.records_refused
        counts["flow_records_lost"] = filter_counters.records_lost
        if self.channel is not None:
            counts["flow_records_published"] = self.channel.sent
            counts["flow_records_dropped_full"] = self.channel.dropped_full
            counts["flow_records_malformed"] = self.channel.malformed
        return counts
