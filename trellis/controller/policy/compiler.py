"""Policy + inventory + time -> each site's view. Pure: no I/O, ``now`` is an argument.

``compile_view`` answers for one site; ``PolicyCompiler`` holds the views of every site and
updates them incrementally when a rule, the inventory or the time changes, recomputing only the
site pairs a change touches.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
from collections.abc import Hashable, Iterable, Iterator

from trellis.controller.policy.errors import UnknownSite
from trellis.controller.policy.model import (
    PORT_MAX,
    PROTO_ANY,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTOCOL_NAMES,
    Inventory,
    IPNetwork,
    Policy,
    Rule,
    Site,
)
from trellis.controller.policy.selection import SiteIndex
from trellis.controller.policy.selectors_ike import Reach, SelectorPlanner, mirror
from trellis.controller.policy.view import FlowRule, PeerView, View, collapse

_Pair = tuple[str, str]


def narrow(
    subnets: tuple[IPNetwork, ...], to_prefixes: tuple[IPNetwork, ...] | None
) -> tuple[IPNetwork, ...]:
    """The destination addresses a rule reaches in a site: its subnets within ``to_prefixes``."""
    if to_prefixes is None:
        return subnets
    inside: list[IPNetwork] = []
    for prefix in to_prefixes:
        for subnet in subnets:
            if prefix.version != subnet.version:
                continue
            if prefix.subnet_of(subnet):  # type: ignore[arg-type]
                inside.append(prefix)
            elif subnet.subnet_of(prefix):  # type: ignore[arg-type]
                inside.append(subnet)
    return collapse(inside)


# One filter rule to make per service: protocol, ports, and the IP version it is limited to (0: none).
_Template = tuple[int, int, int, int]


def _templates(rule: Rule) -> tuple[_Template, ...]:
    out: list[_Template] = []
    for service in rule.services:
        if service.protocol == "icmp":
            out.extend(((PROTO_ICMP, 0, PORT_MAX, 4), (PROTO_ICMPV6, 0, PORT_MAX, 6)))
        else:
            protocol = PROTO_ANY if service.protocol == "any" else PROTOCOL_NAMES[service.protocol]
            out.append((protocol, service.port_start, service.port_end, 0))
    return tuple(out)


def _flow_rules(
    rule: Rule,
    templates: tuple[_Template, ...],
    source: Reach,
    destination: Reach,
    expires_at: dt.datetime | None,
) -> list[FlowRule]:
    if rule.to_prefixes is not None:
        destination = Reach.of(narrow(destination.prefixes, rule.to_prefixes))
    versions = source.versions & destination.versions
    if not versions:
        return []
    src_all, dst_all = source.by_versions[versions], destination.by_versions[versions]
    name = rule.name
    out: list[FlowRule] = []
    for protocol, start, end, version in templates:
        if not version:
            out.append(FlowRule(name, src_all, dst_all, protocol, start, end, expires_at))
        elif version in versions:
            src, dst = source.by_version[version], destination.by_version[version]
            out.append(FlowRule(name, src, dst, protocol, start, end, expires_at))
    return out


# Bound on the per-rule memo of a pair builder (rules of successive policies accumulate).
MAX_MEMO_RULES = 20_000


class _PairBuilder:
    """Builds the views of site pairs, with what pairs share cached: each site's prefixes split by
    version, each rule's filter-rule templates, and the traffic-selector plans."""

    def __init__(self, flips: dict[str, dt.datetime | None]) -> None:
        self.flips = flips
        self._reach: dict[str, Reach] = {}
        self._planner = SelectorPlanner()
        # id(rule) -> (rule, templates, services id); the entry keeps the rule alive, so ids stay unique.
        self._memo: dict[int, tuple[Rule, tuple[_Template, ...], int]] = {}
        self._service_ids: dict[tuple[_Template, ...], int] = {}

    def reach(self, site: Site) -> Reach:
        found = self._reach.get(site.identity)
        if found is None:
            found = self._reach[site.identity] = Reach.of(site.subnets)
        return found

    def _rule(self, rule: Rule) -> tuple[Rule, tuple[_Template, ...], int]:
        memo = self._memo.get(id(rule))
        if memo is None:
            if len(self._memo) >= MAX_MEMO_RULES:
                self._memo.clear()
            templates = _templates(rule)
            service_id = self._service_ids.setdefault(templates, len(self._service_ids))
            memo = self._memo[id(rule)] = (rule, templates, service_id)
        return memo

    def flows(self, rules: Iterable[Rule], source: Site, destination: Site) -> tuple[FlowRule, ...]:
        src, dst = self.reach(source), self.reach(destination)
        versions = src.versions & dst.versions
        out: list[FlowRule] = []
        for rule in rules:
            templates = self._rule(rule)[1]
            expires_at = self.flips[rule.name]
            if rule.to_prefixes is not None:
                out.extend(_flow_rules(rule, templates, src, dst, expires_at))
                continue
            # The common case, inlined (it runs once per rule per site pair).
            if not versions:
                continue
            src_all, dst_all = src.by_versions[versions], dst.by_versions[versions]
            for protocol, start, end, version in templates:
                if not version:
                    out.append(FlowRule(rule.name, src_all, dst_all, protocol, start, end, expires_at))
                elif version in versions:
                    pair = src.by_version[version], dst.by_version[version]
                    out.append(FlowRule(rule.name, *pair, protocol, start, end, expires_at))
        return tuple(out)

    def _shape(
        self, site: Site, peer: Site, outbound_rules: list[Rule], inbound_rules: list[Rule]
    ) -> Hashable:
        """What the pair's selectors depend on, when every rule reaches whole sites (else None)."""
        if any(r.to_prefixes is not None for r in outbound_rules) or any(
            r.to_prefixes is not None for r in inbound_rules
        ):
            return None
        return (
            tuple(self._rule(r)[2] for r in outbound_rules),
            tuple(self._rule(r)[2] for r in inbound_rules),
            self.reach(site).versions,
            self.reach(peer).versions,
        )

    def peer_views(
        self, site: Site, peer: Site, outbound_rules: list[Rule], inbound_rules: list[Rule]
    ) -> tuple[PeerView, PeerView] | None:
        """``site``'s view of ``peer`` and ``peer``'s view of ``site`` (None: no access either way)."""
        outbound = self.flows(outbound_rules, site, peer)
        inbound = self.flows(inbound_rules, peer, site)
        if not outbound and not inbound:
            return None
        shape = self._shape(site, peer, outbound_rules, inbound_rules)
        selectors = self._planner.selectors(
            outbound, inbound, self.reach(site), self.reach(peer), shape=shape
        )
        local, remote, exact = selectors
        mine = PeerView(
            identity=peer.identity,
            local_selectors=local,
            remote_selectors=remote,
            outbound=outbound,
            inbound=inbound,
            selectors_exact=exact,
        )
        their_local, their_remote, _ = mirror(selectors)
        theirs = PeerView(
            identity=site.identity,
            local_selectors=their_local,
            remote_selectors=their_remote,
            outbound=inbound,
            inbound=outbound,
            selectors_exact=exact,
        )
        return mine, theirs


