"""The stateful filter: direction, replies only for established flows, ICMP, fragments, timeouts,
the table bound, counters, expiry and view updates."""

from __future__ import annotations

import ipaddress

import pytest

from trellis.agent.filter import (
    Allow,
    Direction,
    DropReason,
    FlowLimits,
    InvalidPolicyView,
    PacketFilter,
    Verdict,
)
from trellis.agent.filter.packet import (
    EXT_FRAGMENT,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    push_icmp,
    push_ipv4,
    push_ipv6,
    push_ipv6_fragment,
    push_tcp,
    push_udp,
)
from trellis.agent.filter.rules import MAX_RULES_PER_PEER
from trellis.v1 import common_pb2

OUT, IN = Direction.OUTBOUND, Direction.INBOUND
DC = "spiffe://example.org/site/dc-1"
OTHER = "spiffe://example.org/site/branch-b"
LOCAL4, LOCAL6 = "10.1.0.0/24", "fd00:1::/64"
DC4, DC6 = "10.10.0.0/16", "fd00:10::/48"
OTHER4 = "10.2.0.0/24"
T0 = 1_750_000_000.0

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
ip = ipaddress.ip_address
HOST, HOST6 = ipaddress.IPv4Address("10.1.0.5"), ipaddress.IPv6Address("fd00:1::5")
SERVER, SERVER6 = ipaddress.IPv4Address("10.10.3.4"), ipaddress.IPv6Address("fd00:10::4")


def rule(
    name: str,
    src: list[str],
    dst: list[str],
    protocol: int = 0,
    ports: tuple[int, int] = (0, 65535),
    *,
    expires_at: float | None = None,
) -> common_pb2.FilterRule:
    message = common_pb2.FilterRule(
        rule=name,
        src_prefixes=src,
        dst_prefixes=dst,
        protocol=protocol,
        port_start=ports[0],
        port_end=ports[1],
    )
    if expires_at is not None:
        message.expires_at.seconds = int(expires_at)
    return message


def peer(
    identity: str, outbound: list[common_pb2.FilterRule], inbound: list[common_pb2.FilterRule]
) -> common_pb2.PeerPolicy:
    return common_pb2.PeerPolicy(identity=identity, outbound=outbound, inbound=inbound)


def view(*peers: common_pb2.PeerPolicy) -> common_pb2.PolicyView:
    return common_pb2.PolicyView(policy_version=1, peers=list(peers))


# The site's view: it may open HTTPS, DNS (UDP 53), SIP range and ping towards dc-1; dc-1 may open SSH.
STANDARD = view(
    peer(
        DC,
        outbound=[
            rule("web", [LOCAL4, LOCAL6], [DC4, DC6], PROTO_TCP, (443, 443)),
            rule("dns", [LOCAL4, LOCAL6], [DC4, DC6], PROTO_UDP, (53, 53)),
            rule("sip", [LOCAL4], [DC4], PROTO_UDP, (5000, 5010)),
            rule("ping", [LOCAL4], [DC4], PROTO_ICMP),
            rule("ping", [LOCAL6], [DC6], PROTO_ICMPV6),
        ],
        inbound=[rule("ssh", [DC4, DC6], [LOCAL4, LOCAL6], PROTO_TCP, (22, 22))],
    )
)


def tcp(src: Address, dst: Address, sport: int, dport: int, flags: int) -> bytes:
    segment = push_tcp(src=src, dst=dst, src_port=sport, dst_port=dport, flags=flags)
    return ip_packet(src, dst, PROTO_TCP, segment)


def udp(src: Address, dst: Address, sport: int, dport: int) -> bytes:
    return ip_packet(src, dst, PROTO_UDP, push_udp(src=src, dst=dst, src_port=sport, dst_port=dport))


def icmp(
    src: Address,
    dst: Address,
    icmp_type: int,
    ident: int = 0,
    quote: bytes = b"",
) -> bytes:
    protocol = PROTO_ICMP if src.version == 4 else PROTO_ICMPV6
    message = push_icmp(src=src, dst=dst, icmp_type=icmp_type, ident=ident, payload=quote)
    return ip_packet(src, dst, protocol, message)


