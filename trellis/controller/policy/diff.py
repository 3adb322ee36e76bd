"""Which site pairs gain or lose access between two sets of views (``policy apply --dry-run``)."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from trellis.controller.policy.model import PROTO_ANY, IPNetwork
from trellis.controller.policy.view import View, protocol_text


class ChangeKind(enum.StrEnum):
    GAINED = "gained"  # no access before, some now
    LOST = "lost"  # some access before, none now
    CHANGED = "changed"  # access before and now, but not the same


@dataclass(frozen=True, slots=True)
class AccessChange:
    """A change in what ``source`` may open towards ``destination`` (identities)."""

    source: str
    destination: str
    kind: ChangeKind
    added: tuple[str, ...]  # e.g. "tcp/443 to 10.2.0.0/24"
    removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Atom:
    protocol: int
    port_start: int
    port_end: int
    prefix: IPNetwork

    def __str__(self) -> str:
        return f"{protocol_text(self.protocol, self.port_start, self.port_end)} to {self.prefix}"


def _atoms(view: View | None, peer: str) -> list[_Atom]:
    if view is None:
        return []
    peer_view = view.peer(peer)
    if peer_view is None:
        return []
    return [
        _Atom(rule.protocol, rule.port_start, rule.port_end, prefix)
        for rule in peer_view.outbound
        for prefix in rule.dst_prefixes
    ]


def _covered(atom: _Atom, others: Iterable[_Atom]) -> bool:
    """Is everything ``atom`` allows also allowed by the union of ``others``?"""
    ranges = sorted(
        (o.port_start, o.port_end)
        for o in others
        if o.protocol in (PROTO_ANY, atom.protocol)
        and o.prefix.version == atom.prefix.version
        and atom.prefix.subnet_of(o.prefix)  # type: ignore[arg-type]
    )
    reached = atom.port_start
    for start, end in ranges:
        if start > reached:
            break
        reached = max(reached, end + 1)
        if reached > atom.port_end:
            return True
    return False


def _uncovered(atoms: list[_Atom], others: list[_Atom]) -> tuple[str, ...]:
    return tuple(sorted({str(a) for a in atoms if not _covered(a, others)}))


def diff_views(old: Mapping[str, View], new: Mapping[str, View]) -> tuple[AccessChange, ...]:
    """Access changes from ``old`` to ``new`` views (both keyed by identity), sorted by pair.

    Changes of expiry alone are not reported: only what may be opened now.
    """
    pairs: set[tuple[str, str]] = set()
    for views in (old, new):
        for identity, view in views.items():
            pairs.update((identity, peer.identity) for peer in view.peers if peer.outbound)
    changes: list[AccessChange] = []
    for source, destination in sorted(pairs):
        before = _atoms(old.get(source), destination)
        after = _atoms(new.get(source), destination)
        added = _uncovered(after, before)
        removed = _uncovered(before, after)
        if not added and not removed:
            continue
        if not before:
            kind = ChangeKind.GAINED
        elif not after:
            kind = ChangeKind.LOST
        else:
            kind = ChangeKind.CHANGED
        changes.append(
            AccessChange(source=source, destination=destination, kind=kind, added=added, removed=removed)
        )
    return tuple(changes)


def changed_identities(old: Mapping[str, View], new: Mapping[str, View]) -> frozenset[str]:
    """Sites whose view differs in any way (selectors, rules, expiry, next change)."""
    return frozenset(i for i in old.keys() | new.keys() if old.get(i) != new.get(i))
