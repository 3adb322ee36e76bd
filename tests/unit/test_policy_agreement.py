"""The agent's packet filter and the controller's check() give the same answer.

Hypothesis generates inventories, policy documents (as YAML text), flows and instants. For each
flow, the first packet is synthesized and judged by the filters of both ends (built from the
compiled views, through the protobuf contract) and compared with check(), in both directions,
at the compile time and later within the same time window. After the window (next_change) the
filter may lag behind (it waits for a push) but must never allow more than check().
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from trellis.agent.filter import Allow, Direction, PacketFilter
from trellis.agent.filter.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_SYN,
    push_icmp,
    push_ipv4,
    push_ipv6,
    push_tcp,
    push_udp,
)
from trellis.controller.policy import (
    FlowRule,
    Inventory,
    Policy,
    PolicyCompiler,
    Site,
    View,
    check,
    compile_all,
    compile_view,
    parse_policy,
)
from trellis.controller.policy.selectors_ike import Reach, SelectorPlanner
from trellis.controller.policy.wire import view_to_proto

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
BASE = dt.datetime(2025, 6, 2, tzinfo=dt.UTC)  # a Monday
SITES = 5
PORTS = (22, 23, 53, 443, 444, 5000, 5005, 5011, 8080)
CLIENT_PORT = 40000
ECHO_ID = 7

# --- generated inventories and policies -----------------------------------------------------------


@st.composite
def inventories(draw: st.DrawFn) -> Inventory:
    count = draw(st.integers(min_value=2, max_value=SITES))
    sites = []
    for i in range(count):
        families = draw(st.sampled_from(["4", "6", "46", "46"]))
        subnets = ([f"10.{i}.0.0/24"] if "4" in families else []) + (
            [f"fd00:{i}::/64"] if "6" in families else []
        )
        sites.append(
            Site.build(
                name=f"s{i}",
                identity=f"spiffe://test.example/site/s{i}",
                labels={"role": draw(st.sampled_from("abc")), "region": draw(st.sampled_from("xy"))},
                subnets=subnets,
            )
        )
    return Inventory(sites)


def selectors(count: int) -> st.SearchStrategy[str]:
    names = [f"s{i}" for i in range(count)]
    return st.one_of(
        st.just('"*"'),
        st.just('"*"'),  # twice: a fair share of generated flows should be allowed
        st.sampled_from(names),
        st.sampled_from(["{role: a}", "{role: b}", "{region: x, role: c}", "{role: [a, c]}"]),
        st.sampled_from(['"role in [a, b]"', '"region in [y]"']),
        st.lists(st.sampled_from([*names, "{region: x}"]), min_size=1, max_size=3).map(
            lambda parts: "[" + ", ".join(parts) + "]"
        ),
    )


SERVICES = ["any", "icmp", "tcp", "udp", "tcp/22", "tcp/443", "udp/53", "udp/5000-5010", "tcp/20-25"]
SCHEDULES = ["mon-fri 08:00-18:00", "sat-sun 00:00-24:00", "daily 22:00-02:00", "wed 12:00-13:00"]


def stamp(at: dt.datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@st.composite
def rule_texts(draw: st.DrawFn, count: int) -> str:
    lines = [f"  - from: {draw(selectors(count))}", f"    to: {draw(selectors(count))}"]
    if draw(st.booleans()):
        services = draw(st.lists(st.sampled_from(SERVICES), min_size=1, max_size=3))
        lines.append(f"    ports: [{', '.join(services)}]")
    if draw(st.integers(0, 3)) == 0:
        site = draw(st.integers(0, count - 1))
        prefixes = draw(
            st.lists(
                st.sampled_from(
                    [f"10.{site}.0.0/25", f"10.{site}.0.128/25", f"fd00:{site}::/65", "10.0.0.0/8"]
                ),
                min_size=1,
                max_size=2,
            )
        )
        lines.append(f"    to_prefixes: [{', '.join(repr(p) for p in prefixes)}]")
    if draw(st.integers(0, 2)) == 0:
        start = BASE + dt.timedelta(hours=draw(st.integers(-48, 120)))
        lines.append(f"    not_before: {stamp(start)}")
        if draw(st.booleans()):
            lines.append(f"    not_after: {stamp(start + dt.timedelta(hours=draw(st.integers(1, 72))))}")
    elif draw(st.integers(0, 2)) == 0:
        lines.append(f"    not_after: {stamp(BASE + dt.timedelta(hours=draw(st.integers(1, 150))))}")
    if draw(st.integers(0, 2)) == 0:
        lines.append(f"    schedule: {draw(st.sampled_from(SCHEDULES))}")
    return "\n".join(lines) + "\n"


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Inventory, Policy]:
    inventory = draw(inventories())
    rules = draw(st.lists(rule_texts(len(inventory)), max_size=5))
    text = "apiVersion: trellis/v1\nkind: Policy\nrules:" + ("\n" + "".join(rules) if rules else " []\n")
    return inventory, parse_policy(text)


# --- flows and packets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    source: Site
    destination: Site
    protocol: str  # tcp, udp, icmp, gre
    port: int
    src: Address
    dst: Address

    @property
    def number(self) -> int:
        if self.protocol == "icmp":
            return PROTO_ICMP if self.src.version == 4 else PROTO_ICMPV6
        return {"tcp": PROTO_TCP, "udp": PROTO_UDP, "gre": 47}[self.protocol]


def host(site: Site, version: int, offset: int) -> Address | None:
    for subnet in site.subnets:
        if subnet.version == version:
            return subnet.network_address + offset
    return None


@st.composite
def flows(draw: st.DrawFn, inventory: Inventory) -> Flow | None:
    source, destination = draw(st.permutations(inventory.sites))[:2]
    versions = sorted({p.version for p in source.subnets} & {p.version for p in destination.subnets})
    if not versions:
        return None  # no packet can go between an IPv4-only and an IPv6-only site
    version = draw(st.sampled_from(versions))
    src = host(source, version, draw(st.integers(1, 250)))
    dst = host(destination, version, draw(st.integers(1, 250)))
    if src is None or dst is None:
        return None
    return Flow(
        source=source,
        destination=destination,
        protocol=draw(st.sampled_from(["tcp", "udp", "icmp", "gre"])),
        port=draw(st.sampled_from(PORTS)),
        src=src,
        dst=dst,
    )


def ip_packet(src: Address, dst: Address, protocol: int, payload: bytes) -> bytes:
    if isinstance(src, ipaddress.IPv4Address) and isinstance(dst, ipaddress.IPv4Address):
        return push_ipv4(src=src, dst=dst, protocol=protocol, payload=payload)
    assert isinstance(src, ipaddress.IPv6Address) and isinstance(dst, ipaddress.IPv6Address)
    return push_ipv6(src=src, dst=dst, next_header=protocol, payload=payload)


def first_packet(flow: Flow) -> bytes:
    src, dst = flow.src, flow.dst
    if flow.protocol == "tcp":
        payload = push_tcp(src=src, dst=dst, src_port=CLIENT_PORT, dst_port=flow.port, flags=TCP_SYN)
    elif flow.protocol == "udp":
        payload = push_udp(src=src, dst=dst, src_port=CLIENT_PORT, dst_port=flow.port)
    elif flow.protocol == "icmp":
        payload = push_icmp(src=src, dst=dst, icmp_type=8 if src.version == 4 else 128, ident=ECHO_ID)
    else:
        payload = b"\x00" * 8
    return ip_packet(src, dst, flow.number, payload)


def reply_packet(flow: Flow) -> bytes:
    src, dst = flow.dst, flow.src
    if flow.protocol == "tcp":
        flags = TCP_SYN | TCP_ACK
        payload = push_tcp(src=src, dst=dst, src_port=flow.port, dst_port=CLIENT_PORT, flags=flags)
    elif flow.protocol == "udp":
        payload = push_udp(src=src, dst=dst, src_port=flow.port, dst_port=CLIENT_PORT)
    elif flow.protocol == "icmp":
        payload = push_icmp(src=src, dst=dst, icmp_type=0 if src.version == 4 else 129, ident=ECHO_ID)
    else:
        payload = b"\x00" * 8
    return ip_packet(src, dst, flow.number, payload)


def decide(
    policy: Policy, inventory: Inventory, flow: Flow, at: dt.datetime, *, reverse: bool = False
) -> bool:
    """check() for the flow (or, reversed, for its reply seen as a new flow)."""
    source, destination = (flow.destination, flow.source) if reverse else (flow.source, flow.destination)
    src, dst = (flow.dst, flow.src) if reverse else (flow.src, flow.dst)
    protocol: str | int = 47 if flow.protocol == "gre" else flow.protocol
    port = (CLIENT_PORT if reverse else flow.port) if flow.protocol in ("tcp", "udp") else None
    return check(
        policy,
        inventory,
        source=source.name,
        destination=destination.name,
        protocol=protocol,
        port=port,
        at=at,
        src_address=src,
        dst_address=dst,
    ).allowed


def filter_of(view: View) -> PacketFilter:
    return PacketFilter(view_to_proto(view, policy_version=1))


def selectors_admit(view: View, flow: Flow) -> bool:
    """Would the CHILD SA to the peer carry this flow's first packet?"""
    peer = view.peer(flow.destination.identity)
    if peer is None:
        return False
    ports = flow.protocol in ("tcp", "udp")

    def admits(prefix_ok: bool, protocol: int, start: int, end: int, port: int) -> bool:
        return prefix_ok and protocol in (0, flow.number) and (not ports or start <= port <= end)

    local = any(
        admits(flow.src in s.prefix, s.protocol, s.port_start, s.port_end, CLIENT_PORT)
        for s in peer.local_selectors
    )
    remote = any(
        admits(flow.dst in s.prefix, s.protocol, s.port_start, s.port_end, flow.port)
        for s in peer.remote_selectors
    )
    return local and remote


