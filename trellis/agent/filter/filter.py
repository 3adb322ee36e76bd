"""The agent's stateful packet filter on inner packets. Sans-IO: bytes, a direction and ``now`` in,
a verdict out.

Default deny. A packet passes when it belongs to a flow in the table (in the direction that
opened it, or as its reply), when it is an ICMP error about such a flow, when it is a later
fragment of an allowed first fragment, or when a live rule of the view allows it as the first
packet of a new flow (which then enters the table). Only the side a rule names in ``from`` can
open flows: a TCP SYN or an ICMP echo request in the reply direction is never a reply.
A flow whose rule expired is re-checked against the remaining rules and dropped if none allows
it, so just-in-time access ends on time on live flows too.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from trellis.agent.filter.flows import (
    TCP_FIN_OPENER,
    TCP_FIN_RESPONDER,
    Flow,
    FlowKey,
    FlowLimits,
    FlowTable,
    FragmentTable,
)
from trellis.agent.filter.packet import (
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    DropReason,
    MalformedPacket,
    Packet,
    pull_packet,
)
from trellis.agent.filter.rules import Direction, MatchRule, RuleTable
from trellis.v1 import common_pb2


class Allow(enum.StrEnum):
    NEW = "new"  # first packet of a flow, allowed by a rule
    ESTABLISHED = "established"  # a later packet of a flow, either way
    RELATED = "related"  # an ICMP error about a flow
    FRAGMENT = "fragment"  # a later fragment of an allowed first fragment


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: Allow | DropReason
    rule: str | None = None  # the policy rule the packet's flow is attributed to
    peer: str | None = None  # the peer identity that rule is for


@dataclass(frozen=True, slots=True)
class RuleCounters:
    flows: int  # flows (or stateless first packets) the rule allowed
    packets: int  # every packet attributed to the rule, replies included


@dataclass(frozen=True, slots=True)
class FilterCounters:
    rules: Mapping[str, RuleCounters]
    verdicts: Mapping[Allow | DropReason, int]
    flows: int  # flows in the table now
    evictions: int  # unreplied flows evicted to make room


class PacketFilter:
    """Build from the PolicyView of a NetworkMap (all peers) or from one PeerPolicy."""

    def __init__(
        self, policy: common_pb2.PolicyView | common_pb2.PeerPolicy, *, limits: FlowLimits | None = None
    ) -> None:
        self._limits = limits or FlowLimits()
        self._rules = RuleTable(_peers_of(policy))
        self._flows = FlowTable(self._limits)
        self._fragments = FragmentTable(self._limits)
        self._rule_flows: Counter[str] = Counter()
        self._rule_packets: Counter[str] = Counter()
        self._verdicts: Counter[Allow | DropReason] = Counter()

    @property
    def peers(self) -> frozenset[str]:
        return self._rules.peers

    def update(self, policy: common_pb2.PolicyView | common_pb2.PeerPolicy, now: float) -> int:
        """Enforce a new view. Flows it no longer allows are dropped (returns how many).

        Raises InvalidPolicyView, leaving the filter unchanged, when the view cannot be enforced.
        """
        self._rules = RuleTable(_peers_of(policy))
        self._fragments.clear()
        dropped = 0
        for flow in self._flows:
            rule = self._rematch(flow, now, force=True)
            if rule is None:
                self._flows.remove(flow.key)
                dropped += 1
        return dropped

    def counters(self) -> FilterCounters:
        names = self._rule_flows.keys() | self._rule_packets.keys()
        return FilterCounters(
            rules={
                n: RuleCounters(flows=self._rule_flows[n], packets=self._rule_packets[n])
                for n in sorted(names)
            },
            verdicts=dict(self._verdicts),
            flows=len(self._flows),
            evictions=self._flows.evictions,
        )

    def check(self, packet: bytes, direction: Direction, now: float, *, peer: str | None = None) -> Verdict:
        """Judge one inner IP packet travelling in ``direction``.

        ``peer``: the peer the packet comes from (INBOUND) or would go to (OUTBOUND), when the data
        plane knows it; only that peer's rules and flows then apply (anti-spoofing). ``now``: Unix
        time in seconds (rule expiry is wall-clock time).
        """
        try:
            parsed = pull_packet(packet)
        except MalformedPacket as malformed:
            return self._verdict(Verdict(allowed=False, reason=malformed.reason))
        return self._verdict(self._judge(parsed, direction, now, peer))

    # --- decisions ----------------------------------------------------------------------------

    def _verdict(self, verdict: Verdict) -> Verdict:
        self._verdicts[verdict.reason] += 1
        if verdict.allowed and verdict.rule is not None:
            self._rule_packets[verdict.rule] += 1
            if verdict.reason is Allow.NEW:
                self._rule_flows[verdict.rule] += 1
        return verdict

    def _judge(self, packet: Packet, direction: Direction, now: float, peer: str | None) -> Verdict:
        fragment = packet.fragment
        if fragment is not None and fragment.offset > 0:
            rule = self._fragments.lookup(_fragment_key(packet), now)
            if rule is None or (peer is not None and rule.peer != peer) or not rule.live(now):
                return Verdict(allowed=False, reason=DropReason.FRAGMENT_UNKNOWN)
            return _allowed(Allow.FRAGMENT, rule)
        verdict, rule = self._judge_whole(packet, direction, now, peer)
        if fragment is not None and rule is not None:
            self._fragments.allow(_fragment_key(packet), rule, now)
        return verdict

    def _judge_whole(
        self, packet: Packet, direction: Direction, now: float, peer: str | None
    ) -> tuple[Verdict, MatchRule | None]:
        if packet.icmp_error and packet.quoted is not None:
            related = self._related(packet, packet.quoted, direction, now, peer)
            if related is not None:
                return _allowed(Allow.RELATED, related.rule), related.rule
        stateful = packet.protocol in (PROTO_TCP, PROTO_UDP) or packet.echo_request or packet.echo_reply
        if not packet.is_icmp or stateful:
            flow = self._existing(packet, direction, now, peer)
            if flow is not None:
                return _allowed(Allow.ESTABLISHED, flow.rule), flow.rule
        rule = self._rules.match(
            direction,
            version=packet.version,
            protocol=packet.protocol,
            src=packet.src,
            dst=packet.dst,
            dst_port=packet.dst_port,
            now=now,
            peer=peer,
        )
        if rule is None:
            return Verdict(allowed=False, reason=DropReason.NO_RULE), None
        opens_flow = not packet.is_icmp or packet.echo_request
        if opens_flow and not packet.tcp_flags & TCP_RST:
            flow = Flow(key=_forward_key(packet), opened=direction, rule=rule)
            self._update_tcp(flow, packet, reply=False)
            if not self._flows.add(flow, now, self._timeout(flow)):
                return Verdict(allowed=False, reason=DropReason.FLOW_TABLE_FULL), None
        return _allowed(Allow.NEW, rule), rule

    def _existing(self, packet: Packet, direction: Direction, now: float, peer: str | None) -> Flow | None:
        """The flow in the table this packet continues or answers, if any (and keep its state)."""
        flow = self._flows.get(_forward_key(packet), now)
        reply = False
        if flow is None or flow.opened is not direction or packet.echo_reply:
            flow = self._flows.get(_reverse_key(packet), now)
            reply = True
            if flow is None or flow.opened is not direction.opposite:
                return None
            if packet.echo_request or (packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN):
                return None  # the responder cannot open a flow by looking like a reply
        if peer is not None and flow.rule.peer != peer:
            return None
        if self._rematch(flow, now) is None:
            self._flows.remove(flow.key)
            return None
        self._update_tcp(flow, packet, reply=reply)
        if packet.tcp_flags & TCP_RST:
            self._flows.remove(flow.key)
        else:
            self._flows.touch(flow, now, self._timeout(flow))
        return flow

    def _related(
        self, error: Packet, quoted: Packet, direction: Direction, now: float, peer: str | None
    ) -> Flow | None:
        """The flow an ICMP error is about: the quoted packet went the other way, to the error's sender."""
        if quoted.src != error.dst or not quoted.has_l4:
            return None
        flow = self._flows.get(_forward_key(quoted), now)
        if flow is None or flow.opened is not direction.opposite:
            flow = self._flows.get(_reverse_key(quoted), now)
            if flow is None or flow.opened is not direction:
                return None
        if peer is not None and flow.rule.peer != peer:
            return None
        if self._rematch(flow, now) is None:
            self._flows.remove(flow.key)
            return None
        return flow

    def _rematch(self, flow: Flow, now: float, *, force: bool = False) -> MatchRule | None:
        """The flow's rule, or another live one if it expired (or ``force``: a new view); None: none."""
        rule = flow.rule
        if rule.live(now) and not force:
            return rule
        version, protocol, src, _src_port, dst, dst_port = flow.key
        rematched = self._rules.match(
            flow.opened,
            version=version,
            protocol=protocol,
            src=src,
            dst=dst,
            dst_port=dst_port,
            now=now,
            peer=rule.peer,
        )
        if rematched is not None:
            flow.rule = rematched
        return rematched

    @staticmethod
    def _update_tcp(flow: Flow, packet: Packet, *, reply: bool) -> None:
        if reply:
            flow.replied = True
        if packet.protocol == PROTO_TCP and packet.tcp_flags & TCP_FIN:
            flow.fins |= TCP_FIN_RESPONDER if reply else TCP_FIN_OPENER

    def _timeout(self, flow: Flow) -> float:
        limits = self._limits
        protocol = flow.key[1]
        if protocol == PROTO_TCP:
            if flow.fins == TCP_FIN_OPENER | TCP_FIN_RESPONDER:
                return limits.tcp_closing
            return limits.tcp_established if flow.replied else limits.tcp_unreplied
        if protocol == PROTO_UDP:
            return limits.udp_replied if flow.replied else limits.udp_unreplied
        if protocol in (1, 58):
            return limits.icmp
        return limits.other_replied if flow.replied else limits.other_unreplied


def _peers_of(policy: common_pb2.PolicyView | common_pb2.PeerPolicy) -> list[common_pb2.PeerPolicy]:
    if isinstance(policy, common_pb2.PeerPolicy):
        return [policy]
    return list(policy.peers)


def _allowed(reason: Allow, rule: MatchRule) -> Verdict:
    return Verdict(allowed=True, reason=reason, rule=rule.name, peer=rule.peer)


def _forward_key(packet: Packet) -> FlowKey:
    return (packet.version, packet.protocol, packet.src, packet.src_port, packet.dst, packet.dst_port)


def _reverse_key(packet: Packet) -> FlowKey:
    return (packet.version, packet.protocol, packet.dst, packet.dst_port, packet.src, packet.src_port)


def _fragment_key(packet: Packet) -> tuple[int, int, int, int, int]:
    ident = packet.fragment.ident if packet.fragment is not None else 0
    return (packet.version, packet.src, packet.dst, packet.protocol, ident)
