"""The agent's stateful packet filter on inner packets (sans-IO), built from the PolicyView."""

from trellis.agent.filter.filter import Allow, FilterCounters, PacketFilter, RuleCounters, Verdict
from trellis.agent.filter.flows import FlowLimits
from trellis.agent.filter.packet import DropReason, MalformedPacket, Packet, pull_packet
from trellis.agent.filter.rules import Direction, InvalidPolicyView

__all__ = [
    "Allow",
    "Direction",
    "DropReason",
    "FilterCounters",
    "FlowLimits",
    "InvalidPolicyView",
    "MalformedPacket",
    "Packet",
    "PacketFilter",
    "RuleCounters",
    "Verdict",
    "pull_packet",
]