# --- the properties -------------------------------------------------------------------------------

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
instants = st.integers(min_value=0, max_value=7 * 24 * 60).map(lambda m: BASE + dt.timedelta(minutes=m))


@SETTINGS
@given(st.data(), worlds(), instants)
def test_filter_agrees_with_check_in_both_directions(
    data: st.DataObject, world: tuple[Inventory, Policy], t0: dt.datetime
) -> None:
    inventory, policy = world
    flow = data.draw(flows(inventory))
    if flow is None:
        return
    sender_view = compile_view(policy, inventory, flow.source.identity, t0)
    receiver_view = compile_view(policy, inventory, flow.destination.identity, t0)
    sender, receiver = filter_of(sender_view), filter_of(receiver_view)
    now = t0.timestamp()
    expected = decide(policy, inventory, flow, t0)
    out = sender.check(first_packet(flow), Direction.OUTBOUND, now, peer=flow.destination.identity)
    into = receiver.check(first_packet(flow), Direction.INBOUND, now, peer=flow.source.identity)
    event(f"first packet {'allowed' if expected else 'denied'} ({flow.protocol})")
    assert out.allowed == expected, (out, flow)
    assert into.allowed == expected, (into, flow)
    if expected:
        assert out.reason is Allow.NEW and into.reason is Allow.NEW
        assert selectors_admit(sender_view, flow), "the SA would not carry an allowed flow"
    # The reply: allowed as part of the flow, or else only if the other side may open it itself.
    reply_expected = expected or decide(policy, inventory, flow, t0, reverse=True)
    back_out = receiver.check(reply_packet(flow), Direction.OUTBOUND, now, peer=flow.source.identity)
    back_in = sender.check(reply_packet(flow), Direction.INBOUND, now, peer=flow.destination.identity)
    assert back_out.allowed == reply_expected, (back_out, flow)
    assert back_in.allowed == reply_expected, (back_in, flow)
    if expected:
        assert back_out.reason is Allow.ESTABLISHED and back_in.reason is Allow.ESTABLISHED


