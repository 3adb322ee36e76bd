"""Two copies of the filter that each see one direction of the traffic (as the data plane's two
workers do) and share their flows with records: replies pass once the opener's record is
imported, state (reply seen, FINs, RST) and liveness travel both ways, each copy re-checks
imported flows against its own view, and records that could not be delivered are taken back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.filter.test_filter_state import (
    DC,
    DC4,
    DC6,
    HOST,
    HOST6,
    IN,
    LOCAL4,
    LOCAL6,
    OTHER,
    OUT,
    SERVER,
    SERVER6,
    STANDARD,
    T0,
    allowed,
    dropped,
    icmp,
    peer,
    rule,
    tcp,
    udp,
    view,
)
from trellis.agent.filter import Allow, Direction, DropReason, FlowLimits, PacketFilter
from trellis.agent.filter.filter import MAX_PENDING_FLOW_RECORDS
from trellis.agent.filter.flows import FLOW_REPLIED, TCP_FIN_OPENER
from trellis.agent.filter.packet import (
    EXT_HOP_BY_HOP,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    peek_established,
    pull_packet,
    push_ipv6_options,
)
from trellis.agent.filter.records import (
    FLOW_RECORD_SIZE,
    FlowRecord,
    MalformedFlowRecord,
    RecordKind,
    pull_flow_records,
    push_flow_record,
)
from trellis.agent.filter.rules import peer_tag
from trellis.v1 import common_pb2


def copies(policy: common_pb2.PolicyView = STANDARD) -> tuple[PacketFilter, PacketFilter]:
    """The outbound worker's filter and the inbound worker's, sharing flows."""
    return PacketFilter(policy, share_flows=True), PacketFilter(policy, share_flows=True)


def deliver(source: PacketFilter, target: PacketFilter, now: float) -> list[FlowRecord]:
    records = source.take_flow_records()
    target.import_flow_records(records, now)
    return records


# --- the codec ---------------------------------------------------------------------------------


def test_records_are_fixed_size_and_round_trip() -> None:
    records = [
        FlowRecord(
            kind=RecordKind.NEW,
            key=(4, PROTO_TCP, int(HOST), 40000, int(SERVER), 443),
            opened=Direction.OUTBOUND,
            peer_tag=peer_tag(DC),
            bits=0,
            expires=T0 + 30,
        ),
        FlowRecord(
            kind=RecordKind.UPDATE,
            key=(6, PROTO_UDP, int(SERVER6), 53, int(HOST6), 3333),
            opened=Direction.INBOUND,
            peer_tag=peer_tag(DC),
            bits=FLOW_REPLIED | TCP_FIN_OPENER,
            expires=T0 + 120.25,
        ),
        FlowRecord(
            kind=RecordKind.END,
            key=(4, 1, 1, 7, 2, 7),
            opened=Direction.OUTBOUND,
            peer_tag=b"\xff" * 8,
            bits=0,
            expires=0.0,
        ),
    ]
    data = b"".join(push_flow_record(r) for r in records)
    assert len(data) == 3 * FLOW_RECORD_SIZE
    assert pull_flow_records(data) == records


@pytest.mark.parametrize(
    ("offset", "value", "what"),
    [(0, 9, "version"), (1, 0, "kind"), (1, 4, "kind"), (2, 0x80, "flags"), (3, 5, "IP version")],
)
def test_malformed_records_are_refused(offset: int, value: int, what: str) -> None:
    record = bytearray(
        push_flow_record(
            FlowRecord(
                kind=RecordKind.NEW,
                key=(4, PROTO_TCP, 1, 2, 3, 4),
                opened=Direction.OUTBOUND,
                peer_tag=bytes(8),
                bits=0,
                expires=1.0,
            )
        )
    )
    record[offset] = value
    with pytest.raises(MalformedFlowRecord, match=what):
        pull_flow_records(bytes(record))
    with pytest.raises(MalformedFlowRecord, match="whole"):
        pull_flow_records(bytes(FLOW_RECORD_SIZE + 1))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3 * FLOW_RECORD_SIZE))
def test_garbage_parses_or_raises_the_typed_error(data: bytes) -> None:
    try:
        records = pull_flow_records(data)
    except MalformedFlowRecord:
        return
    assert all(push_flow_record(r) for r in records)


# --- sharing -----------------------------------------------------------------------------------


def test_reply_passes_once_the_openers_record_is_imported() -> None:
    out, inbound = copies()
    syn = tcp(HOST, SERVER, 40000, 443, TCP_SYN)
    synack = tcp(SERVER, HOST, 443, 40000, TCP_SYN | TCP_ACK)
    allowed(out.check(syn, OUT, T0), Allow.NEW, "web")
    # the reply reaches the other copy before the record: dropped, then re-checked
    first = inbound.check(synack, IN, T0 + 0.001)
    dropped(first, DropReason.NO_RULE)
    [record] = deliver(out, inbound, T0 + 0.001)
    assert record.kind is RecordKind.NEW and record.opened is Direction.OUTBOUND and record.bits == 0
    assert record.expires == T0 + 30  # unreplied TCP
    allowed(inbound.recheck(synack, IN, T0 + 0.001, previous=first), Allow.ESTABLISHED, "web")
    assert inbound.counters().verdicts == {Allow.ESTABLISHED: 1}  # the first drop is not counted
    assert inbound.counters().records_imported == 1
    # the responder cannot open the flow by looking like a reply, in the other copy either
    dropped(inbound.check(tcp(SERVER, HOST, 443, 40000, TCP_SYN), IN, T0 + 0.002), DropReason.NO_RULE)


def test_the_reply_seen_travels_back_and_keeps_the_openers_copy_long() -> None:
    out, inbound = copies()
    allowed(out.check(tcp(HOST, SERVER, 40000, 443, TCP_SYN), OUT, T0), Allow.NEW, "web")
    deliver(out, inbound, T0)
    allowed(
        inbound.check(tcp(SERVER, HOST, 443, 40000, TCP_SYN | TCP_ACK), IN, T0 + 1), Allow.ESTABLISHED, "web"
    )
    [update] = deliver(inbound, out, T0 + 1)
    assert update.kind is RecordKind.UPDATE and update.bits == FLOW_REPLIED
    assert update.expires == T0 + 1 + 3600
    # the opener's copy is established now: an hour of silence later the flow still exists
    # (an unreplied one would have gone after 30 s and its next packet opened a new flow)
    allowed(out.check(tcp(HOST, SERVER, 40000, 443, TCP_ACK), OUT, T0 + 1000), Allow.ESTABLISHED, "web")
    assert out.counters().flows == 1


def test_flows_the_peer_opens_are_answered_through_the_other_copy() -> None:
    out, inbound = copies()
    allowed(inbound.check(tcp(SERVER, HOST, 50000, 22, TCP_SYN), IN, T0), Allow.NEW, "ssh")
    dropped(out.check(tcp(HOST, SERVER, 22, 50000, TCP_SYN | TCP_ACK), OUT, T0), DropReason.NO_RULE)
    deliver(inbound, out, T0)
    allowed(out.check(tcp(HOST, SERVER, 22, 50000, TCP_SYN | TCP_ACK), OUT, T0), Allow.ESTABLISHED, "ssh")
    # and the site may still not open that flow towards dc-1 (no outbound ssh rule)
    dropped(out.check(tcp(HOST, SERVER, 50001, 22, TCP_SYN), OUT, T0), DropReason.NO_RULE)


def test_ping_replies_and_only_replies() -> None:
    out, inbound = copies()
    allowed(out.check(icmp(HOST, SERVER, 8, ident=9), OUT, T0), Allow.NEW, "ping")
    deliver(out, inbound, T0)
    allowed(inbound.check(icmp(SERVER, HOST, 0, ident=9), IN, T0), Allow.ESTABLISHED, "ping")
    dropped(inbound.check(icmp(SERVER, HOST, 8, ident=9), IN, T0), DropReason.NO_RULE)


def test_one_way_traffic_keeps_the_other_copy_alive() -> None:
    out, inbound = copies()
    allowed(out.check(udp(HOST, SERVER, 5353, 53), OUT, T0), Allow.NEW, "dns")
    deliver(out, inbound, T0)
    allowed(inbound.check(udp(SERVER, HOST, 53, 5353), IN, T0 + 1), Allow.ESTABLISHED, "dns")
    deliver(inbound, out, T0 + 1)
    # queries every 20 s for 10 minutes, one answer at the end: the answering copy last saw a
    # packet long ago (its own timeout is 120 s), but the asking copy told it the flow lives on
    for step in range(1, 31):
        allowed(out.check(udp(HOST, SERVER, 5353, 53), OUT, T0 + 1 + 20 * step), Allow.ESTABLISHED, "dns")
        deliver(out, inbound, T0 + 1 + 20 * step)
    allowed(inbound.check(udp(SERVER, HOST, 53, 5353), IN, T0 + 605), Allow.ESTABLISHED, "dns")
    # and the refreshes are few: about one per half timeout, not one per packet
    assert 4 <= out.counters().records_exported <= 12


def test_without_refreshes_the_other_copy_would_forget() -> None:
    out, inbound = copies()
    allowed(out.check(udp(HOST, SERVER, 5353, 53), OUT, T0), Allow.NEW, "dns")
    deliver(out, inbound, T0)
    out.take_flow_records()
    for step in range(1, 31):
        out.check(udp(HOST, SERVER, 5353, 53), OUT, T0 + 20 * step)
        out.take_flow_records()  # lost
    dropped(inbound.check(udp(SERVER, HOST, 53, 5353), IN, T0 + 605), DropReason.NO_RULE)


def test_fins_and_rst_travel() -> None:
    out, inbound = copies()
    out.check(tcp(HOST, SERVER, 40000, 443, TCP_SYN), OUT, T0)
    deliver(out, inbound, T0)
    inbound.check(tcp(SERVER, HOST, 443, 40000, TCP_SYN | TCP_ACK), IN, T0)
    deliver(inbound, out, T0)
    out.check(tcp(HOST, SERVER, 40000, 443, TCP_FIN | TCP_ACK), OUT, T0 + 1)
    [fin] = deliver(out, inbound, T0 + 1)
    assert fin.bits == FLOW_REPLIED | TCP_FIN_OPENER
    inbound.check(tcp(SERVER, HOST, 443, 40000, TCP_FIN | TCP_ACK), IN, T0 + 2)
    deliver(inbound, out, T0 + 2)
    # both FINs seen in both copies: the closing timeout (30 s), not the hour of an established
    # flow; past it the opener's next segment opens a new flow, the peer's finds none
    assert out.check(tcp(HOST, SERVER, 40000, 443, TCP_ACK), OUT, T0 + 2 + 31).reason is Allow.NEW
    dropped(inbound.check(tcp(SERVER, HOST, 443, 40000, TCP_ACK), IN, T0 + 2 + 31), DropReason.NO_RULE)

    out2, inbound2 = copies()
    out2.check(tcp(HOST, SERVER, 40001, 443, TCP_SYN), OUT, T0)
    deliver(out2, inbound2, T0)
    allowed(
        inbound2.check(tcp(SERVER, HOST, 443, 40001, TCP_RST | TCP_ACK), IN, T0 + 1), Allow.ESTABLISHED, "web"
    )
    [end] = deliver(inbound2, out2, T0 + 1)
    assert end.kind is RecordKind.END
    assert out2.counters().flows == inbound2.counters().flows == 0


def test_each_copy_judges_imported_flows_by_its_own_view() -> None:
    out = PacketFilter(STANDARD, share_flows=True)
    no_web = view(peer(DC, outbound=[rule("dns", [LOCAL4, LOCAL6], [DC4], PROTO_UDP, (53, 53))], inbound=[]))
    stranger = view(
        peer("spiffe://example.org/site/other", outbound=[rule("web", [LOCAL4], [DC4])], inbound=[])
    )
    for port, target_view in enumerate((no_web, stranger), start=40000):
        inbound = PacketFilter(target_view, share_flows=True)
        out.check(tcp(HOST, SERVER, port, 443, TCP_SYN), OUT, T0)
        result = inbound.import_flow_records(out.take_flow_records(), T0)
        assert (result.applied, result.refused) == (0, 1)
        assert inbound.counters().flows == 0 and inbound.counters().records_refused == 1


def test_stale_and_far_future_records() -> None:
    out, inbound = copies()
    out.check(udp(HOST, SERVER, 1, 53), OUT, T0)
    records = out.take_flow_records()
    assert inbound.import_flow_records(records, T0 + 31).refused == 1  # it had expired by then
    [record] = records
    forever = FlowRecord(
        kind=record.kind,
        key=record.key,
        opened=record.opened,
        peer_tag=record.peer_tag,
        bits=FLOW_REPLIED,
        expires=T0 + 10**9,
    )
    assert inbound.import_flow_records([forever], T0).applied == 1
    # held at most for the longest timeout (an hour), whatever the record claims
    dropped(inbound.check(udp(SERVER, HOST, 53, 1), IN, T0 + 3601), DropReason.NO_RULE)


def test_undelivered_records_close_the_flow_they_opened() -> None:
    out, inbound = copies()
    syn = tcp(HOST, SERVER, 40000, 443, TCP_SYN)
    allowed(out.check(syn, OUT, T0), Allow.NEW, "web")
    assert out.retract_flow_records(out.take_flow_records(), T0) is True
    assert out.counters().flows == 0
    assert out.counters().rules["web"].flows == 0
    # the retransmitted SYN opens it again, and this time the record goes through
    allowed(out.check(syn, OUT, T0 + 1), Allow.NEW, "web")
    deliver(out, inbound, T0 + 1)
    allowed(
        inbound.check(tcp(SERVER, HOST, 443, 40000, TCP_SYN | TCP_ACK), IN, T0 + 1), Allow.ESTABLISHED, "web"
    )
    # an undelivered update is not lost: the flow's next packet queues it again
    update = inbound.take_flow_records()
    assert inbound.retract_flow_records(update, T0 + 1) is False
    inbound.check(tcp(SERVER, HOST, 443, 40000, TCP_ACK), IN, T0 + 2)
    [again] = inbound.take_flow_records()
    assert again.kind is RecordKind.UPDATE and again.bits == FLOW_REPLIED


def test_records_wait_for_the_taker_within_a_bound() -> None:
    out = PacketFilter(STANDARD, share_flows=True)
    for port in range(MAX_PENDING_FLOW_RECORDS + 5):
        out.check(udp(HOST, SERVER, 1024 + port, 53), OUT, T0)
    assert len(out.take_flow_records()) == MAX_PENDING_FLOW_RECORDS
    assert out.counters().records_lost == 5
    quiet = PacketFilter(STANDARD)  # not sharing: nothing queued
    quiet.check(udp(HOST, SERVER, 1, 53), OUT, T0)
    assert not quiet.has_flow_records


def test_an_update_keeps_shared_flows_it_allows() -> None:
    out, inbound = copies()
    out.check(tcp(HOST, SERVER, 40000, 443, TCP_SYN), OUT, T0)
    out.check(udp(HOST, SERVER, 5353, 53), OUT, T0)
    deliver(out, inbound, T0)
    web_only = view(
        peer(DC, outbound=[rule("web2", [LOCAL4, LOCAL6], [DC4], PROTO_TCP, (443, 443))], inbound=[])
    )
    assert out.update(web_only, T0 + 1) == inbound.update(web_only, T0 + 1) == 1  # dns ended
    allowed(
        inbound.check(tcp(SERVER, HOST, 443, 40000, TCP_SYN | TCP_ACK), IN, T0 + 1), Allow.ESTABLISHED, "web2"
    )
    dropped(inbound.check(udp(SERVER, HOST, 53, 5353), IN, T0 + 1), DropReason.NO_RULE)


def test_a_record_the_old_view_refuses_is_applied_with_the_new_one() -> None:
    old = view(peer(DC, outbound=[rule("dns", [LOCAL4], [DC4], PROTO_UDP, (53, 53))], inbound=[]))
    new = view(
        peer(
            DC,
            outbound=[
                rule("dns", [LOCAL4], [DC4], PROTO_UDP, (53, 53)),
                rule("web", [LOCAL4], [DC4], PROTO_TCP),
            ],
            inbound=[],
        )
    )
    out, inbound = copies(old)
    out.update(new, T0)  # the outbound copy has the new view first ...
    allowed(out.check(tcp(HOST, SERVER, 40000, 443, TCP_SYN), OUT, T0), Allow.NEW, "web")
    assert inbound.import_flow_records(out.take_flow_records(), T0).refused == 1  # ... not this one
    synack = tcp(SERVER, HOST, 443, 40000, TCP_SYN | TCP_ACK)
    dropped(inbound.check(synack, IN, T0), DropReason.NO_RULE)
    inbound.update(new, T0 + 0.01)  # a moment later
    allowed(inbound.check(synack, IN, T0 + 0.02), Allow.ESTABLISHED, "web")
    # a record no view allows is not kept past its expiry
    inbound.update(old, T0 + 1)
    inbound.update(new, T0 + 40)
    dropped(inbound.check(synack, IN, T0 + 40), DropReason.NO_RULE)


# --- the fast path gives the full path's verdicts ------------------------------------------------


def internet_checksum(data: bytes) -> int:
    total = sum(int.from_bytes(data[i : i + 2]) for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def with_option(packet: bytes) -> bytes:
    """The same IPv4 packet with a 4-byte option (NOP, NOP, NOP, End): the full path's."""
    data = bytearray(packet[:20] + b"\x01\x01\x01\x00" + packet[20:])
    data[0] = 0x46
    data[2:4] = len(data).to_bytes(2)
    data[10:12] = b"\x00\x00"
    data[10:12] = internet_checksum(bytes(data[:24])).to_bytes(2)
    return bytes(data)