def _concerns(identity: str, sources: frozenset[str], destinations: frozenset[str]) -> bool:
    """Can this rule ever put a flow in this site's view?"""
    if identity in sources and (len(destinations) > 1 or (destinations and identity not in destinations)):
        return True
    return identity in destinations and (len(sources) > 1 or (bool(sources) and identity not in sources))


def compile_view(policy: Policy, inventory: Inventory, identity: str, now: dt.datetime) -> View:
    """The view of one site (by identity or name) at ``now``; raises UnknownSite."""
    site = inventory.find(identity)
    if site is None:
        raise UnknownSite(identity)
    index = SiteIndex(inventory)
    outbound: dict[str, list[Rule]] = {}
    inbound: dict[str, list[Rule]] = {}
    flips: dict[str, dt.datetime | None] = {}
    next_change: dt.datetime | None = None
    for rule in policy.rules:
        sources, destinations = index.select(rule.source), index.select(rule.destination)
        if not _concerns(site.identity, sources, destinations):
            continue
        flip = flips[rule.name] = rule.window.next_flip(now)
        if flip is not None and (next_change is None or flip < next_change):
            next_change = flip
        if not rule.window.active(now):
            continue
        if site.identity in sources:
            for peer in destinations - {site.identity}:
                outbound.setdefault(peer, []).append(rule)
        if site.identity in destinations:
            for peer in sources - {site.identity}:
                inbound.setdefault(peer, []).append(rule)
    peers: list[PeerView] = []
    builder = _PairBuilder(flips)
    for peer_identity in sorted(outbound.keys() | inbound.keys()):
        pair = builder.peer_views(
            site,
            inventory.by_identity(peer_identity),
            outbound.get(peer_identity, []),
            inbound.get(peer_identity, []),
        )
        if pair is not None:
            peers.append(pair[0])
    return View(identity=site.identity, peers=tuple(peers), next_change=next_change)


