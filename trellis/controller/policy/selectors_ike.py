"""IKE traffic selectors for the CHILD SA between two sites.

One CHILD SA carries both directions between two sites. Its TSi and TSr lists admit every
combination of one local and one remote selector (RFC 7296 section 2.9), so narrowing them to
protocols and ports is only exact when that cross product adds nothing to what the rules allow.
We try the narrow form first and check it; otherwise we widen (ports, then protocols) and let
the packet filter do the narrowing. Selectors never admit less than the rules.
Direction cannot be expressed in selectors at all: the filter enforces who opens a flow.

Most site pairs are alike: their rules reach all of each site's subnets of some IP versions. For
those, the plan is computed once on symbols ("all of this side's IPv4 subnets") and reused for
every pair whose rules have the same shape; only pairs with narrowed prefixes are planned alone.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from trellis.controller.policy.model import PORT_MAX, PROTO_ANY, PROTO_TCP, PROTO_UDP, IPNetwork
from trellis.controller.policy.view import FlowRule, TrafficSelector, collapse

# Checking exactness costs local x remote x tuples prefix tests; beyond this, widen without trying.
EXACTNESS_CHECK_BUDGET = 20_000
# Removing redundant selectors compares every pair; beyond this many, keep them all.
PRUNE_LIMIT = 256
# Plans kept for reuse; the cache is cleared when it grows past this.
MAX_CACHED_PLANS = 100_000

_ANY_PORTS = (0, PORT_MAX)

Selectors = tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...], bool]


@dataclass(frozen=True, slots=True)
class _Symbol:
    """All of one side's subnets of one IP version."""

    version: int


_Atom = IPNetwork | _Symbol


@dataclass(frozen=True, slots=True)
class Reach:
    """A site's prefixes, split by IP version once: flow rules share these very tuples, so the
    planner recognises "all of the site's IPv4 subnets" by identity, without hashing networks."""

    prefixes: tuple[IPNetwork, ...]
    versions: frozenset[int]
    by_version: dict[int, tuple[IPNetwork, ...]]
    by_versions: dict[frozenset[int], tuple[IPNetwork, ...]]
    symbols: dict[int, tuple[_Symbol, ...]]  # id() of a by_versions tuple -> its symbols

    @classmethod
    def of(cls, prefixes: tuple[IPNetwork, ...]) -> Reach:
        versions = frozenset(p.version for p in prefixes)
        by_versions: dict[frozenset[int], tuple[IPNetwork, ...]] = {}
        symbols: dict[int, tuple[_Symbol, ...]] = {}
        for chosen in ((4,), (6,), (4, 6)):
            if versions.issuperset(chosen):
                subset = tuple(p for p in prefixes if p.version in chosen)
                by_versions[frozenset(chosen)] = subset
                symbols[id(subset)] = tuple(_Symbol(v) for v in chosen)
        return cls(
            prefixes=prefixes,
            versions=versions,
            by_version={v: by_versions[frozenset((v,))] for v in versions},
            by_versions=by_versions,
            symbols=symbols,
        )


@dataclass(frozen=True, slots=True)
class _Tuple:
    """Traffic allowed between the two sites, ignoring who opens it."""

    local: tuple[_Atom, ...]
    remote: tuple[_Atom, ...]
    protocol: int
    local_ports: tuple[int, int]
    remote_ports: tuple[int, int]


# _Tuple's fields for a symbolic tuple, as a plain tuple.
_SymbolicTuple = tuple[tuple[_Symbol, ...], tuple[_Symbol, ...], int, tuple[int, int], tuple[int, int]]


@dataclass(frozen=True, slots=True)
class _Candidate:
    atom: _Atom
    protocol: int
    port_start: int
    port_end: int


@dataclass(frozen=True, slots=True)
class _Plan:
    exact: bool
    local: tuple[_Candidate, ...]  # exact: the selectors; widened: one per (protocol, atom)
    remote: tuple[_Candidate, ...]


def _version(atom: _Atom) -> int:
    return atom.version


def _inside(atom: _Atom, other: _Atom) -> bool:
    if isinstance(atom, _Symbol) or isinstance(other, _Symbol):
        return atom == other
    return atom.version == other.version and atom.subnet_of(other)  # type: ignore[arg-type]