@SETTINGS
@given(st.data(), worlds(), instants, st.integers(min_value=0, max_value=3 * 24 * 60))
def test_time_windows_agree_until_next_change(
    data: st.DataObject, world: tuple[Inventory, Policy], t0: dt.datetime, later: int
) -> None:
    inventory, policy = world
    flow = data.draw(flows(inventory))
    if flow is None:
        return
    view = compile_view(policy, inventory, flow.source.identity, t0)
    sender = filter_of(view)
    t = t0 + dt.timedelta(minutes=later)
    allowed = sender.check(first_packet(flow), Direction.OUTBOUND, t.timestamp()).allowed
    truth = decide(policy, inventory, flow, t)
    event("within the window" if view.next_change is None or t < view.next_change else "after next_change")
    event(f"at t: {'allowed' if truth else 'denied'}")
    if view.next_change is None or t < view.next_change:
        assert allowed == truth, (t, view.next_change, flow)
    else:
        assert truth or not allowed, "after next_change the filter allowed what policy denies"
        fresh = filter_of(compile_view(policy, inventory, flow.source.identity, t))
        assert fresh.check(first_packet(flow), Direction.OUTBOUND, t.timestamp()).allowed == truth
    if view.next_change is not None:
        # At the change itself a closing window must already be closed on the agent, unpushed.
        edge = view.next_change
        at_edge = filter_of(view).check(first_packet(flow), Direction.OUTBOUND, edge.timestamp()).allowed
        event(f"at next_change: filter {'allowed' if at_edge else 'denied'}")
        assert decide(policy, inventory, flow, edge) or not at_edge, "expired rule still applied"


