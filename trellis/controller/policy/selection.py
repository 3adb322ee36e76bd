"""Which sites a selector picks, answered from indexes rather than by testing every site."""

from __future__ import annotations

from trellis.controller.policy.model import (
    AllSites,
    AnyOf,
    Inventory,
    LabelMatch,
    LabelRequirement,
    Selector,
    SiteName,
)


class SiteIndex:
    """Sites by name and by label value; ``select`` returns identities."""

    __slots__ = ("_all", "_by_label", "_by_name", "_cache", "inventory")

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._all = frozenset(site.identity for site in inventory.sites)
        self._by_name = {site.name: site.identity for site in inventory.sites}
        self._by_label: dict[str, dict[str, set[str]]] = {}
        for site in inventory.sites:
            for key, value in site.labels.items():
                self._by_label.setdefault(key, {}).setdefault(value, set()).add(site.identity)
        self._cache: dict[Selector, frozenset[str]] = {}

    def select(self, selector: Selector) -> frozenset[str]:
        cached = self._cache.get(selector)
        if cached is None:
            cached = self._cache[selector] = self._select(selector)
        return cached

    def _select(self, selector: Selector) -> frozenset[str]:
        if isinstance(selector, AllSites):
            return self._all
        if isinstance(selector, SiteName):
            identity = self._by_name.get(selector.name)
            return frozenset() if identity is None else frozenset((identity,))
        if isinstance(selector, LabelMatch):
            picked: frozenset[str] | None = None
            for requirement in selector.requirements:
                matching = self._requirement(requirement)
                picked = matching if picked is None else picked & matching
                if not picked:
                    break
            return picked or frozenset()
        union: set[str] = set()
        for part in selector.selectors:
            union |= self.select(part)
        return frozenset(union)

    def _requirement(self, requirement: LabelRequirement) -> frozenset[str]:
        values = self._by_label.get(requirement.key, {})
        found: set[str] = set()
        for value in requirement.values:
            found |= values.get(value, set())
        return frozenset(found)


def describe_selector(selector: Selector) -> str:
    """How a selector reads in messages."""
    if isinstance(selector, AnyOf):
        return " or ".join(describe_selector(part) for part in selector.selectors)
    if isinstance(selector, AllSites):
        return "every site"
    if isinstance(selector, SiteName):
        return f"site {selector.name}"
    return f"sites labelled {selector}"