def _key(candidate: _Candidate) -> tuple[int, int, int, int, int, int]:
    atom = candidate.atom
    address, length = (0, 0) if isinstance(atom, _Symbol) else (int(atom.network_address), atom.prefixlen)
    return (atom.version, address, length, candidate.protocol, candidate.port_start, candidate.port_end)


def _ports(rule: FlowRule) -> tuple[int, int]:
    if rule.protocol in (PROTO_TCP, PROTO_UDP):
        return (rule.port_start, rule.port_end)
    return _ANY_PORTS


class SelectorPlanner:
    """Traffic selectors for site pairs, reusing plans across pairs whose rules look alike."""

    def __init__(self) -> None:
        self._plans: dict[Hashable, _Plan] = {}
        # (candidates, reach) -> selectors: a site's side is the same towards its similar peers.
        self._sides: dict[
            tuple[int, int], tuple[tuple[_Candidate, ...], Reach, tuple[TrafficSelector, ...]]
        ] = {}

    def selectors(
        self,
        outbound: Sequence[FlowRule],
        inbound: Sequence[FlowRule],
        local: Reach,
        remote: Reach,
        *,
        shape: Hashable | None = None,
    ) -> Selectors:
        """(local selectors, remote selectors, exact) for a site reaching ``local`` towards a peer
        reaching ``remote``, given the flows each side may open.

        ``shape``: a key that determines the pair's symbolic tuples, when the caller knows every
        rule reaches whole sites (it saves deriving them from the flow rules).
        """
        if not outbound and not inbound:
            return (), (), True
        plan = self._plans.get(shape) if shape is not None else None
        if plan is None:
            symbolic = self._symbolic(outbound, inbound, local, remote)
            if symbolic is None:
                tuples = [
                    _Tuple(r.src_prefixes, r.dst_prefixes, r.protocol, _ANY_PORTS, _ports(r))
                    for r in outbound
                ]
                tuples += [
                    _Tuple(r.dst_prefixes, r.src_prefixes, r.protocol, _ports(r), _ANY_PORTS) for r in inbound
                ]
                plan = _plan(tuples)
                return (
                    _side(plan.local, local, plan.exact),
                    _side(plan.remote, remote, plan.exact),
                    plan.exact,
                )
            signature = frozenset(symbolic)
            plan = self._plans.get(signature)
            if plan is None:
                if len(self._plans) >= MAX_CACHED_PLANS:
                    self._plans.clear()
                    self._sides.clear()
                plan = self._plans[signature] = _plan([_Tuple(*t) for t in signature])
            if shape is not None:
                self._plans[shape] = plan
        return (
            self._side(plan.local, local, plan.exact),
            self._side(plan.remote, remote, plan.exact),
            plan.exact,
        )

    def _side(
        self, candidates: tuple[_Candidate, ...], reach: Reach, exact: bool
    ) -> tuple[TrafficSelector, ...]:
        key = (id(candidates), id(reach))
        cached = self._sides.get(key)
        # The entry holds both objects, so their ids cannot be reused while it exists.
        if cached is not None and cached[0] is candidates and cached[1] is reach:
            return cached[2]
        if len(self._sides) >= MAX_CACHED_PLANS:
            self._sides.clear()
        result = _side(candidates, reach, exact)
        self._sides[key] = (candidates, reach, result)
        return result

    @staticmethod
    def _symbolic(
        outbound: Sequence[FlowRule], inbound: Sequence[FlowRule], local: Reach, remote: Reach
    ) -> list[_SymbolicTuple] | None:
        """The pair's tuples on symbols (plain tuples: cheap to hash), or None when some rule
        reaches only part of a side."""
        tuples: list[_SymbolicTuple] = []
        for rules, outgoing in ((outbound, True), (inbound, False)):
            for rule in rules:
                mine, theirs = (
                    (rule.src_prefixes, rule.dst_prefixes)
                    if outgoing
                    else (rule.dst_prefixes, rule.src_prefixes)
                )
                mine_symbols = local.symbols.get(id(mine))
                theirs_symbols = remote.symbols.get(id(theirs))
                if mine_symbols is None or theirs_symbols is None:
                    return None
                ports = _ports(rule)
                tuples.append(
                    (
                        mine_symbols,
                        theirs_symbols,
                        rule.protocol,
                        _ANY_PORTS if outgoing else ports,
                        ports if outgoing else _ANY_PORTS,
                    )
                )
        return tuples


