"""The packet-filter rules of a PolicyView, compiled for fast matching on integers.

The view comes from the controller over the network: it is bounded and checked here, and a view
that cannot be enforced raises ``InvalidPolicyView`` (the caller keeps its previous filter).
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from trellis.agent.filter.packet import PROTO_TCP, PROTO_UDP
from trellis.v1 import common_pb2

# Bounds on a view, so a corrupt or hostile map cannot make the agent's filter unbounded.
MAX_VIEW_PEERS = 65536
MAX_RULES_PER_PEER = 4096
MAX_PREFIXES_PER_RULE = 1024
PORT_MAX = 65535
PEER_TAG_BYTES = 8  # a peer identity as flow records carry it (see peer_tag)

_Prefix = tuple[int, int]  # (network address, mask) as integers


class Direction(enum.StrEnum):
    """Seen from this site: OUTBOUND leaves the LAN towards a peer, INBOUND arrives from a peer."""

    OUTBOUND = "outbound"
    INBOUND = "inbound"

    @property
    def opposite(self) -> Direction:
        return Direction.INBOUND if self is Direction.OUTBOUND else Direction.OUTBOUND


def peer_tag(identity: str) -> bytes:
    """A short fixed-size stand-in for a peer identity (BLAKE2b): flow records shared between the
    data plane's workers carry it instead of the identity, and each side maps it back through its
    own view. Collisions between the identities of one view are refused when the view is built."""
    return hashlib.blake2b(identity.encode(), digest_size=PEER_TAG_BYTES).digest()


class InvalidPolicyView(ValueError):
    """A PolicyView the filter cannot enforce (bad prefix, protocol, ports, or beyond the bounds)."""


@dataclass(frozen=True, slots=True)
class MatchRule:
    """One FilterRule of one peer in one direction."""

    peer: str
    name: str
    direction: Direction
    protocol: int  # 0: any
    port_start: int
    port_end: int
    src4: tuple[_Prefix, ...]
    dst4: tuple[_Prefix, ...]
    src6: tuple[_Prefix, ...]
    dst6: tuple[_Prefix, ...]
    expires_at: float | None  # Unix time at which the rule stops applying

    def live(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def matches(self, version: int, protocol: int, src: int, dst: int, dst_port: int) -> bool:
        if self.protocol and self.protocol != protocol:
            return False
        if self.protocol in (PROTO_TCP, PROTO_UDP) and not self.port_start <= dst_port <= self.port_end:
            return False
        srcs, dsts = (self.src4, self.dst4) if version == 4 else (self.src6, self.dst6)
        return any(src & mask == net for net, mask in srcs) and any(dst & mask == net for net, mask in dsts)


def _prefixes(texts: Sequence[str], where: str) -> tuple[tuple[_Prefix, ...], tuple[_Prefix, ...]]:
    if len(texts) > MAX_PREFIXES_PER_RULE:
        raise InvalidPolicyView(f"{where}: {len(texts)} prefixes (at most {MAX_PREFIXES_PER_RULE})")
    v4: list[_Prefix] = []
    v6: list[_Prefix] = []
    for text in texts:
        try:
            network = ipaddress.ip_network(text)
        except ValueError as exc:
            raise InvalidPolicyView(f"{where}: {exc}") from None
        (v4 if network.version == 4 else v6).append((int(network.network_address), int(network.netmask)))
    return tuple(v4), tuple(v6)


def _expiry(rule: common_pb2.FilterRule) -> float | None:
    if not rule.HasField("expires_at"):
        return None
    return rule.expires_at.seconds + rule.expires_at.nanos / 1e9


def _compile(peer: str, direction: Direction, rule: common_pb2.FilterRule) -> MatchRule:
    where = f"peer {peer!r} {direction} rule {rule.rule!r}"
    if rule.protocol > 255:
        raise InvalidPolicyView(f"{where}: protocol {rule.protocol}")
    if not rule.port_start <= rule.port_end <= PORT_MAX:
        raise InvalidPolicyView(f"{where}: ports {rule.port_start}-{rule.port_end}")
    src4, src6 = _prefixes(rule.src_prefixes, where)
    dst4, dst6 = _prefixes(rule.dst_prefixes, where)
    return MatchRule(
        peer=peer,
        name=rule.rule,
        direction=direction,
        protocol=rule.protocol,
        port_start=rule.port_start,
        port_end=rule.port_end,
        src4=src4,
        dst4=dst4,
        src6=src6,
        dst6=dst6,
        expires_at=_expiry(rule),
    )


class RuleTable:
    """All rules of a view (or of one peer), indexed by direction, IP version and protocol."""

    def __init__(self, peers: Sequence[common_pb2.PeerPolicy]) -> None:
        if len(peers) > MAX_VIEW_PEERS:
            raise InvalidPolicyView(f"{len(peers)} peers (at most {MAX_VIEW_PEERS})")
        rules: list[MatchRule] = []
        for peer in peers:
            for direction, filter_rules in (
                (Direction.OUTBOUND, peer.outbound),
                (Direction.INBOUND, peer.inbound),
            ):
                if len(filter_rules) > MAX_RULES_PER_PEER:
                    raise InvalidPolicyView(f"peer {peer.identity!r}: {len(filter_rules)} {direction} rules")
                rules.extend(_compile(peer.identity, direction, rule) for rule in filter_rules)
        self.rules: tuple[MatchRule, ...] = tuple(rules)
        self.peers = frozenset(peer.identity for peer in peers)
        self.peer_tags = {identity: peer_tag(identity) for identity in self.peers}
        self.peer_of_tag = {tag: identity for identity, tag in self.peer_tags.items()}
        if len(self.peer_of_tag) != len(self.peer_tags):
            raise InvalidPolicyView("two peer identities share a flow-record tag")
        self._index: dict[tuple[Direction, int, int], tuple[MatchRule, ...]] = {}

    def _candidates(self, direction: Direction, version: int, protocol: int) -> tuple[MatchRule, ...]:
        key = (direction, version, protocol)
        found = self._index.get(key)
        if found is None:
            found = self._index[key] = tuple(
                rule
                for rule in self.rules
                if rule.direction is direction
                and rule.protocol in (0, protocol)
                and ((rule.src4 and rule.dst4) if version == 4 else (rule.src6 and rule.dst6))
            )
        return found

    def match(
        self,
        direction: Direction,
        *,
        version: int,
        protocol: int,
        src: int,
        dst: int,
        dst_port: int,
        now: float,
        peer: str | None = None,
        expired: bool = False,
    ) -> MatchRule | None:
        """The first live rule allowing a flow opened in ``direction`` (of ``peer`` if given);
        with ``expired``, the first rule that would allow it but is no longer live."""
        for rule in self._candidates(direction, version, protocol):
            if (
                (peer is None or rule.peer == peer)
                and rule.live(now) is not expired
                and rule.matches(version, protocol, src, dst, dst_port)
            ):
                return rule
        return None
