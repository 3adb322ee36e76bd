"""The agent's stateful packet filter on inner packets (sans-IO), built from the PolicyView."""

from trellis.agent.filter.filter import Allow, FilterCounters, FlowImport, PacketFilter, RuleCounters, Verdict
from trellis.agent.filter.flows import FlowLimits
from trellis.agent.filter.packet import DropReason, MalformedPacket, Packet, pull_packet
from trellis.agent.filter.records import (
    FLOW_RECORD_SIZE,
    FlowRecord,
    MalformedFlowRecord,
    RecordKind,
    pull_flow_records,
    push_flow_record,
)
from trellis.agent.filter.rules import Direction, InvalidPolicyView

__all__ = [
    "FLOW_RECORD_SIZE",
    "Allow",
    "Direction",
    "DropReason",
    "FilterCounters",
    "FlowImport",
    "FlowLimits",
    "FlowRecord",
    "InvalidPolicyView",
    "MalformedFlowRecord",
    "MalformedPacket",
    "Packet",
    "PacketFilter",
    "RecordKind",
    "RuleCounters",
    "Verdict",
    "pull_flow_records",
    "pull_packet",
    "push_flow_record",
]