@settings(max_examples=60, deadline=None)
@given(worlds(), instants, st.integers(min_value=1, max_value=4 * 24 * 60))
def test_incremental_compiler_matches_full_compile(
    world: tuple[Inventory, Policy], t0: dt.datetime, later: int
) -> None:
    inventory, policy = world
    compiler = PolicyCompiler(policy, inventory, t0)
    full = compile_all(policy, inventory, t0)
    assert compiler.views() == full
    assert full == {s.identity: compile_view(policy, inventory, s.identity, t0) for s in inventory.sites}
    t = t0 + dt.timedelta(minutes=later)
    changed = compiler.advance(t)
    after = compile_all(policy, inventory, t)
    assert compiler.views() == after
    assert changed == {i for i in after if after[i] != full[i]}
    dropped = Policy(name=policy.name, rules=policy.rules[1:], tests=())
    compiler.update_policy(dropped)
    assert compiler.views() == compile_all(dropped, inventory, t)
    # Selectors planned once per rule shape equal those computed for the pair alone.
    for identity, view in after.items():
        site = inventory.by_identity(identity)
        for peer in view.peers:
            alone = SelectorPlanner().selectors(
                [_unshared(r) for r in peer.outbound],
                [_unshared(r) for r in peer.inbound],
                Reach.of(site.subnets),
                Reach.of(inventory.by_identity(peer.identity).subnets),
            )
            assert alone == (peer.local_selectors, peer.remote_selectors, peer.selectors_exact)


def _unshared(rule: FlowRule) -> FlowRule:
    """The same rule with prefix tuples of its own, so no plan can recognise them as a whole site."""
    return dataclasses.replace(
        rule, src_prefixes=tuple(list(rule.src_prefixes)), dst_prefixes=tuple(list(rule.dst_prefixes))
    )
