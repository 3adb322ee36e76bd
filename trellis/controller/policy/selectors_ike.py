"""IKE traffic selectors for the CHILD SA between two sites.

One CHILD SA carries both directions between two sites. Its TSi and TSr lists admit every
combination of one local and one remote selector (RFC 7296 section 2.9), so narrowing them to
protocols and ports is only exact when that cross product adds nothing to what the rules allow.
We try the narrow form first and check it; otherwise we widen (ports, then protocols) and let
the packet filter do the narrowing. Selectors never admit less than the rules.
Direction cannot be expressed in selectors at all: the filter enforces who opens a flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trellis.controller.policy.model import PORT_MAX, PROTO_ANY, PROTO_TCP, PROTO_UDP, IPNetwork
from trellis.controller.policy.view import FlowRule, TrafficSelector, collapse

# Checking exactness costs local x remote x tuples prefix tests; beyond this, widen without trying.
EXACTNESS_CHECK_BUDGET = 20_000

# Removing redundant selectors compares every pair; beyond this many, keep them all.
PRUNE_LIMIT = 256

_ANY_PORTS = (0, PORT_MAX)


@dataclass(frozen=True, slots=True)
class _Tuple:
    """Traffic allowed between the two sites, ignoring who opens it."""

    local: tuple[IPNetwork, ...]
    remote: tuple[IPNetwork, ...]
    protocol: int
    local_ports: tuple[int, int]
    remote_ports: tuple[int, int]


def traffic_selectors(
    outbound: Sequence[FlowRule], inbound: Sequence[FlowRule]
) -> tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...], bool]:
    """(local selectors, remote selectors, exact) for one site towards one peer."""
    tuples = [_outbound_tuple(rule) for rule in outbound] + [_inbound_tuple(rule) for rule in inbound]
    if not tuples:
        return (), (), True
    local = sorted(
        {TrafficSelector(p, t.protocol, *t.local_ports) for t in tuples for p in t.local},
        key=TrafficSelector.sort_key,
    )
    remote = sorted(
        {TrafficSelector(p, t.protocol, *t.remote_ports) for t in tuples for p in t.remote},
        key=TrafficSelector.sort_key,
    )
    local, remote = _prune(local), _prune(remote)
    if len(local) * len(remote) * len(tuples) <= EXACTNESS_CHECK_BUDGET and _exact(local, remote, tuples):
        return tuple(local), tuple(remote), True
    return _widened(tuples, local=True), _widened(tuples, local=False), False


def mirror(
    selectors: tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...], bool],
) -> tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...], bool]:
    """The same SA seen from the peer: local and remote swap."""
    local, remote, exact = selectors
    return remote, local, exact


def _ports(rule: FlowRule) -> tuple[int, int]:
    if rule.protocol in (PROTO_TCP, PROTO_UDP):
        return (rule.port_start, rule.port_end)
    return _ANY_PORTS


def _outbound_tuple(rule: FlowRule) -> _Tuple:
    return _Tuple(rule.src_prefixes, rule.dst_prefixes, rule.protocol, _ANY_PORTS, _ports(rule))


def _inbound_tuple(rule: FlowRule) -> _Tuple:
    return _Tuple(rule.dst_prefixes, rule.src_prefixes, rule.protocol, _ports(rule), _ANY_PORTS)


def _subsumes(wide: TrafficSelector, narrow: TrafficSelector) -> bool:
    return (
        wide.protocol in (PROTO_ANY, narrow.protocol)
        and wide.port_start <= narrow.port_start
        and narrow.port_end <= wide.port_end
        and wide.prefix.version == narrow.prefix.version
        and narrow.prefix.subnet_of(wide.prefix)  # type: ignore[arg-type]
    )


def _prune(selectors: list[TrafficSelector]) -> list[TrafficSelector]:
    """Drop selectors another one in the list already covers (the SA admits the same packets)."""
    if len(selectors) > PRUNE_LIMIT:
        return selectors
    return [s for s in selectors if not any(o != s and _subsumes(o, s) for o in selectors)]


def _exact(local: list[TrafficSelector], remote: list[TrafficSelector], tuples: list[_Tuple]) -> bool:
    """Is every (local, remote) combination inside one allowed tuple?"""
    for mine in local:
        for theirs in remote:
            if mine.prefix.version != theirs.prefix.version:
                continue  # admits no packet
            if mine.protocol and theirs.protocol and mine.protocol != theirs.protocol:
                continue
            protocol = mine.protocol or theirs.protocol
            if not any(_covers(t, mine, theirs, protocol) for t in tuples):
                return False
    return True


def _covers(t: _Tuple, mine: TrafficSelector, theirs: TrafficSelector, protocol: int) -> bool:
    if t.protocol not in (PROTO_ANY, protocol):
        return False
    if not (t.local_ports[0] <= mine.port_start and mine.port_end <= t.local_ports[1]):
        return False
    if not (t.remote_ports[0] <= theirs.port_start and theirs.port_end <= t.remote_ports[1]):
        return False
    return _inside(mine.prefix, t.local) and _inside(theirs.prefix, t.remote)


def _inside(prefix: IPNetwork, prefixes: tuple[IPNetwork, ...]) -> bool:
    return any(prefix.version == p.version and prefix.subnet_of(p) for p in prefixes)  # type: ignore[arg-type]


def _widened(tuples: list[_Tuple], *, local: bool) -> tuple[TrafficSelector, ...]:
    """Prefixes per protocol with any port; any protocol at all once one tuple allows any."""
    any_protocol = any(t.protocol == PROTO_ANY for t in tuples)
    by_protocol: dict[int, list[IPNetwork]] = {}
    for t in tuples:
        protocol = PROTO_ANY if any_protocol else t.protocol
        by_protocol.setdefault(protocol, []).extend(t.local if local else t.remote)
    return tuple(
        sorted(
            (
                TrafficSelector(p, protocol)
                for protocol, prefixes in by_protocol.items()
                for p in collapse(prefixes)
            ),
            key=TrafficSelector.sort_key,
        )
    )
