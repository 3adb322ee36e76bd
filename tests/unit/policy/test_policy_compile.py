"""Compile output for worked examples, time windows, incremental updates and the proto form."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest

from tests.unit.policy.policy_helpers import MONDAY_9, make_inventory, policy_text, uri
from trellis.controller.policy import (
    FlowRule,
    Inventory,
    PolicyCompiler,
    Site,
    TrafficSelector,
    UnknownSite,
    View,
    compile_all,
    compile_view,
    parse_policy,
)
from trellis.controller.policy.wire import view_to_proto, views_to_proto

net = ipaddress.ip_network
A4, A6 = net("10.1.0.0/24"), net("fd00:1::/64")
B4 = net("10.2.0.0/24")
DC4, DC6 = net("10.10.0.0/16"), net("fd00:10::/48")
VPC6 = net("fd00:20::/48")


def compile_text(rules: str, identity: str, now: dt.datetime = MONDAY_9) -> View:
    return compile_view(parse_policy(policy_text(rules)), make_inventory(), uri(identity), now)


def test_one_way_rule_gives_exact_narrow_selectors() -> None:
    rules = "  - {name: web, from: {role: branch}, to: {role: dc}, ports: tcp/443}\n"
    view = compile_text(rules, "branch-a")
    assert view.identity == uri("branch-a")
    assert view.next_change is None
    (peer,) = view.peers
    assert peer.identity == uri("dc-1")
    assert peer.outbound == (
        FlowRule(
            rule="web",
            src_prefixes=(A4, A6),
            dst_prefixes=(DC4, DC6),
            protocol=6,
            port_start=443,
            port_end=443,
        ),
    )
    assert peer.inbound == ()
    assert peer.local_selectors == (TrafficSelector(A4, 6), TrafficSelector(A6, 6))
    assert peer.remote_selectors == (TrafficSelector(DC4, 6, 443, 443), TrafficSelector(DC6, 6, 443, 443))
    assert peer.selectors_exact
    # The data centre sees both branches; branch-b has no IPv6, so only IPv4 flows.
    dc = compile_text(rules, "dc-1")
    assert [p.identity for p in dc.peers] == [uri("branch-a"), uri("branch-b")]
    dc_a, dc_b = dc.peers
    assert dc_a.inbound == peer.outbound and dc_a.outbound == ()
    assert (dc_a.local_selectors, dc_a.remote_selectors) == (peer.remote_selectors, peer.local_selectors)
    assert dc_b.inbound == (
        FlowRule(
            rule="web", src_prefixes=(B4,), dst_prefixes=(DC4,), protocol=6, port_start=443, port_end=443
        ),
    )
    assert compile_text(rules, "vpc-1").peers == ()  # default deny: no peer at all


def test_both_directions_widen_selectors_and_keep_filter_rules_exact() -> None:
    rules = (
        "  - {name: web, from: branch-a, to: dc-1, ports: tcp/443}\n"
        "  - {name: ssh, from: dc-1, to: branch-a, ports: tcp/22}\n"
    )
    (peer,) = compile_text(rules, "branch-a").peers
    assert not peer.selectors_exact
    # Any TCP port either way at the IKE level; the filter narrows to what the rules say.
    assert peer.local_selectors == (TrafficSelector(A4, 6), TrafficSelector(A6, 6))
    assert peer.remote_selectors == (TrafficSelector(DC4, 6), TrafficSelector(DC6, 6))
    assert [(r.rule, r.port_start) for r in peer.outbound] == [("web", 443)]
    assert [(r.rule, r.port_start) for r in peer.inbound] == [("ssh", 22)]


def test_any_protocol_and_mixed_protocols() -> None:
    (peer,) = compile_text("  - {from: branch-b, to: dc-1}\n", "branch-b").peers
    assert peer.outbound == (FlowRule(rule="rule-1", src_prefixes=(B4,), dst_prefixes=(DC4,), protocol=0),)
    assert peer.local_selectors == (TrafficSelector(B4),) and peer.remote_selectors == (TrafficSelector(DC4),)
    assert peer.selectors_exact
    # One-way TCP and UDP ports to the same place: still exact (each remote selector is one rule).
    (peer,) = compile_text("  - {from: branch-b, to: dc-1, ports: [tcp/443, udp/53]}\n", "branch-b").peers
    assert peer.selectors_exact
    assert peer.remote_selectors == (TrafficSelector(DC4, 6, 443, 443), TrafficSelector(DC4, 17, 53, 53))
    # Any protocol one way already covers a port the other way (selectors carry no direction).
    rules = "  - {from: branch-b, to: dc-1}\n  - {from: dc-1, to: branch-b, ports: udp/161}\n"
    (peer,) = compile_text(rules, "branch-b").peers
    assert peer.selectors_exact
    assert peer.local_selectors == (TrafficSelector(B4),) and peer.remote_selectors == (TrafficSelector(DC4),)
    # Narrow ports one way and any protocol to a part of the site the other way: not exact.
    rules = (
        "  - {from: branch-b, to: dc-1, ports: udp/53}\n"
        "  - {from: dc-1, to: branch-b, to_prefixes: [10.2.0.128/25]}\n"
    )
    (peer,) = compile_text(rules, "branch-b").peers
    assert not peer.selectors_exact
    assert peer.local_selectors == (TrafficSelector(B4),) and peer.remote_selectors == (TrafficSelector(DC4),)


def test_icmp_splits_by_family_and_families_must_meet() -> None:
    rules = '  - {name: ping, from: "*", to: vpc-1, ports: icmp}\n'
    (peer,) = compile_text(rules, "branch-a").peers  # only branch-a and dc-1 have IPv6
    assert peer.outbound == (FlowRule(rule="ping", src_prefixes=(A6,), dst_prefixes=(VPC6,), protocol=58),)
    assert compile_text(rules, "branch-b").peers == ()  # IPv4-only cannot reach an IPv6-only site
    vpc = compile_text(rules, "vpc-1")
    assert [p.identity for p in vpc.peers] == [uri("branch-a"), uri("dc-1")]


def test_to_prefixes_narrow_within_destination_subnets() -> None:
    rules = (
        "  - name: db\n    from: branch-a\n    to: dc-1\n    ports: tcp/5432\n"
        "    to_prefixes: [10.10.5.0/24, 10.0.0.0/8, 192.0.2.0/24]\n"
    )
    (peer,) = compile_text(rules, "branch-a").peers
    # 10.10.5.0/24 is inside DC4; 10.0.0.0/8 contains DC4 (so all of DC4); 192.0.2.0/24 is elsewhere.
    assert peer.outbound[0].dst_prefixes == (DC4,)
    assert peer.outbound[0].src_prefixes == (A4,)  # no IPv6 destination left, so no IPv6 source
    rules = "  - {from: branch-a, to: dc-1, to_prefixes: [10.10.4.0/24, 10.10.5.0/24]}\n"
    (peer,) = compile_text(rules, "branch-a").peers
    assert peer.outbound[0].dst_prefixes == (net("10.10.4.0/23"),)
    assert (
        compile_text("  - {from: branch-a, to: dc-1, to_prefixes: [192.0.2.0/24]}\n", "branch-a").peers == ()
    )


def test_a_site_is_never_its_own_peer() -> None:
    view = compile_text('  - {from: "*", to: "*", ports: icmp}\n', "dc-1")
    assert uri("dc-1") not in [p.identity for p in view.peers]
    assert len(view.peers) == 3


def test_rules_keep_policy_order_in_views() -> None:
    rules = (
        "  - {name: z-last, from: branch-b, to: dc-1, ports: tcp/1}\n"
        "  - {name: a-first, from: branch-b, to: dc-1, ports: tcp/2}\n"
    )
    (peer,) = compile_text(rules, "branch-b").peers
    assert [r.rule for r in peer.outbound] == ["z-last", "a-first"]


def test_unknown_site_is_a_callers_error() -> None:
    with pytest.raises(UnknownSite, match="nowhere"):
        compile_text("  - {from: a, to: b}\n", "nowhere")


# --- time -----------------------------------------------------------------------------------------

WINDOWED = (
    "  - {name: web, from: branch-a, to: dc-1, ports: tcp/443}\n"
    "  - name: office-ssh\n    from: dc-1\n    to: branch-a\n    ports: tcp/22\n"
    "    schedule: mon-fri 08:00-18:00\n"
    "  - name: jit\n    from: branch-b\n    to: dc-1\n    ports: tcp/3389\n"
    "    not_before: 2025-06-02T10:00:00Z\n    not_after: 2025-06-02T12:00:00Z\n"
)


def test_windows_open_and_close_with_next_change() -> None:
    policy = parse_policy(policy_text(WINDOWED))
    inventory = make_inventory()
    at_9 = compile_view(policy, inventory, uri("branch-a"), MONDAY_9)
    (peer,) = at_9.peers
    assert [r.rule for r in peer.inbound] == ["office-ssh"]
    assert peer.inbound[0].expires_at == MONDAY_9.replace(hour=18)  # the filter ends it on its own
    assert peer.outbound[0].expires_at is None
    assert at_9.next_change == MONDAY_9.replace(hour=18)
    at_18 = compile_view(policy, inventory, uri("branch-a"), MONDAY_9.replace(hour=18))
    assert at_18.peers[0].inbound == ()
    assert at_18.next_change == MONDAY_9.replace(day=3, hour=8)
    # Just-in-time access for branch-b: not yet, then open, then gone by itself.
    b_9 = compile_view(policy, inventory, uri("branch-b"), MONDAY_9)
    assert b_9.peers == () and b_9.next_change == MONDAY_9.replace(hour=10)
    b_10 = compile_view(policy, inventory, uri("branch-b"), MONDAY_9.replace(hour=10))
    assert [r.rule for r in b_10.peers[0].outbound] == ["jit"]
    assert b_10.peers[0].outbound[0].expires_at == b_10.next_change == MONDAY_9.replace(hour=12)
    b_12 = compile_view(policy, inventory, uri("branch-b"), MONDAY_9.replace(hour=12))
    assert b_12.peers == () and b_12.next_change is None
    # The data centre's next change is the earliest of all rules concerning it.
    assert compile_view(policy, inventory, uri("dc-1"), MONDAY_9).next_change == MONDAY_9.replace(hour=10)


def test_compiler_advance_follows_the_clock() -> None:
    policy = parse_policy(policy_text(WINDOWED))
    inventory = make_inventory()
    compiler = PolicyCompiler(policy, inventory, MONDAY_9)
    assert compiler.next_change() == MONDAY_9.replace(hour=10)
    assert compiler.advance(MONDAY_9.replace(minute=30)) == frozenset()  # nothing due yet
    changed = compiler.advance(MONDAY_9.replace(hour=10))
    assert changed == {uri("branch-b"), uri("dc-1")}
    for when in (10, 12, 18, 23):
        now = MONDAY_9.replace(hour=when)
        compiler.advance(now)
        assert compiler.views() == compile_all(policy, inventory, now)
    # Going back in time recomputes everything.
    compiler.advance(MONDAY_9)
    assert compiler.views() == compile_all(policy, inventory, MONDAY_9)


# --- incremental ----------------------------------------------------------------------------------


def test_update_policy_touches_only_what_changed() -> None:
    inventory = make_inventory()
    first = parse_policy(policy_text(WINDOWED))
    compiler = PolicyCompiler(first, inventory, MONDAY_9)
    before = compiler.views()
    second = parse_policy(policy_text(WINDOWED.replace("ports: tcp/3389", "ports: tcp/3390")))
    changed = compiler.update_policy(second)
    assert changed == set()  # jit is not active at 09:00: nothing visible changes
    second_at_10 = PolicyCompiler(second, inventory, MONDAY_9.replace(hour=10))
    assert compiler.views() == before
    third = parse_policy(policy_text(WINDOWED + "  - {name: ping, from: vpc-1, to: branch-a, ports: icmp}\n"))
    assert compiler.update_policy(third) == {uri("vpc-1"), uri("branch-a")}
    assert compiler.views() == compile_all(third, inventory, MONDAY_9)
    assert compiler.update_policy(first) == {uri("vpc-1"), uri("branch-a")}
    assert compiler.views() == before
    compiler.update_policy(second)
    compiler.advance(MONDAY_9.replace(hour=10))
    assert compiler.views() == second_at_10.views()


def test_update_policy_with_reordered_rules_recompiles() -> None:
    inventory = make_inventory()
    rules = [
        "  - {name: one, from: branch-b, to: dc-1, ports: tcp/1}\n",
        "  - {name: two, from: branch-b, to: dc-1, ports: tcp/2}\n",
    ]
    compiler = PolicyCompiler(parse_policy(policy_text("".join(rules))), inventory, MONDAY_9)
    swapped = parse_policy(policy_text("".join(reversed(rules))))
    assert compiler.update_policy(swapped) == {uri("branch-b"), uri("dc-1")}
    assert compiler.views() == compile_all(swapped, inventory, MONDAY_9)


def test_update_inventory() -> None:
    policy = parse_policy(policy_text('  - {from: {role: branch}, to: "*", ports: icmp}\n'))
    inventory = make_inventory()
    compiler = PolicyCompiler(policy, inventory, MONDAY_9)
    grown = Inventory(
        [
            *inventory.sites,
            Site.build(
                name="branch-c", identity=uri("branch-c"), labels={"role": "branch"}, subnets=["10.3.0.0/24"]
            ),
        ]
    )
    changed = compiler.update_inventory(grown)
    assert changed == {uri("branch-c"), uri("branch-a"), uri("branch-b"), uri("dc-1")}  # vpc-1: no IPv4
    assert compiler.views() == compile_all(policy, grown, MONDAY_9)
    assert compiler.view("branch-c").identity == uri("branch-c")  # by name too


# --- proto ----------------------------------------------------------------------------------------


def test_view_to_proto() -> None:
    view = compile_text(WINDOWED, "branch-a")
    message = view_to_proto(view, policy_version=7)
    assert message.policy_version == 7
    assert message.next_change.ToDatetime(tzinfo=dt.UTC) == MONDAY_9.replace(hour=18)
    (peer,) = message.peers
    assert peer.identity == uri("dc-1")
    assert not peer.selectors_exact
    assert [(s.prefix, s.protocol, s.port_start, s.port_end) for s in peer.local_selectors] == [
        ("10.1.0.0/24", 6, 0, 65535),
        ("fd00:1::/64", 6, 0, 65535),
    ]
    (out,) = peer.outbound
    assert (
        out.rule,
        list(out.src_prefixes),
        list(out.dst_prefixes),
        out.protocol,
        out.port_start,
        out.port_end,
    ) == (
        "web",
        ["10.1.0.0/24", "fd00:1::/64"],
        ["10.10.0.0/16", "fd00:10::/48"],
        6,
        443,
        443,
    )
    assert not out.HasField("expires_at")
    (inbound,) = peer.inbound
    assert inbound.expires_at.ToDatetime(tzinfo=dt.UTC) == MONDAY_9.replace(hour=18)
    quiet = view_to_proto(compile_text("  - {from: branch-a, to: dc-1}\n", "vpc-1"), policy_version=1)
    assert not quiet.HasField("next_change") and not quiet.peers


def test_views_to_proto_in_a_batch_equals_one_by_one() -> None:
    views = compile_all(
        parse_policy(policy_text(WINDOWED + '  - {from: "*", to: "*", ports: icmp}\n')),
        make_inventory(),
        MONDAY_9,
    )
    batch = views_to_proto(views, policy_version=3)
    assert batch.keys() == views.keys()
    for identity, view in views.items():
        assert batch[identity] == view_to_proto(view, policy_version=3)
    # Messages in the batch are independent copies: changing one leaves the others alone.
    first, second = batch[uri("branch-a")], batch[uri("dc-1")]
    first.peers[0].outbound[0].rule = "changed"
    assert all(r.rule != "changed" for p in second.peers for r in (*p.outbound, *p.inbound))
