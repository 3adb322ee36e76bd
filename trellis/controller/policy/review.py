"""Everything ``policy apply`` needs to decide, in one pure call.

``review_policy`` parses and validates the text, warns about rules that cannot do what they
seem to (``lint``), runs the document's tests and diffs the resulting views against the running
ones. A policy is accepted only without errors and with every test passing; an invalid policy
never replaces the running one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from trellis.controller.policy.compiler import PolicyCompiler, narrow
from trellis.controller.policy.decide import PolicyTestResult, run_policy_tests
from trellis.controller.policy.diff import AccessChange, diff_views
from trellis.controller.policy.errors import Issue, PolicyInvalid
from trellis.controller.policy.model import AnyOf, Inventory, LabelMatch, Mark, Policy, Selector, SiteName
from trellis.controller.policy.parser import parse_policy
from trellis.controller.policy.selection import SiteIndex, describe_selector
from trellis.controller.policy.timing import format_instant
from trellis.controller.policy.view import View


def _warning(mark: Mark, path: str, message: str) -> Issue:
    return Issue(line=mark.line, column=mark.column, path=path, message=message, warning=True)


def lint(policy: Policy, inventory: Inventory, now: dt.datetime) -> tuple[Issue, ...]:
    """Warnings (not errors): selectors that pick no site, rules that can never apply, expired rules,
    to_prefixes outside every destination subnet. The inventory changes, so none of these refuse."""
    index = SiteIndex(inventory)
    warnings: list[Issue] = []
    for position, rule in enumerate(policy.rules):
        path = f"rules[{position}]"
        ends: list[frozenset[str]] = []
        for key, selector in (("from", rule.source), ("to", rule.destination)):
            picked = index.select(selector)
            ends.append(picked)
            warnings.extend(_selector_warnings(selector, index, f"{path}.{key}"))
        sources, destinations = ends
        if sources and destinations and len(sources | destinations) == 1:
            warnings.append(
                _warning(
                    rule.mark,
                    path,
                    f"rule {rule.name!r} can never apply: it picks only one site on both ends",
                )
            )
        if rule.window.not_after is not None and rule.window.not_after <= now:
            warnings.append(
                _warning(
                    rule.mark, path, f"rule {rule.name!r} expired at {format_instant(rule.window.not_after)}"
                )
            )
        if rule.to_prefixes is not None and destinations:
            for i, prefix in enumerate(rule.to_prefixes):
                if not any(narrow(inventory.by_identity(d).subnets, (prefix,)) for d in destinations):
                    warnings.append(
                        _warning(
                            rule.mark,
                            f"{path}.to_prefixes[{i}]",
                            f"{prefix} is outside the subnets of every site the rule's 'to' picks",
                        )
                    )
    return tuple(warnings)


def _selector_warnings(selector: Selector, index: SiteIndex, path: str) -> list[Issue]:
    parts = selector.selectors if isinstance(selector, AnyOf) else (selector,)
    warnings: list[Issue] = []
    for i, part in enumerate(parts):
        part_path = f"{path}[{i}]" if isinstance(selector, AnyOf) else path
        if isinstance(part, SiteName | LabelMatch) and not index.select(part):
            what = f"no site named {part.name!r}" if isinstance(part, SiteName) else f"no site matches {part}"
            warnings.append(
                _warning(part.mark, part_path, f"{what} in the inventory ({describe_selector(part)})")
            )
    return warnings


@dataclass(frozen=True, slots=True)
class Review:
    policy: Policy | None  # None when the text is not a valid policy
    issues: tuple[Issue, ...]  # errors first, then warnings
    tests: tuple[PolicyTestResult, ...]
    changes: tuple[AccessChange, ...]  # against ``current``
    compiler: PolicyCompiler | None  # the new policy compiled at ``now`` (adopt it on apply)

    @property
    def errors(self) -> tuple[Issue, ...]:
        return tuple(issue for issue in self.issues if not issue.warning)

    @property
    def warnings(self) -> tuple[Issue, ...]:
        return tuple(issue for issue in self.issues if issue.warning)

    @property
    def failed_tests(self) -> tuple[PolicyTestResult, ...]:
        return tuple(result for result in self.tests if not result.passed)

    @property
    def accepted(self) -> bool:
        return self.policy is not None and not self.errors and not self.failed_tests


def review_policy(
    text: str,
    inventory: Inventory,
    now: dt.datetime,
    *,
    current: Mapping[str, View] | None = None,
    with_changes: bool = True,
) -> Review:
    """Validate, lint, test and diff a candidate policy. ``current``: the running views (None: none).
    ``with_changes=False`` leaves the diff out (it can be computed later with ``diff_views``)."""
    try:
        policy = parse_policy(text)
    except PolicyInvalid as invalid:
        return Review(policy=None, issues=invalid.issues, tests=(), changes=(), compiler=None)
    warnings = lint(policy, inventory, now)
    tests = run_policy_tests(policy, inventory, now)
    compiler = PolicyCompiler(policy, inventory, now)
    changes = diff_views(current or {}, compiler.views()) if with_changes else ()
    return Review(policy=policy, issues=warnings, tests=tests, changes=changes, compiler=compiler)