def with_hop_by_hop(packet: bytes) -> bytes:
    """The same IPv6 packet with an empty Hop-by-Hop Options header: the full path's."""
    options = push_ipv6_options(next_header=packet[6])
    data = bytearray(packet[:40] + options + packet[40:])
    data[6] = EXT_HOP_BY_HOP
    data[4:6] = (len(data) - 40).to_bytes(2)
    return bytes(data)


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(
            ["syn", "synack", "ack-out", "ack-in", "fin-out", "rst-in", "udp-out", "udp-in", "update"]
        ),
        st.sampled_from([0.0, 0.5, 29.0, 45.0, 130.0]),
    ),
    max_size=30,
)


def test_fast_path_respects_rule_expiry_and_replies() -> None:
    jit = view(
        peer(
            DC, outbound=[rule("jit", [LOCAL4], [DC4], PROTO_TCP, (443, 443), expires_at=T0 + 60)], inbound=[]
        )
    )
    f = PacketFilter(jit)
    allowed(f.check(tcp(HOST, SERVER, 7, 443, TCP_SYN), OUT, T0), Allow.NEW, "jit")
    for t in (1, 2, 3):  # the second of each is a fast-path lookup
        allowed(f.check(tcp(HOST, SERVER, 7, 443, TCP_ACK), OUT, T0 + t), Allow.ESTABLISHED, "jit")
    # no reply seen yet: a reply-looking ACK is the reply (it marks the flow replied) ...
    allowed(f.check(tcp(SERVER, HOST, 443, 7, TCP_ACK), IN, T0 + 4), Allow.ESTABLISHED, "jit")
    allowed(f.check(tcp(SERVER, HOST, 443, 7, TCP_ACK), IN, T0 + 5), Allow.ESTABLISHED, "jit")
    # ... and at the rule's end both directions stop at once
    dropped(f.check(tcp(HOST, SERVER, 7, 443, TCP_ACK), OUT, T0 + 60), DropReason.EXPIRED)
    dropped(f.check(tcp(SERVER, HOST, 443, 7, TCP_ACK), IN, T0 + 60), DropReason.NO_RULE)
    assert f.counters().verdicts == {
        Allow.NEW: 1,
        Allow.ESTABLISHED: 5,
        DropReason.EXPIRED: 1,
        DropReason.NO_RULE: 1,
    }
    assert f.counters().rules["jit"].packets == 6