def compile_all(policy: Policy, inventory: Inventory, now: dt.datetime) -> dict[str, View]:
    """Every site's view at ``now``, by identity."""
    return PolicyCompiler(policy, inventory, now).views()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while views are built (or converted to protobuf).

    Building all views creates millions of small acyclic objects; each generation-0 collection
    they trigger walks them again, which costs about 40% of a full compile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class PolicyCompiler:
    """Every site's view, kept up to date incrementally.

    ``update_policy``, ``update_inventory`` and ``advance`` return the identities whose view
    changed (to push them); ``view``/``views`` read the current views. Call ``advance(now)`` at
    ``next_change()`` so that windows open and close on time.
    """

    def __init__(self, policy: Policy, inventory: Inventory, now: dt.datetime) -> None:
        self._policy = policy
        self._inventory = inventory
        self._now = now
        self._rebuild()

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def inventory(self) -> Inventory:
        return self._inventory

    @property
    def now(self) -> dt.datetime:
        return self._now

    # --- reading ------------------------------------------------------------------------------

    def view(self, identity: str) -> View:
        site = self._inventory.find(identity)
        if site is None:
            raise UnknownSite(identity)
        cached = self._views.get(site.identity)
        if cached is None:
            cached = self._views[site.identity] = self._build_view(site.identity)
        return cached

    def views(self) -> dict[str, View]:
        return {site.identity: self.view(site.identity) for site in self._inventory.sites}

    def next_change(self) -> dt.datetime | None:
        """The earliest instant at which some view changes (call ``advance`` then)."""
        flips = [flip for flip in self._flips.values() if flip is not None]
        return min(flips) if flips else None

    # --- changing -----------------------------------------------------------------------------

    def update_policy(self, policy: Policy) -> frozenset[str]:
        old_rules = {rule.name: rule for rule in self._policy.rules}
        new_rules = {rule.name: rule for rule in policy.rules}
        changed = {
            name for name in old_rules.keys() | new_rules.keys() if old_rules.get(name) != new_rules.get(name)
        }
        kept_old = [rule.name for rule in self._policy.rules if rule.name not in changed]
        kept_new = [rule.name for rule in policy.rules if rule.name not in changed]
        if kept_old != kept_new:
            # Unchanged rules moved relative to each other: the order of filter rules changes in
            # views these rules touch, so recompute everything.
            return self._replace(policy=policy)
        old_ends = {name: self._ends[name] for name in changed if name in self._ends}
        old_active = set(self._active)
        self._policy = policy
        self._position = {rule.name: i for i, rule in enumerate(policy.rules)}
        self._by_name = new_rules
        for name in changed:
            self._ends.pop(name, None)
            self._flips.pop(name, None)
            self._active.discard(name)
            rule = new_rules.get(name)
            if rule is not None:
                self._ends[name] = (self._index.select(rule.source), self._index.select(rule.destination))
                self._flips[name] = rule.window.next_flip(self._now)
                if rule.window.active(self._now):
                    self._active.add(name)
        return self._refresh(changed, old_ends, old_active)

    def advance(self, now: dt.datetime) -> frozenset[str]:
        """Move the clock forward; rules whose window opened or closed take effect."""
        if now < self._now:
            return self._replace(now=now)
        self._now = now
        flipped = {name for name, flip in self._flips.items() if flip is not None and flip <= now}
        if not flipped:
            return frozenset()
        old_active = set(self._active)
        for name in flipped:
            rule = self._by_name[name]
            self._flips[name] = rule.window.next_flip(now)
            if rule.window.active(now):
                self._active.add(name)
            else:
                self._active.discard(name)
        return self._refresh(flipped, {name: self._ends[name] for name in flipped}, old_active)

    def update_inventory(self, inventory: Inventory) -> frozenset[str]:
        """Sites added, removed or changed (labels, subnets): recompute everything."""
        return self._replace(inventory=inventory)

    # --- internals ----------------------------------------------------------------------------

    def _replace(
        self,
        *,
        policy: Policy | None = None,
        inventory: Inventory | None = None,
        now: dt.datetime | None = None,
    ) -> frozenset[str]:
        before = self.views()
        self._policy = policy or self._policy
        self._inventory = inventory or self._inventory
        self._now = now or self._now
        self._rebuild()
        after = self.views()
        return frozenset(i for i in before.keys() | after.keys() if before.get(i) != after.get(i))

    def _rebuild(self) -> None:
        with gc_paused():
            self._build()

    def _build(self) -> None:
        self._index = SiteIndex(self._inventory)
        self._by_name = {rule.name: rule for rule in self._policy.rules}
        self._position = {rule.name: i for i, rule in enumerate(self._policy.rules)}
        self._ends: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self._flips: dict[str, dt.datetime | None] = {}
        self._active: set[str] = set()
        self._pair_rules: dict[_Pair, list[str]] = {}
        self._peer_views: dict[_Pair, PeerView] = {}
        self._peers: dict[str, set[str]] = {}
        self._views: dict[str, View] = {}
        self._builder = _PairBuilder(self._flips)
        for rule in self._policy.rules:
            self._ends[rule.name] = (self._index.select(rule.source), self._index.select(rule.destination))
            self._flips[rule.name] = rule.window.next_flip(self._now)
            if rule.window.active(self._now):
                self._active.add(rule.name)
        for rule in self._policy.rules:  # in order, so each pair's list is in policy order
            if rule.name in self._active:
                self._add_pairs(rule.name)
        done: set[_Pair] = set()
        for a, b in list(self._pair_rules):
            pair = (a, b) if a < b else (b, a)
            if pair not in done:
                done.add(pair)
                self._recompute_pair(*pair)

    def _add_pairs(self, name: str) -> None:
        sources, destinations = self._ends[name]
        pair_rules = self._pair_rules
        for a in sources:
            for b in destinations:
                if a != b:
                    pair_rules.setdefault((a, b), []).append(name)

    def _pairs_of(self, ends: tuple[frozenset[str], frozenset[str]]) -> set[_Pair]:
        sources, destinations = ends
        return {(a, b) for a in sources for b in destinations if a != b}

    def _refresh(
        self,
        changed: set[str],
        old_ends: dict[str, tuple[frozenset[str], frozenset[str]]],
        old_active: set[str],
    ) -> frozenset[str]:
        touched_pairs: set[_Pair] = set()
        touched_sites: set[str] = set()
        for name in changed:
            before = old_ends.get(name)
            if before is not None:
                pairs = self._pairs_of(before)
                touched_pairs |= pairs
                touched_sites |= before[0] | before[1]
                if name in old_active:
                    self._remove_from_pairs(name, pairs)
            after = self._ends.get(name)
            if after is not None:
                touched_pairs |= self._pairs_of(after)
                touched_sites |= after[0] | after[1]
        for name in changed:
            if name in self._active:
                for pair in self._pairs_of(self._ends[name]):
                    rules = self._pair_rules.setdefault(pair, [])
                    rules.append(name)
                    rules.sort(key=self._position.__getitem__)
        unordered = {(a, b) if a < b else (b, a) for a, b in touched_pairs}
        with gc_paused():
            for a, b in unordered:
                self._recompute_pair(a, b)
        result: set[str] = set()
        for identity in touched_sites:
            old = self._views.pop(identity, None)
            if old is None or self.view(identity) != old:
                result.add(identity)
        return frozenset(result)

    def _remove_from_pairs(self, name: str, pairs: set[_Pair]) -> None:
        for pair in pairs:
            rules = self._pair_rules.get(pair)
            if rules is not None and name in rules:
                rules.remove(name)
                if not rules:
                    del self._pair_rules[pair]

    def _recompute_pair(self, a: str, b: str) -> None:
        rule_names_ab = self._pair_rules.get((a, b), [])
        rule_names_ba = self._pair_rules.get((b, a), [])
        site_a, site_b = self._inventory.by_identity(a), self._inventory.by_identity(b)
        views = self._builder.peer_views(
            site_a,
            site_b,
            [self._by_name[n] for n in rule_names_ab],
            [self._by_name[n] for n in rule_names_ba],
        )
        if views is None:
            self._peer_views.pop((a, b), None)
            self._peer_views.pop((b, a), None)
            self._peers.get(a, set()).discard(b)
            self._peers.get(b, set()).discard(a)
        else:
            self._peer_views[(a, b)], self._peer_views[(b, a)] = views
            self._peers.setdefault(a, set()).add(b)
            self._peers.setdefault(b, set()).add(a)

    def _build_view(self, identity: str) -> View:
        peers = tuple(self._peer_views[(identity, peer)] for peer in sorted(self._peers.get(identity, ())))
        next_change: dt.datetime | None = None
        for name, flip in self._flips.items():
            if flip is None or (next_change is not None and flip >= next_change):
                continue
            sources, destinations = self._ends[name]
            if _concerns(identity, sources, destinations):
                next_change = flip
        return View(identity=identity, peers=peers, next_change=next_change)