def ip_packet(src: Address, dst: Address, protocol: int, payload: bytes) -> bytes:
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        return push_ipv4(src=src, dst=dst, protocol=protocol, payload=payload)
    assert isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address)
    return push_ipv6(src=src, dst=dst, next_header=protocol, payload=payload)


def allowed(verdict: Verdict, reason: Allow, rule_name: str) -> None:
    assert verdict == Verdict(allowed=True, reason=reason, rule=rule_name, peer=DC), verdict


def dropped(verdict: Verdict, reason: DropReason) -> None:
    assert verdict == Verdict(allowed=False, reason=reason), verdict


def test_tcp_direction_and_replies() -> None:
    f = PacketFilter(STANDARD)
    # dc-1 cannot open HTTPS towards us; a SYN-ACK out of nowhere is no reply either.
    dropped(f.check(tcp(SERVER, HOST, 443, 40000, TCP_SYN | TCP_ACK), IN, T0), DropReason.NO_RULE)
    allowed(f.check(tcp(HOST, SERVER, 40000, 443, TCP_SYN), OUT, T0), Allow.NEW, "web")
    allowed(f.check(tcp(SERVER, HOST, 443, 40000, TCP_SYN | TCP_ACK), IN, T0 + 0.1), Allow.ESTABLISHED, "web")
    allowed(f.check(tcp(HOST, SERVER, 40000, 443, TCP_ACK), OUT, T0 + 0.2), Allow.ESTABLISHED, "web")
    # A bare SYN from the responder on the same ports is a new connection, not a reply.
    dropped(f.check(tcp(SERVER, HOST, 443, 40000, TCP_SYN), IN, T0 + 0.3), DropReason.NO_RULE)
    # The other way round: dc-1 may open SSH, and we reply; we may not open SSH towards it.
    allowed(f.check(tcp(SERVER, HOST, 50000, 22, TCP_SYN), IN, T0), Allow.NEW, "ssh")
    allowed(f.check(tcp(HOST, SERVER, 22, 50000, TCP_SYN | TCP_ACK), OUT, T0), Allow.ESTABLISHED, "ssh")
    dropped(f.check(tcp(HOST, SERVER, 50001, 22, TCP_SYN), OUT, T0), DropReason.NO_RULE)


def test_ports_and_prefixes_are_exact() -> None:
    f = PacketFilter(STANDARD)
    verdicts = [f.check(udp(HOST, SERVER, 1000, port), OUT, T0).allowed for port in (4999, 5000, 5010, 5011)]
    assert verdicts == [False, True, True, False]
    dropped(f.check(udp(ip("10.9.0.1"), SERVER, 1, 53), OUT, T0), DropReason.NO_RULE)  # not our address
    dropped(f.check(udp(HOST, ip("10.11.0.1"), 1, 53), OUT, T0), DropReason.NO_RULE)  # not dc-1's
    dropped(f.check(udp(HOST6, SERVER6, 1, 5000), OUT, T0), DropReason.NO_RULE)  # sip is IPv4 only


def test_ipv6_udp_flow() -> None:
    f = PacketFilter(STANDARD)
    allowed(f.check(udp(HOST6, SERVER6, 3333, 53), OUT, T0), Allow.NEW, "dns")
    allowed(f.check(udp(SERVER6, HOST6, 53, 3333), IN, T0 + 1), Allow.ESTABLISHED, "dns")
    dropped(f.check(udp(SERVER6, HOST6, 53, 3334), IN, T0 + 1), DropReason.NO_RULE)  # another port


@pytest.mark.parametrize(
    ("local", "remote", "echo_request", "echo_reply"), [(HOST, SERVER, 8, 0), (HOST6, SERVER6, 128, 129)]
)
def test_ping_and_echo_replies(local: Address, remote: Address, echo_request: int, echo_reply: int) -> None:
    f = PacketFilter(STANDARD)
    dropped(
        f.check(icmp(remote, local, echo_reply, ident=7), IN, T0), DropReason.NO_RULE
    )  # unsolicited reply
    allowed(f.check(icmp(local, remote, echo_request, ident=7), OUT, T0), Allow.NEW, "ping")
    allowed(f.check(icmp(remote, local, echo_reply, ident=7), IN, T0 + 0.01), Allow.ESTABLISHED, "ping")
    dropped(f.check(icmp(remote, local, echo_reply, ident=8), IN, T0 + 0.01), DropReason.NO_RULE)  # other id
    dropped(
        f.check(icmp(remote, local, echo_request, ident=7), IN, T0 + 0.01), DropReason.NO_RULE
    )  # dc-1 may not ping
    dropped(
        f.check(icmp(remote, local, echo_reply, ident=7), IN, T0 + 31), DropReason.NO_RULE
    )  # idle 30 s: gone


