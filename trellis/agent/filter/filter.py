"""The agent's stateful packet filter on inner packets. Sans-IO: bytes, a direction and ``now`` in,
a verdict out.

Default deny. A packet passes when it belongs to a flow in the table (in the direction that
opened it, or as its reply), when it is an ICMP error about such a flow, when it is a later
fragment of an allowed first fragment, or when a live rule of the view allows it as the first
packet of a new flow (which then enters the table). Only the side a rule names in ``from`` can
open flows: a TCP SYN or an ICMP echo request in the reply direction is never a reply.
A flow whose rule expired is re-checked against the remaining rules and dropped if none allows
it, so just-in-time access ends on time on live flows too.

Sharing flows (``share_flows=True``): where two copies of the filter each see one direction of
the traffic (the data plane's two worker processes), each copy queues a ``FlowRecord`` whenever
a flow is opened, first answered, sees a FIN or RST, or has been kept alive for half its timeout
since the other copy last heard of it. The caller takes them (``take_flow_records``) and delivers
them to the other copy (``import_flow_records``) before it forwards the packet that made them; if
they cannot be delivered it gives them back (``retract_flow_records``): a flow that cannot be
shared is not opened. A copy about to drop a packet for want of a flow may import what is waiting
and ``recheck`` it. Imported flows are re-matched against the importer's own view; a record it
does not allow is kept (bounded) and tried again with the next view, since a new view reaches the
two copies one after the other.

Fast path: a plain TCP, UDP or ICMP echo packet (no options, fragments or state-changing
flags) of an established flow is looked up by its raw address and port (or echo) bytes
(packet.peek_established), skipping the full parse; it gets the verdict the full path would give.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass

from trellis.agent.filter.flows import (
    FLOW_REPLIED,
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
    PacketBytes,
    peek_established,
    pull_packet,
)
from trellis.agent.filter.records import FlowRecord, RecordKind
from trellis.agent.filter.rules import Direction, MatchRule, RuleTable
from trellis.v1 import common_pb2

# A shared flow is announced again once its expiry has moved this fraction of its timeout past
# what the other copy was last told.
SHARE_REFRESH = 0.5
# Records queued and not yet taken; beyond this they are not queued (and the flows' next packets
# try again).
MAX_PENDING_FLOW_RECORDS = 1024
# Imported records this view does not allow, kept (the newest) to try again with the next view:
# while a new view reaches the two copies one after the other, one may open a flow that the
# other's old view does not allow yet.
MAX_DEFERRED_FLOW_RECORDS = 1024


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
    records_exported: int = 0  # flow records queued for the other copy
    records_imported: int = 0  # flow records from the other copy applied here
    records_refused: int = 0  # ... refused: no rule of this view allows the flow, or no room
    records_lost: int = 0  # not queued: MAX_PENDING_FLOW_RECORDS were waiting


class _Import(enum.Enum):
    APPLIED = enum.auto()
    NOT_ALLOWED = enum.auto()  # by this view (kept for the next one)
    STALE = enum.auto()  # expired by now
    CONFLICT = enum.auto()  # the flow is known here as opened the other way
    NO_ROOM = enum.auto()  # the flow table is full


@dataclass(frozen=True, slots=True)
class FlowImport:
    applied: int
    refused: int


# A fast-path entry: the flow, whether packets of this key are its replies, the rule the verdict
# was made for, that verdict, and the cell counting the rule's fast-path packets.
_FastEntry = tuple[Flow, bool, MatchRule, Verdict, list[int]]


class PacketFilter:
    """Build from the PolicyView of a NetworkMap (all peers) or from one PeerPolicy."""

    def __init__(
        self,
        policy: common_pb2.PolicyView | common_pb2.PeerPolicy,
        *,
        limits: FlowLimits | None = None,
        share_flows: bool = False,
    ) -> None:
        self._limits = limits or FlowLimits()
        self._rules = RuleTable(_peers_of(policy))
        self._flows = FlowTable(self._limits)
        self._fragments = FragmentTable(self._limits)
        self._rule_flows: Counter[str] = Counter()
        self._rule_packets: Counter[str] = Counter()
        self._verdicts: Counter[Allow | DropReason] = Counter()
        self._share = share_flows
        self._records: list[FlowRecord] = []
        self._deferred: deque[FlowRecord] = deque(maxlen=MAX_DEFERRED_FLOW_RECORDS)
        self._record_counts: Counter[str] = Counter()
        self._longest_timeout = max(
            self._limits.tcp_established, self._limits.udp_replied, self._limits.other_replied
        )
        self._fast: dict[Direction, dict[bytes, _FastEntry]] = {Direction.OUTBOUND: {}, Direction.INBOUND: {}}
        self._fast_packets: dict[str, list[int]] = {}  # per rule: packets let through by the fast path
        self._matched: tuple[Flow, bool] | None = None  # the flow the last full check used
        self._flow_expired = False  # ... or ended because its rule expired

    @property
    def peers(self) -> frozenset[str]:
        return self._rules.peers

    def update(self, policy: common_pb2.PolicyView | common_pb2.PeerPolicy, now: float) -> int:
        """Enforce a new view. Flows it no longer allows are dropped (returns how many).

        Raises InvalidPolicyView, leaving the filter unchanged, when the view cannot be enforced.
        """
        self._rules = RuleTable(_peers_of(policy))
        self._fragments.clear()
        for cache in self._fast.values():
            cache.clear()
        self._fold_fast_packets()
        self._fast_packets.clear()  # no entry holds a cell any more
        dropped = 0
        for flow in self._flows:
            rule = self._rematch(flow, now, force=True)
            if rule is None:
                self._flows.remove(flow.key)
                dropped += 1
        deferred = list(self._deferred)
        self._deferred.clear()
        self.import_flow_records(deferred, now)  # those the new view allows now
        return dropped

    def _fold_fast_packets(self) -> None:
        """Move the fast path's packet counts into the counters (its entries keep their cells)."""
        for name, cell in self._fast_packets.items():
            if cell[0]:
                self._rule_packets[name] += cell[0]
                self._verdicts[Allow.ESTABLISHED] += cell[0]
                cell[0] = 0

    def counters(self) -> FilterCounters:
        self._fold_fast_packets()
        names = self._rule_flows.keys() | self._rule_packets.keys()
        return FilterCounters(
            rules={
                n: RuleCounters(flows=self._rule_flows[n], packets=self._rule_packets[n])
                for n in sorted(names)
            },
            verdicts=dict(self._verdicts),
            flows=len(self._flows),
            evictions=self._flows.evictions,
            records_exported=self._record_counts["exported"],
            records_imported=self._record_counts["imported"],
            records_refused=self._record_counts["refused"],
            records_lost=self._record_counts["lost"],
        )

    def check(
        self, packet: PacketBytes, direction: Direction, now: float, *, peer: str | None = None
    ) -> Verdict:
        """Judge one inner IP packet travelling in ``direction``.

        ``peer``: the peer the packet comes from (INBOUND) or would go to (OUTBOUND), when the data
        plane knows it; only that peer's rules and flows then apply (anti-spoofing). ``now``: Unix
        time in seconds (rule expiry is wall-clock time).
        """
        fast = peek_established(packet)
        if fast is not None:
            entry = self._fast[direction].get(fast[0])
            if entry is not None:
                verdict = self._established(entry, fast[1], now, peer)
                if verdict is not None:
                    return verdict
        try:
            parsed = pull_packet(packet)
        except MalformedPacket as malformed:
            return self._verdict(Verdict(allowed=False, reason=malformed.reason))
        self._matched = None
        self._flow_expired = False
        verdict = self._verdict(self._judge(parsed, direction, now, peer))
        if fast is not None and self._matched is not None and verdict.allowed:
            self._remember(direction, fast[0], *self._matched)
        return verdict

    def recheck(
        self,
        packet: PacketBytes,
        direction: Direction,
        now: float,
        *,
        previous: Verdict,
        peer: str | None = None,
    ) -> Verdict:
        """Judge again a packet ``check`` just dropped (``previous``), after importing flow
        records; only the new verdict is counted."""
        self._verdicts[previous.reason] -= 1
        if self._verdicts[previous.reason] <= 0:
            del self._verdicts[previous.reason]
        return self.check(packet, direction, now, peer=peer)

    # --- sharing flows with another copy ------------------------------------------------------

    @property
    def has_flow_records(self) -> bool:
        return bool(self._records)

    def take_flow_records(self) -> list[FlowRecord]:
        """The records queued since the last call (empty unless built with ``share_flows``)."""
        records, self._records = self._records, []
        return records

    def import_flow_records(self, records: list[FlowRecord], now: float) -> FlowImport:
        """Apply another copy's records. A flow new here must be allowed by a live rule of this
        view for the same peer, else the record is refused (and kept to try again with the next
        view, until it expires); a known one takes the record's state and expiry if later (up to
        the longest timeout from ``now``)."""
        applied = refused = 0
        for record in records:
            outcome = self._import(record, now)
            if outcome is _Import.APPLIED:
                applied += 1
                continue
            refused += 1
            if outcome is _Import.NOT_ALLOWED:
                self._deferred.append(record)
        self._record_counts["imported"] += applied
        self._record_counts["refused"] += refused
        return FlowImport(applied=applied, refused=refused)

    def retract_flow_records(self, records: list[FlowRecord], now: float) -> bool:
        """``records`` (from take_flow_records) could not be delivered. The flows they opened are
        closed again, and True returned: the packet that opened them must not be forwarded (its
        retransmission will try again). Other records are queued again by the flows' next packets."""
        opened = False
        for record in records:
            flow = self._flows.get(record.key, now)
            if flow is None or flow.opened is not record.opened:
                continue
            if record.kind is RecordKind.NEW:
                self._flows.remove(flow.key)
                self._rule_flows[flow.rule.name] -= 1
                self._rule_packets[flow.rule.name] -= 1
                self._verdicts[Allow.NEW] -= 1
                opened = True
            else:
                flow.shared_expires, flow.shared_bits = float("-inf"), 0
        return opened

    def _share_flow(self, flow: Flow, kind: RecordKind) -> None:
        if len(self._records) >= MAX_PENDING_FLOW_RECORDS:
            self._record_counts["lost"] += 1
            return
        self._records.append(
            FlowRecord(
                kind=kind,
                key=flow.key,
                opened=flow.opened,
                peer_tag=self._rules.peer_tags[flow.rule.peer],
                bits=flow.bits,
                expires=flow.expires,
            )
        )
        self._record_counts["exported"] += 1
        flow.shared_bits |= flow.bits
        flow.shared_expires = max(flow.shared_expires, flow.expires)

    def _share_if_changed(self, flow: Flow, timeout: float) -> None:
        if flow.bits & ~flow.shared_bits or flow.expires - flow.shared_expires > timeout * SHARE_REFRESH:
            self._share_flow(flow, RecordKind.UPDATE)

    def _import(self, record: FlowRecord, now: float) -> _Import:
        flow = self._flows.get(record.key, now)
        if flow is not None and flow.opened is not record.opened:
            return _Import.CONFLICT
        if record.kind is RecordKind.END:
            if flow is not None:
                self._flows.remove(flow.key)
            return _Import.APPLIED
        expires = min(record.expires, now + self._longest_timeout)
        if expires <= now:
            return _Import.STALE
        if flow is not None:
            flow.replied = flow.replied or bool(record.bits & FLOW_REPLIED)
            flow.fins |= record.bits & (TCP_FIN_OPENER | TCP_FIN_RESPONDER)
            flow.shared_bits |= record.bits
            flow.shared_expires = max(flow.shared_expires, record.expires)
            if flow.fins == TCP_FIN_OPENER | TCP_FIN_RESPONDER:  # closing: as if the FIN came here
                flow.expires = min(flow.expires, now + self._limits.tcp_closing)
            self._flows.extend(flow, expires)
            return _Import.APPLIED
        identity = self._rules.peer_of_tag.get(record.peer_tag)
        if identity is None:
            return _Import.NOT_ALLOWED
        version, protocol, src, _src_port, dst, dst_port = record.key
        rule = self._rules.match(
            record.opened,
            version=version,
            protocol=protocol,
            src=src,
            dst=dst,
            dst_port=dst_port,
            now=now,
            peer=identity,
        )
        if rule is None:
            return _Import.NOT_ALLOWED
        flow = Flow(
            key=record.key,
            opened=record.opened,
            rule=rule,
            replied=bool(record.bits & FLOW_REPLIED),
            fins=record.bits & (TCP_FIN_OPENER | TCP_FIN_RESPONDER),
            shared_expires=record.expires,
            shared_bits=record.bits,
        )
        return _Import.APPLIED if self._flows.insert(flow, now, expires) else _Import.NO_ROOM

    # --- the fast path ------------------------------------------------------------------------

    def _established(self, entry: _FastEntry, protocol: int, now: float, peer: str | None) -> Verdict | None:
        """The verdict for a later packet of a known flow, or None: let the full path decide."""
        # Entries are made by the full path for a packet it let through with this flow, so the
        # flow was (and stays) replied if these are its replies; the timeout follows its FINs.
        flow, _reply, rule, verdict, packets = entry
        if (
            flow.removed
            or now >= flow.expires
            or flow.rule is not rule
            or flow.key[1] != protocol
            or (rule.expires_at is not None and now >= rule.expires_at)
            or (peer is not None and rule.peer != peer)
        ):
            return None
        timeout = self._timeout(flow)
        if self._share and now + timeout - flow.shared_expires > timeout * SHARE_REFRESH:
            return None  # time to tell the other copy: the full path does it
        self._flows.touch(flow, now, timeout)
        packets[0] += 1
        return verdict

    def _remember(self, direction: Direction, key: bytes, flow: Flow, reply: bool) -> None:
        if flow.removed:
            return
        cache = self._fast[direction]
        if len(cache) >= self._limits.max_flows:
            cache.clear()  # stale entries of removed flows pile up: start afresh
        cell = self._fast_packets.setdefault(flow.rule.name, [0])
        cache[key] = (flow, reply, flow.rule, _allowed(Allow.ESTABLISHED, flow.rule), cell)

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
            return Verdict(allowed=False, reason=self._no_rule(packet, direction, now, peer)), None
        opens_flow = not packet.is_icmp or packet.echo_request
        if opens_flow and not packet.tcp_flags & TCP_RST:
            flow = Flow(key=_forward_key(packet), opened=direction, rule=rule)
            self._update_tcp(flow, packet, reply=False)
            if not self._flows.add(flow, now, self._timeout(flow)):
                return Verdict(allowed=False, reason=DropReason.FLOW_TABLE_FULL), None
            self._matched = (flow, False)
            if self._share:
                self._share_flow(flow, RecordKind.NEW)
        return _allowed(Allow.NEW, rule), rule

    def _no_rule(self, packet: Packet, direction: Direction, now: float, peer: str | None) -> DropReason:
        """EXPIRED when the packet's flow, or a rule that would have allowed it, has run out of
        time; else NO_RULE."""
        if self._flow_expired:
            return DropReason.EXPIRED
        expired = self._rules.match(
            direction,
            version=packet.version,
            protocol=packet.protocol,
            src=packet.src,
            dst=packet.dst,
            dst_port=packet.dst_port,
            now=now,
            peer=peer,
            expired=True,
        )
        return DropReason.NO_RULE if expired is None else DropReason.EXPIRED

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
            self._flow_expired = True
            return None
        self._update_tcp(flow, packet, reply=reply)
        if packet.tcp_flags & TCP_RST:
            self._flows.remove(flow.key)
            if self._share:
                self._share_flow(flow, RecordKind.END)
        else:
            timeout = self._timeout(flow)
            self._flows.touch(flow, now, timeout)
            self._matched = (flow, reply)
            if self._share:
                self._share_if_changed(flow, timeout)
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
