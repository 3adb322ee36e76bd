"""check(), the document's own tests, lint warnings, review for apply, and the access diff."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest

from tests.unit.policy.policy_helpers import MONDAY_9, make_inventory, policy_text, uri
from trellis.controller.policy import (
    AccessChange,
    ChangeKind,
    Decision,
    UnknownSite,
    changed_identities,
    check,
    compile_all,
    diff_views,
    lint,
    parse_policy,
    review_policy,
    run_policy_tests,
)
from trellis.controller.policy.wire import decision_to_proto, review_to_proto

RULES = (
    "  - {name: web, from: {role: branch}, to: {role: dc}, ports: [tcp/443, udp/5000-5010]}\n"
    "  - name: db\n    from: branch-a\n    to: dc-1\n    ports: tcp/5432\n    to_prefixes: [10.10.5.0/24]\n"
    "  - name: office-ssh\n    from: dc-1\n    to: branch-a\n    ports: tcp/22\n"
    "    schedule: mon-fri 08:00-18:00\n"
    '  - {name: ping, from: "*", to: vpc-1, ports: icmp}\n'
    "  - {name: gre, from: branch-b, to: dc-1, ports: any}\n"
)
POLICY = parse_policy(policy_text(RULES))
INVENTORY = make_inventory()


def decide(
    source: str,
    destination: str,
    protocol: int | str,
    port: int | None = None,
    *,
    at: dt.datetime = MONDAY_9,
    src_address: str | None = None,
    dst_address: str | None = None,
) -> Decision:
    return check(
        POLICY,
        INVENTORY,
        source=source,
        destination=destination,
        protocol=protocol,
        port=port,
        at=at,
        src_address=src_address,
        dst_address=dst_address,
    )


def test_allowed_names_the_first_rule_and_its_line() -> None:
    decision = decide("branch-a", "dc-1", "tcp", 443)
    assert decision.allowed and decision.rule == "web"
    assert decision.rule_mark is not None and (decision.rule_mark.line, decision.rule_mark.column) == (4, 5)
    assert (
        decision.reason
        == "rule 'web' (line 4, column 5) allows branch-a -> dc-1 tcp/443 at 2025-06-02T09:00:00Z"
    )
    assert decision.dst_prefixes == (
        ipaddress.ip_network("10.10.0.0/16"),
        ipaddress.ip_network("fd00:10::/48"),
    )
    assert decide("branch-b", "dc-1", "udp", 5010).rule == "web"
    assert decide("branch-b", "dc-1", "udp", 5011).rule == "gre"  # the any rule allows the rest
    assert decide("spiffe://example.org/site/branch-b", uri("dc-1"), 47).rule == "gre"  # identities work too


def test_default_deny_and_direction() -> None:
    decision = decide("dc-1", "branch-b", "tcp", 443)
    assert not decision.allowed and decision.rule is None
    assert decision.reason == "no rule allows dc-1 -> branch-b tcp/443 at 2025-06-02T09:00:00Z (default deny)"
    assert not decide("branch-a", "dc-1", "udp", 4999).allowed
    assert not decide("branch-a", "branch-b", "icmp").allowed


def test_same_site() -> None:
    decision = decide("dc-1", "dc-1", "icmp")
    assert not decision.allowed and "same site" in decision.reason


def test_prefix_narrowing_needs_the_address() -> None:
    assert decide("branch-a", "dc-1", "tcp", 5432).dst_prefixes == (ipaddress.ip_network("10.10.5.0/24"),)
    assert decide("branch-a", "dc-1", "tcp", 5432, dst_address="10.10.5.9").allowed
    refused = decide("branch-a", "dc-1", "tcp", 5432, dst_address="10.10.6.9")
    assert not refused.allowed
    assert refused.reason.endswith("rule 'db' (line 5, column 5) allows it only to 10.10.5.0/24")
    # The v6 side of dc-1 is outside to_prefixes.
    assert not decide("branch-a", "dc-1", "tcp", 5432, src_address="fd00:1::9").allowed


def test_addresses_must_belong_to_the_sites() -> None:
    decision = decide("branch-a", "dc-1", "tcp", 443, src_address="10.2.0.1")
    assert not decision.allowed and "10.2.0.1 is not in the subnets of site branch-a" in decision.reason
    assert decide("branch-a", "dc-1", "tcp", 443, src_address="fd00:1::1", dst_address="fd00:10::1").allowed
    # Families must meet: an IPv4 source cannot reach an IPv6 destination.
    assert not decide(
        "branch-a", "dc-1", "tcp", 443, src_address="10.1.0.1", dst_address="fd00:10::1"
    ).allowed


def test_icmp_follows_the_family() -> None:
    assert decide("branch-a", "vpc-1", "icmp").allowed  # over IPv6
    assert decide("branch-a", "vpc-1", "icmpv6").allowed
    assert decide("branch-a", "vpc-1", 58).allowed
    assert not decide("branch-a", "vpc-1", 1).allowed  # ICMP for IPv4 cannot go over IPv6
    assert not decide("branch-b", "vpc-1", "icmp").allowed  # branch-b has no IPv6


def test_time_windows() -> None:
    assert decide("dc-1", "branch-a", "tcp", 22).rule == "office-ssh"
    evening = decide("dc-1", "branch-a", "tcp", 22, at=MONDAY_9.replace(hour=18))
    assert not evening.allowed
    assert evening.reason == (
        "no rule allows dc-1 -> branch-a tcp/22 at 2025-06-02T18:00:00Z: "
        "rule 'office-ssh' (line 10, column 5) would allow it but is not in effect then "
        "(schedule 'mon-fri 08:00-18:00')"
    )


def test_callers_mistakes_raise() -> None:
    with pytest.raises(UnknownSite):
        decide("nowhere", "dc-1", "icmp")
    with pytest.raises(ValueError, match="needs a destination port"):
        decide("branch-a", "dc-1", "tcp")
    with pytest.raises(ValueError, match="unknown protocol"):
        decide("branch-a", "dc-1", "sctp")
    with pytest.raises(ValueError, match="timezone-aware"):
        decide("branch-a", "dc-1", "icmp", at=dt.datetime(2025, 6, 2, 9))


def test_decision_to_proto() -> None:
    message = decision_to_proto(decide("branch-a", "dc-1", "tcp", 5432), version=4)
    assert (message.allowed, message.rule, message.rule_line, message.version) == (True, "db", 5, 4)
    assert list(message.dst_prefixes) == ["10.10.5.0/24"]


# --- the document's tests -------------------------------------------------------------------------

TESTS = (
    "  - {from: branch-a, to: dc-1, proto: tcp, port: 443, expect: allow}\n"
    "  - {from: dc-1, to: branch-a, proto: tcp, port: 443, expect: allow}\n"
    "  - {from: dc-1, to: branch-a, proto: tcp, port: 22, expect: deny, at: 2025-06-07T12:00:00Z}\n"
    "  - {from: dc-1, to: branch-a, proto: tcp, port: 22, expect: deny}\n"
    "  - {from: ghost, to: branch-a, proto: icmp, expect: deny}\n"
    "  - {from: branch-a, to: dc-1, proto: tcp, port: 5432, dst: 10.10.5.1, expect: allow}\n"
)


def test_run_policy_tests_reports_failures_precisely() -> None:
    policy = parse_policy(policy_text(RULES, TESTS))
    results = run_policy_tests(policy, INVENTORY, MONDAY_9)
    assert [r.passed for r in results] == [True, False, True, False, False, True]
    assert results[0].message == "" and results[0].decision is not None and results[0].decision.rule == "web"
    assert results[1].message == (
        "test 2 (line 19, column 5): expected allow, but it is denied: "
        "no rule allows dc-1 -> branch-a tcp/443 at 2025-06-02T09:00:00Z (default deny)"
    )
    assert results[3].message == (
        "test 4 (line 21, column 5): expected deny, but rule 'office-ssh' (line 10, column 5) "
        "allows dc-1 -> branch-a tcp/22 at 2025-06-02T09:00:00Z"
    )
    assert results[4].decision is None
    assert results[4].message == (
        "test 5 (line 22, column 5): expected deny for ghost -> branch-a icmp, but unknown site 'ghost' "
        "is not in the inventory"
    )
    assert results[5].flow == "branch-a -> dc-1 tcp/5432"


# --- lint, review, diff ---------------------------------------------------------------------------


def test_lint_warns_without_refusing() -> None:
    text = policy_text(
        "  - {name: ghost, from: nobody, to: {role: printer}}\n"
        "  - {name: loop, from: dc-1, to: dc-1}\n"
        "  - {name: old, from: branch-a, to: dc-1, not_after: 2025-01-01T00:00:00Z}\n"
        "  - {name: far, from: branch-a, to: dc-1, to_prefixes: [192.0.2.0/24]}\n"
        "  - {name: mixed, from: [branch-a, nobody-else], to: dc-1}\n"
    )
    warnings = lint(parse_policy(text), INVENTORY, MONDAY_9)
    assert all(w.warning for w in warnings)
    assert [(w.line, w.path, w.message) for w in warnings] == [
        (4, "rules[0].from", "no site named 'nobody' in the inventory (site nobody)"),
        (4, "rules[0].to", "no site matches {role=printer} in the inventory (sites labelled {role=printer})"),
        (5, "rules[1]", "rule 'loop' can never apply: it picks only one site on both ends"),
        (6, "rules[2]", "rule 'old' expired at 2025-01-01T00:00:00Z"),
        (
            7,
            "rules[3].to_prefixes[0]",
            "192.0.2.0/24 is outside the subnets of every site the rule's 'to' picks",
        ),
        (8, "rules[4].from[1]", "no site named 'nobody-else' in the inventory (site nobody-else)"),
    ]
    assert str(warnings[0]).startswith("line 4, column 25: warning: rules[0].from: no site named")


def test_review_refuses_invalid_and_failing_policies() -> None:
    invalid = review_policy(policy_text("  - {from: a}\n"), INVENTORY, MONDAY_9)
    assert not invalid.accepted and invalid.policy is None and invalid.compiler is None
    assert [str(e) for e in invalid.errors] == [
        "line 4, column 5: rules[0]: rule 'rule-1' needs 'to' (a selector: a site name, labels or \"*\")"
    ]
    failing = review_policy(policy_text(RULES, TESTS), INVENTORY, MONDAY_9)
    assert not failing.accepted and len(failing.failed_tests) == 3
    response = review_to_proto(failing, applied=False, version=3, affected_sites=0)
    assert not response.applied and response.version == 3
    assert [t.passed for t in response.tests] == [True, False, True, False, False, True]
    assert response.tests[1].line == 19 and "expected allow" in response.tests[1].message


def test_review_diffs_against_the_running_views() -> None:
    running = compile_all(POLICY, INVENTORY, MONDAY_9)
    candidate = RULES.replace("ports: [tcp/443, udp/5000-5010]", "ports: [tcp/443]").replace(
        '  - {name: ping, from: "*", to: vpc-1, ports: icmp}\n',
        '  - {name: ping, from: "*", to: "*", ports: icmp}\n',
    )
    review = review_policy(policy_text(candidate), INVENTORY, MONDAY_9, current=running)
    assert review.accepted and review.compiler is not None
    by_pair = {(c.source, c.destination): c for c in review.changes}
    web = by_pair[(uri("branch-a"), uri("dc-1"))]
    assert web.kind is ChangeKind.CHANGED
    assert web.removed == ("udp/5000-5010 to 10.10.0.0/16", "udp/5000-5010 to fd00:10::/48")
    assert web.added == ("icmp to 10.10.0.0/16", "icmpv6 to fd00:10::/48")
    gained = by_pair[(uri("dc-1"), uri("branch-b"))]
    assert gained == AccessChange(
        source=uri("dc-1"),
        destination=uri("branch-b"),
        kind=ChangeKind.GAINED,
        added=("icmp to 10.2.0.0/24",),
        removed=(),
    )
    assert (uri("branch-a"), uri("vpc-1")) not in by_pair  # ping to vpc-1 stays as it was
    response = review_to_proto(review, applied=True, version=4, affected_sites=4)
    assert {c.kind for c in response.changes} >= {1, 3}


def test_diff_ignores_overlaps_and_reports_losses() -> None:
    inventory = INVENTORY
    broad = compile_all(
        parse_policy(policy_text("  - {from: branch-b, to: dc-1, ports: [tcp, tcp/443]}\n")),
        inventory,
        MONDAY_9,
    )
    narrow = compile_all(
        parse_policy(policy_text("  - {from: branch-b, to: dc-1, ports: tcp}\n")), inventory, MONDAY_9
    )
    assert diff_views(broad, narrow) == ()  # tcp/443 was inside tcp: nothing lost
    assert changed_identities(broad, narrow) == {uri("branch-b"), uri("dc-1")}  # the views still differ
    split = compile_all(
        parse_policy(policy_text("  - {from: branch-b, to: dc-1, ports: [tcp/0-1000, tcp/1001-65535]}\n")),
        inventory,
        MONDAY_9,
    )
    assert diff_views(narrow, split) == () and diff_views(split, narrow) == ()  # ranges that add up
    nothing = compile_all(
        parse_policy("apiVersion: trellis/v1\nkind: Policy\nrules: []\n"), inventory, MONDAY_9
    )
    (lost,) = diff_views(narrow, nothing)
    assert lost == AccessChange(
        source=uri("branch-b"),
        destination=uri("dc-1"),
        kind=ChangeKind.LOST,
        added=(),
        removed=("tcp to 10.10.0.0/16",),
    )