def test_fast_path_lets_go_of_ended_flows_other_protocols_peers_and_rules() -> None:
    two = view(
        peer(
            DC,
            outbound=[
                rule("jit", [LOCAL4], [DC4], PROTO_TCP, (443, 443), expires_at=T0 + 20),
                rule("all-tcp", [LOCAL4], [DC4], PROTO_TCP),
                rule("quic", [LOCAL4], [DC4], PROTO_UDP, (443, 443)),
            ],
            inbound=[],
        ),
        peer(OTHER, outbound=[], inbound=[]),
    )
    f = PacketFilter(two)
    ack = tcp(HOST, SERVER, 7, 443, TCP_ACK)
    allowed(f.check(ack, OUT, T0), Allow.NEW, "jit")
    allowed(f.check(ack, OUT, T0 + 1), Allow.ESTABLISHED, "jit")
    # another peer's packet with the same tuple is not this flow's
    dropped(f.check(ack, OUT, T0 + 2, peer=OTHER), DropReason.NO_RULE)
    # nor is a UDP datagram between the same ports
    allowed(f.check(udp(HOST, SERVER, 7, 443), OUT, T0 + 2), Allow.NEW, "quic")
    # the rule ends: the flow moves to the next rule, and its verdicts say so
    allowed(f.check(ack, OUT, T0 + 20), Allow.ESTABLISHED, "all-tcp")
    allowed(f.check(ack, OUT, T0 + 21), Allow.ESTABLISHED, "all-tcp")
    # a RST ends the flow: the next segment opens a new one
    allowed(f.check(tcp(SERVER, HOST, 443, 7, TCP_RST), IN, T0 + 22), Allow.ESTABLISHED, "all-tcp")
    allowed(f.check(ack, OUT, T0 + 23), Allow.NEW, "all-tcp")