def test_icmp_rule_allows_other_icmp_messages_one_way() -> None:
    f = PacketFilter(STANDARD)
    allowed(f.check(icmp(HOST, SERVER, 13), OUT, T0), Allow.NEW, "ping")  # a timestamp request
    dropped(f.check(icmp(SERVER, HOST, 14), IN, T0), DropReason.NO_RULE)  # not a tracked reply
    assert f.counters().flows == 0  # only echo requests create state


def test_icmp_errors_about_allowed_flows() -> None:
    f = PacketFilter(STANDARD)
    query = udp(HOST, SERVER, 5353, 53)
    allowed(f.check(query, OUT, T0), Allow.NEW, "dns")
    router = ip("10.10.0.1")
    unreachable = icmp(router, HOST, 3, quote=query[:28])
    allowed(f.check(unreachable, IN, T0 + 0.1), Allow.RELATED, "dns")
    # An error about a flow that does not exist, or sent to someone else, is refused.
    dropped(
        f.check(icmp(router, HOST, 3, quote=udp(HOST, SERVER, 5354, 53)[:28]), IN, T0), DropReason.NO_RULE
    )
    dropped(f.check(icmp(router, ip("10.1.0.6"), 3, quote=query[:28]), IN, T0), DropReason.NO_RULE)
    # Errors about replies count too: dc-1 opened SSH, our reply's error comes back from dc-1's side.
    syn = tcp(SERVER6, HOST6, 50000, 22, TCP_SYN)
    allowed(f.check(syn, IN, T0), Allow.NEW, "ssh")
    our_reply = tcp(HOST6, SERVER6, 22, 50000, TCP_SYN | TCP_ACK)
    allowed(f.check(our_reply, OUT, T0), Allow.ESTABLISHED, "ssh")
    too_big = icmp(ip("fd00:10::1"), HOST6, 2, quote=our_reply[:1232])
    allowed(f.check(too_big, IN, T0), Allow.RELATED, "ssh")
    # Errors we send about dc-1's flows go out as related too.
    allowed(f.check(icmp(HOST6, SERVER6, 1, quote=syn[:48]), OUT, T0), Allow.RELATED, "ssh")


def test_any_protocol_rule_tracks_other_protocols() -> None:
    gre = view(peer(DC, outbound=[rule("tunnel", [LOCAL4], [DC4])], inbound=[]))
    f = PacketFilter(gre)
    allowed(f.check(ip_packet(HOST, SERVER, 47, b"\x00" * 8), OUT, T0), Allow.NEW, "tunnel")
    allowed(f.check(ip_packet(SERVER, HOST, 47, b"\x00" * 8), IN, T0 + 1), Allow.ESTABLISHED, "tunnel")
    dropped(f.check(ip_packet(SERVER, ip("10.1.0.9"), 47, b""), IN, T0 + 1), DropReason.NO_RULE)