def _plan(tuples: list[_Tuple]) -> _Plan:
    local = sorted({_Candidate(a, t.protocol, *t.local_ports) for t in tuples for a in t.local}, key=_key)
    remote = sorted({_Candidate(a, t.protocol, *t.remote_ports) for t in tuples for a in t.remote}, key=_key)
    local, remote = _prune(local), _prune(remote)
    if len(local) * len(remote) * len(tuples) <= EXACTNESS_CHECK_BUDGET and _exact(local, remote, tuples):
        return _Plan(exact=True, local=tuple(local), remote=tuple(remote))
    return _Plan(exact=False, local=_widened(tuples, local=True), remote=_widened(tuples, local=False))


def _subsumes(wide: _Candidate, narrow: _Candidate) -> bool:
    return (
        wide.protocol in (PROTO_ANY, narrow.protocol)
        and wide.port_start <= narrow.port_start
        and narrow.port_end <= wide.port_end
        and _inside(narrow.atom, wide.atom)
    )


def _prune(candidates: list[_Candidate]) -> list[_Candidate]:
    """Drop selectors another one in the list already covers (the SA admits the same packets)."""
    if len(candidates) > PRUNE_LIMIT:
        return candidates
    return [c for c in candidates if not any(o != c and _subsumes(o, c) for o in candidates)]


def _exact(local: list[_Candidate], remote: list[_Candidate], tuples: list[_Tuple]) -> bool:
    """Is every (local, remote) combination inside one allowed tuple?"""
    for mine in local:
        for theirs in remote:
            if _version(mine.atom) != _version(theirs.atom):
                continue  # admits no packet
            if mine.protocol and theirs.protocol and mine.protocol != theirs.protocol:
                continue
            protocol = mine.protocol or theirs.protocol
            if not any(_covers(t, mine, theirs, protocol) for t in tuples):
                return False
    return True


def _covers(t: _Tuple, mine: _Candidate, theirs: _Candidate, protocol: int) -> bool:
    if t.protocol not in (PROTO_ANY, protocol):
        return False
    if not (t.local_ports[0] <= mine.port_start and mine.port_end <= t.local_ports[1]):
        return False
    if not (t.remote_ports[0] <= theirs.port_start and theirs.port_end <= t.remote_ports[1]):
        return False
    return any(_inside(mine.atom, a) for a in t.local) and any(_inside(theirs.atom, a) for a in t.remote)


def _widened(tuples: list[_Tuple], *, local: bool) -> tuple[_Candidate, ...]:
    """Atoms per protocol with any port; any protocol at all once one tuple allows any."""
    any_protocol = any(t.protocol == PROTO_ANY for t in tuples)
    found: set[_Candidate] = set()
    for t in tuples:
        protocol = PROTO_ANY if any_protocol else t.protocol
        found.update(_Candidate(a, protocol, *_ANY_PORTS) for a in (t.local if local else t.remote))
    return tuple(found)


def _expand(atom: _Atom, reach: Reach) -> tuple[IPNetwork, ...]:
    if isinstance(atom, _Symbol):
        return reach.by_version[atom.version]
    return (atom,)


def _side(candidates: tuple[_Candidate, ...], reach: Reach, exact: bool) -> tuple[TrafficSelector, ...]:
    # Candidates are distinct, and so are their expansions (a site's subnets are distinct).
    if exact:
        selectors = [
            TrafficSelector(p, c.protocol, c.port_start, c.port_end)
            for c in candidates
            for p in _expand(c.atom, reach)
        ]
    else:  # widened: one selector per protocol and merged prefix
        by_protocol: dict[int, list[IPNetwork]] = {}
        for c in candidates:
            by_protocol.setdefault(c.protocol, []).extend(_expand(c.atom, reach))
        selectors = [
            TrafficSelector(p, protocol)
            for protocol, prefixes in by_protocol.items()
            for p in collapse(prefixes)
        ]
    return tuple(sorted(selectors, key=TrafficSelector.sort_key))


def mirror(selectors: Selectors) -> Selectors:
    """The same SA seen from the peer: local and remote swap."""
    local, remote, exact = selectors
    return remote, local, exact