@settings(max_examples=400, deadline=None)
@given(EVENTS)
def test_fast_path_verdicts_equal_full_path_verdicts(events: list[tuple[str, float]]) -> None:
    jit_view = view(
        peer(
            DC,
            outbound=[
                rule("web", [LOCAL4], [DC4], PROTO_TCP, (443, 443), expires_at=T0 + 60),
                rule("dns", [LOCAL4], [DC4], PROTO_UDP, (53, 53)),
                rule("ping", [LOCAL4], [DC4], PROTO_ICMP),
                rule("ping", [LOCAL6], [DC6], PROTO_ICMPV6),
            ],
            inbound=[],
        )
    )
    packets = {
        "ping-out": (icmp(HOST, SERVER, 8, ident=3), OUT),
        "pong-in": (icmp(SERVER, HOST, 0, ident=3), IN),
        "ping-in": (icmp(SERVER, HOST, 8, ident=3), IN),
        "pong-out": (icmp(HOST, SERVER, 0, ident=3), OUT),
        "ping6-out": (icmp(HOST6, SERVER6, 128, ident=3), OUT),
        "pong6-in": (icmp(SERVER6, HOST6, 129, ident=3), IN),
        "syn": (tcp(HOST, SERVER, 40000, 443, TCP_SYN), OUT),
        "synack": (tcp(SERVER, HOST, 443, 40000, TCP_SYN | TCP_ACK), IN),
        "ack-out": (tcp(HOST, SERVER, 40000, 443, TCP_ACK), OUT),
        "ack-in": (tcp(SERVER, HOST, 443, 40000, TCP_ACK), IN),
        "fin-out": (tcp(HOST, SERVER, 40000, 443, TCP_FIN | TCP_ACK), OUT),
        "rst-in": (tcp(SERVER, HOST, 443, 40000, TCP_RST), IN),
        "udp-out": (udp(HOST, SERVER, 5353, 53), OUT),
        "udp-in": (udp(SERVER, HOST, 53, 5353), IN),
    }
    fast, full = PacketFilter(jit_view, limits=FlowLimits()), PacketFilter(jit_view, limits=FlowLimits())
    now = T0
    for name, delay in events:
        now += delay
        if name == "update":
            fast.update(jit_view, now)
            full.update(jit_view, now)
            continue
        packet, direction = packets[name]
        slow = with_option(packet) if packet[0] == 0x45 else with_hop_by_hop(packet)
        assert fast.check(packet, direction, now) == full.check(slow, direction, now), name
    assert fast.counters().flows == full.counters().flows