def test_idle_timeouts_per_protocol() -> None:
    limits = FlowLimits(
        udp_unreplied=30, udp_replied=120, tcp_unreplied=30, tcp_established=3600, tcp_closing=30
    )
    f = PacketFilter(STANDARD, limits=limits)
    f.check(udp(HOST, SERVER, 1, 53), OUT, T0)
    dropped(f.check(udp(SERVER, HOST, 53, 1), IN, T0 + 30), DropReason.NO_RULE)  # unreplied for 30 s
    f.check(udp(HOST, SERVER, 2, 53), OUT, T0)
    allowed(f.check(udp(SERVER, HOST, 53, 2), IN, T0 + 29), Allow.ESTABLISHED, "dns")
    allowed(f.check(udp(SERVER, HOST, 53, 2), IN, T0 + 29 + 119), Allow.ESTABLISHED, "dns")  # replied: 120 s
    dropped(f.check(udp(SERVER, HOST, 53, 2), IN, T0 + 29 + 119 + 120), DropReason.NO_RULE)
    f.check(tcp(HOST, SERVER, 3, 443, TCP_SYN), OUT, T0)
    f.check(tcp(SERVER, HOST, 443, 3, TCP_SYN | TCP_ACK), IN, T0 + 1)
    allowed(f.check(tcp(SERVER, HOST, 443, 3, TCP_ACK), IN, T0 + 3000), Allow.ESTABLISHED, "web")
    f.check(tcp(HOST, SERVER, 3, 443, TCP_FIN | TCP_ACK), OUT, T0 + 3001)
    f.check(tcp(SERVER, HOST, 443, 3, TCP_FIN | TCP_ACK), IN, T0 + 3002)  # both sides closed: 30 s left
    dropped(f.check(tcp(SERVER, HOST, 443, 3, TCP_ACK), IN, T0 + 3032), DropReason.NO_RULE)


def test_reset_removes_the_flow() -> None:
    f = PacketFilter(STANDARD)
    f.check(tcp(HOST, SERVER, 4, 443, TCP_SYN), OUT, T0)
    allowed(f.check(tcp(SERVER, HOST, 443, 4, TCP_RST | TCP_ACK), IN, T0), Allow.ESTABLISHED, "web")
    dropped(f.check(tcp(SERVER, HOST, 443, 4, TCP_ACK), IN, T0), DropReason.NO_RULE)
    # A RST as first packet passes (the rule allows it) without creating state.
    allowed(f.check(tcp(HOST, SERVER, 5, 443, TCP_RST), OUT, T0), Allow.NEW, "web")
    assert f.counters().flows == 0


def test_table_bound_evicts_unreplied_flows_first() -> None:
    f = PacketFilter(STANDARD, limits=FlowLimits(max_flows=3))
    for port in (1, 2, 3):
        f.check(udp(HOST, SERVER, port, 53), OUT, T0 + port)
    allowed(f.check(udp(HOST, SERVER, 4, 53), OUT, T0 + 4), Allow.NEW, "dns")  # evicts port 1's flow
    counters = f.counters()
    assert (counters.flows, counters.evictions) == (3, 1)
    dropped(f.check(udp(SERVER, HOST, 53, 1), IN, T0 + 5), DropReason.NO_RULE)
    # Once every flow has been answered, none is evicted: the new flow is refused instead.
    for port in (2, 3, 4):
        f.check(udp(SERVER, HOST, 53, port), IN, T0 + 5)
    dropped(f.check(udp(HOST, SERVER, 5, 53), OUT, T0 + 6), DropReason.FLOW_TABLE_FULL)
    allowed(f.check(udp(SERVER, HOST, 53, 2), IN, T0 + 6), Allow.ESTABLISHED, "dns")
    # Idle flows expire and make room again.
    allowed(f.check(udp(HOST, SERVER, 5, 53), OUT, T0 + 200), Allow.NEW, "dns")
    assert f.counters().flows == 1


def test_counters_per_rule_and_reason() -> None:
    f = PacketFilter(STANDARD)
    f.check(tcp(HOST, SERVER, 1, 443, TCP_SYN), OUT, T0)
    f.check(tcp(SERVER, HOST, 443, 1, TCP_SYN | TCP_ACK), IN, T0)
    f.check(tcp(HOST, SERVER, 1, 443, TCP_ACK), OUT, T0)
    f.check(udp(HOST, SERVER, 1, 53), OUT, T0)
    f.check(udp(HOST, SERVER, 1, 54), OUT, T0)
    f.check(b"\x45\x00", OUT, T0)
    counters = f.counters()
    assert {name: (c.flows, c.packets) for name, c in counters.rules.items()} == {
        "dns": (1, 1),
        "web": (1, 3),
    }
    assert counters.verdicts == {
        Allow.NEW: 2,
        Allow.ESTABLISHED: 2,
        DropReason.NO_RULE: 1,
        DropReason.TRUNCATED: 1,
    }