SAMPLES = [
    tcp(HOST, SERVER, 40000, 443, TCP_ACK),
    udp(HOST, SERVER, 5353, 53),
    icmp(HOST, SERVER, 8, ident=3),
    tcp(HOST6, SERVER6, 40000, 443, TCP_ACK),
    udp(HOST6, SERVER6, 5353, 53),
    icmp(HOST6, SERVER6, 129, ident=3),
]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(SAMPLES), st.lists(st.tuples(st.integers(0, 59), st.integers(0, 255)), max_size=3))
def test_fast_path_reads_what_the_full_parse_reads(sample: bytes, changes: list[tuple[int, int]]) -> None:
    data = bytearray(sample)
    for offset, value in changes:
        if offset < len(data):
            data[offset] = value
    peeked = peek_established(bytes(data))
    if peeked is None:
        return
    key, protocol = peeked
    packet = pull_packet(bytes(data))  # never MalformedPacket when the fast path took it
    assert packet.protocol == protocol and packet.fragment is None and packet.quoted is None
    assert not packet.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST)
    width = 4 if packet.version == 4 else 16
    assert key[: 2 * width] == packet.src.to_bytes(width) + packet.dst.to_bytes(width)
    if packet.is_icmp:
        assert packet.echo_request or packet.echo_reply
        assert key[2 * width + 2 :] == packet.src_port.to_bytes(2)
    else:
        assert key[2 * width :] == packet.src_port.to_bytes(2) + packet.dst_port.to_bytes(2)


def test_a_flow_replaced_by_the_same_tuple_opened_the_other_way_leaves_the_fast_path() -> None:
    both = view(
        peer(
            DC,
            outbound=[rule("out-udp", [LOCAL4, DC4], [DC4, LOCAL4], PROTO_UDP)],
            inbound=[rule("in-udp", [LOCAL4, DC4], [DC4, LOCAL4], PROTO_UDP)],
        )
    )
    f = PacketFilter(both)
    inbound_first = udp(SERVER, HOST, 53, 5353)
    allowed(f.check(inbound_first, IN, T0), Allow.NEW, "in-udp")
    allowed(f.check(inbound_first, IN, T0 + 1), Allow.ESTABLISHED, "in-udp")  # now a fast-path entry
    # the same tuple travelling the other way is a new flow under the outbound rule, in its place
    allowed(f.check(inbound_first, OUT, T0 + 2), Allow.NEW, "out-udp")
    allowed(f.check(inbound_first, OUT, T0 + 3), Allow.ESTABLISHED, "out-udp")
    # the inbound flow is gone: its packets open a new one rather than ride the old entry
    allowed(f.check(inbound_first, IN, T0 + 4), Allow.NEW, "in-udp")