def test_malformed_packets_are_dropped_with_their_reason() -> None:
    f = PacketFilter(STANDARD)
    good = tcp(HOST, SERVER, 1, 443, TCP_SYN)
    dropped(f.check(b"", OUT, T0), DropReason.TRUNCATED)
    dropped(f.check(good[:30], OUT, T0), DropReason.BAD_LENGTH)
    dropped(f.check(b"\x75" + good[1:], OUT, T0), DropReason.BAD_HEADER)
    damaged = bytearray(good)
    damaged[8] ^= 1
    dropped(f.check(bytes(damaged), OUT, T0), DropReason.BAD_CHECKSUM)


def test_expired_rule_ends_new_and_live_flows() -> None:
    deadline = T0 + 60
    jit = view(
        peer(
            DC,
            outbound=[rule("jit", [LOCAL4], [DC4], PROTO_TCP, (3389, 3389), expires_at=deadline)],
            inbound=[],
        )
    )
    f = PacketFilter(jit)
    allowed(f.check(tcp(HOST, SERVER, 7, 3389, TCP_SYN), OUT, T0), Allow.NEW, "jit")
    allowed(f.check(tcp(SERVER, HOST, 3389, 7, TCP_SYN | TCP_ACK), IN, T0 + 1), Allow.ESTABLISHED, "jit")
    allowed(f.check(tcp(SERVER, HOST, 3389, 7, TCP_ACK), IN, deadline - 0.001), Allow.ESTABLISHED, "jit")
    # the flow ends with its rule, and no new one opens: both say why
    dropped(f.check(tcp(SERVER, HOST, 3389, 7, TCP_ACK), IN, deadline), DropReason.EXPIRED)
    dropped(f.check(tcp(HOST, SERVER, 7, 3389, TCP_ACK), OUT, deadline), DropReason.EXPIRED)
    dropped(f.check(tcp(HOST, SERVER, 8, 3389, TCP_SYN), OUT, deadline), DropReason.EXPIRED)
    dropped(f.check(tcp(HOST, SERVER, 8, 3390, TCP_SYN), OUT, deadline), DropReason.NO_RULE)  # never allowed
    dropped(f.check(tcp(SERVER, HOST, 3389, 7, TCP_ACK), IN, deadline + 1), DropReason.NO_RULE)  # no flow now
    assert f.counters().flows == 0


def test_flow_moves_to_another_rule_when_its_rule_expires() -> None:
    both = view(
        peer(
            DC,
            outbound=[
                rule("jit", [LOCAL4], [DC4], PROTO_TCP, (3389, 3389), expires_at=T0 + 60),
                rule("all-tcp", [LOCAL4], [DC4], PROTO_TCP),
            ],
            inbound=[],
        )
    )
    f = PacketFilter(both)
    allowed(f.check(tcp(HOST, SERVER, 7, 3389, TCP_SYN), OUT, T0 + 50), Allow.NEW, "jit")
    allowed(f.check(tcp(SERVER, HOST, 3389, 7, TCP_SYN | TCP_ACK), IN, T0 + 61), Allow.ESTABLISHED, "all-tcp")
    assert f.counters().rules["all-tcp"].flows == 0  # the flow moved; it was opened by jit


def test_update_drops_flows_the_new_view_refuses() -> None:
    f = PacketFilter(STANDARD)
    f.check(tcp(HOST, SERVER, 1, 443, TCP_SYN), OUT, T0)
    f.check(udp(HOST, SERVER, 1, 53), OUT, T0)
    without_web = view(peer(DC, outbound=[rule("dns", [LOCAL4], [DC4], PROTO_UDP, (53, 53))], inbound=[]))
    assert f.update(without_web, T0 + 1) == 1
    dropped(f.check(tcp(SERVER, HOST, 443, 1, TCP_SYN | TCP_ACK), IN, T0 + 1), DropReason.NO_RULE)
    allowed(f.check(udp(SERVER, HOST, 53, 1), IN, T0 + 1), Allow.ESTABLISHED, "dns")
    with pytest.raises(InvalidPolicyView):
        f.update(view(peer(DC, outbound=[rule("bad", ["10.0.0.1/8"], [DC4])], inbound=[])), T0 + 2)
    allowed(f.check(udp(SERVER, HOST, 53, 1), IN, T0 + 2), Allow.ESTABLISHED, "dns")  # unchanged


def test_peer_hint_blocks_spoofed_sources_and_foreign_flows() -> None:
    two = view(
        STANDARD.peers[0],
        peer(OTHER, outbound=[], inbound=[rule("from-b", [OTHER4], [LOCAL4], PROTO_TCP, (22, 22))]),
    )
    f = PacketFilter(two)
    assert f.peers == {DC, OTHER}
    # branch-b's tunnel delivers a packet claiming a dc-1 source: refused with the hint.
    dropped(f.check(tcp(SERVER, HOST, 50000, 22, TCP_SYN), IN, T0, peer=OTHER), DropReason.NO_RULE)
    allowed(f.check(tcp(SERVER, HOST, 50000, 22, TCP_SYN), IN, T0, peer=DC), Allow.NEW, "ssh")
    dropped(f.check(tcp(HOST, SERVER, 22, 50000, TCP_SYN | TCP_ACK), OUT, T0, peer=OTHER), DropReason.NO_RULE)
    verdict = f.check(tcp(ip("10.2.0.7"), HOST, 40000, 22, TCP_SYN), IN, T0)
    assert verdict == Verdict(allowed=True, reason=Allow.NEW, rule="from-b", peer=OTHER)


def test_fragments_follow_their_first_fragment() -> None:
    f = PacketFilter(STANDARD)
    whole = push_udp(src=HOST6, dst=SERVER6, src_port=9, dst_port=53, payload=b"x" * 32)
    first = push_ipv6(
        src=HOST6,
        dst=SERVER6,
        next_header=EXT_FRAGMENT,
        payload=push_ipv6_fragment(next_header=PROTO_UDP, ident=42, offset=0, more=True) + whole[:16],
    )
    second = push_ipv6(
        src=HOST6,
        dst=SERVER6,
        next_header=EXT_FRAGMENT,
        payload=push_ipv6_fragment(next_header=PROTO_UDP, ident=42, offset=16, more=False) + whole[16:],
    )
    dropped(f.check(second, OUT, T0), DropReason.FRAGMENT_UNKNOWN)  # no first fragment seen yet
    allowed(f.check(first, OUT, T0), Allow.NEW, "dns")
    allowed(f.check(second, OUT, T0 + 0.1), Allow.FRAGMENT, "dns")
    dropped(f.check(second, OUT, T0 + 31), DropReason.FRAGMENT_UNKNOWN)  # reassembly time is over
    # IPv4: the first fragment of a refused datagram lets nothing through.
    refused = push_udp(src=HOST, dst=SERVER, src_port=9, dst_port=99, payload=b"y" * 32)
    head = push_ipv4(
        src=HOST, dst=SERVER, protocol=PROTO_UDP, payload=refused[:16], ident=5, more_fragments=True
    )
    tail = push_ipv4(
        src=HOST, dst=SERVER, protocol=PROTO_UDP, payload=refused[16:], ident=5, fragment_offset=16
    )
    dropped(f.check(head, OUT, T0), DropReason.NO_RULE)
    dropped(f.check(tail, OUT, T0), DropReason.FRAGMENT_UNKNOWN)


def test_filter_for_one_peer_and_view_bounds() -> None:
    f = PacketFilter(STANDARD.peers[0])
    assert f.peers == {DC}
    allowed(f.check(tcp(HOST, SERVER, 1, 443, TCP_SYN), OUT, T0), Allow.NEW, "web")
    too_many = peer(
        DC, outbound=[rule(f"r{i}", [LOCAL4], [DC4]) for i in range(MAX_RULES_PER_PEER + 1)], inbound=[]
    )
    with pytest.raises(InvalidPolicyView, match="outbound rules"):
        PacketFilter(too_many)
    with pytest.raises(InvalidPolicyView, match="ports"):
        PacketFilter(peer(DC, outbound=[rule("r", [LOCAL4], [DC4], PROTO_TCP, (10, 5))], inbound=[]))
    assert (
        PacketFilter(view()).check(tcp(HOST, SERVER, 1, 443, TCP_SYN), OUT, T0).reason is DropReason.NO_RULE
    )
