"""The policy language: every construct, and every error with its line and column."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest

from tests.unit.policy.policy_helpers import policy_text
from trellis.controller.policy import Issue, PolicyInvalid, parse_policy, validate_policy
from trellis.controller.policy.model import (
    AllSites,
    AnyOf,
    LabelMatch,
    LabelRequirement,
    Service,
    SiteName,
)
from trellis.controller.policy.parser import MAX_POLICY_BYTES

FULL = """\
apiVersion: trellis/v1
kind: Policy
metadata:
  name: corp-mesh
  description: The corporate mesh.
rules:
  - name: branches-to-dc
    description: Branches reach the data centre's web front.
    from: {role: branch}
    to: "role in [dc, cloud]"
    ports: [tcp/443, udp/5000-5010, icmp]
    to_prefixes: [10.10.1.0/24, "fd00:10:1::/64"]
    not_before: 2025-06-01T00:00:00Z
    not_after: 2025-07-01T02:00:00+02:00
    schedule: mon-fri 08:00-18:00
  - from: "*"
    to: [dc-1, {region: eu, role: [dc, branch]}]
tests:
  - {from: branch-a, to: dc-1, proto: tcp, port: 443, expect: allow}
  - from: spiffe://example.org/site/dc-1
    to: branch-a
    proto: icmp
    expect: deny
    at: 2025-06-02T09:00:00Z
    src: 10.10.0.1
    dst: fd00:1::1
    description: no pings back
  - {from: branch-a, to: dc-1, proto: 47, expect: allow}
  - {from: branch-a, to: dc-1, proto: icmpv6, expect: allow}
"""


def test_full_document() -> None:
    policy = parse_policy(FULL)
    assert policy.name == "corp-mesh"
    assert policy.description == "The corporate mesh."
    first, second = policy.rules
    assert first.name == "branches-to-dc"
    assert first.description.startswith("Branches")
    assert first.source == LabelMatch(
        requirements=(LabelRequirement(key="role", values=frozenset({"branch"})),)
    )
    assert first.destination == LabelMatch(
        requirements=(LabelRequirement(key="role", values=frozenset({"dc", "cloud"})),)
    )
    assert first.services == (
        Service(protocol="tcp", port_start=443, port_end=443),
        Service(protocol="udp", port_start=5000, port_end=5010),
        Service(protocol="icmp"),
    )
    assert first.to_prefixes == (ipaddress.ip_network("10.10.1.0/24"), ipaddress.ip_network("fd00:10:1::/64"))
    assert first.window.not_before == dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    assert first.window.not_after == dt.datetime(2025, 7, 1, 0, 0, tzinfo=dt.UTC)  # +02:00 converted
    assert first.window.schedule is not None and first.window.schedule.text == "mon-fri 08:00-18:00"
    assert (first.mark.line, first.mark.column) == (7, 5)
    # Defaults: the name from the position, any service, no narrowing, no time limit.
    assert second.name == "rule-2"
    assert second.source == AllSites()
    assert second.destination == AnyOf(
        selectors=(
            SiteName(name="dc-1"),
            LabelMatch(
                requirements=(
                    LabelRequirement(key="region", values=frozenset({"eu"})),
                    LabelRequirement(key="role", values=frozenset({"dc", "branch"})),
                )
            ),
        )
    )
    assert second.services == (Service(protocol="any"),)
    assert second.to_prefixes is None
    assert second.window.unconditional
    t1, t2, t3, t4 = policy.tests
    assert (t1.source, t1.destination, t1.protocol, t1.port, t1.expect_allow, t1.at) == (
        "branch-a",
        "dc-1",
        6,
        443,
        True,
        None,
    )
    assert (t1.mark.line, t1.mark.column) == (19, 5)
    assert t2.source == "spiffe://example.org/site/dc-1"
    assert (t2.protocol, t2.port, t2.expect_allow) == (1, None, False)
    assert t2.at == dt.datetime(2025, 6, 2, 9, tzinfo=dt.UTC)
    assert t2.src_address == ipaddress.ip_address("10.10.0.1")
    assert t2.dst_address == ipaddress.ip_address("fd00:1::1")
    assert t3.protocol == 47
    assert t4.protocol == 1  # icmpv6 is the ICMP of IPv6: family follows the addresses
    assert validate_policy(FULL) == ()


@pytest.mark.parametrize(
    ("written", "services"),
    [
        ("tcp/22", (Service(protocol="tcp", port_start=22, port_end=22),)),
        ("udp", (Service(protocol="udp"),)),
        ("TCP", (Service(protocol="tcp"),)),
        ("any", (Service(protocol="any"),)),
        ("[icmp, udp/0-65535]", (Service(protocol="icmp"), Service(protocol="udp"))),
    ],
)
def test_ports_forms(written: str, services: tuple[Service, ...]) -> None:
    policy = parse_policy(policy_text(f"  - {{from: a, to: b, ports: {written}}}\n"))
    assert policy.rules[0].services == services


def test_selector_forms() -> None:
    policy = parse_policy(
        policy_text(
            '  - {from: "*", to: branch-a}\n'
            "  - {from: {region: eu}, to: 'site in [x, y]'}\n"
            "  - from: [branch-a, {role: dc}, '*']\n"
            "    to: {region: [eu, us], role: branch}\n"
        )
    )
    r1, r2, r3 = policy.rules
    assert (r1.source, r1.destination) == (AllSites(), SiteName(name="branch-a"))
    assert r2.destination == LabelMatch(
        requirements=(LabelRequirement(key="site", values=frozenset({"x", "y"})),)
    )
    assert isinstance(r3.source, AnyOf) and len(r3.source.selectors) == 3
    assert str(r3.destination) == "{region in [eu, us], role=branch}"


def test_empty_rules_denies_everything() -> None:
    assert parse_policy("apiVersion: trellis/v1\nkind: Policy\nrules: []\n").rules == ()


def test_time_offsets_become_utc() -> None:
    policy = parse_policy(policy_text("  - {from: a, to: b, not_after: '2025-06-01T12:00:00-05:00'}\n"))
    assert policy.rules[0].window.not_after == dt.datetime(2025, 6, 1, 17, tzinfo=dt.UTC)


# --- errors ---------------------------------------------------------------------------------------


def problems(text: str) -> tuple[Issue, ...]:
    with pytest.raises(PolicyInvalid) as caught:
        parse_policy(text)
    assert str(caught.value) == "\n".join(str(i) for i in caught.value.issues)
    return caught.value.issues


def only(text: str) -> Issue:
    issues = problems(text)
    assert len(issues) == 1, issues
    return issues[0]


def expect(issue: Issue, line: int, column: int, path: str, fragment: str) -> None:
    assert (issue.line, issue.column, issue.path) == (line, column, path), issue
    assert fragment in issue.message, issue.message
    assert not issue.warning


def test_yaml_syntax_error_names_line_and_column() -> None:
    issue = only("apiVersion: trellis/v1\nkind: Policy\nrules:\n  - {from: a, to: [b\n")
    expect(issue, 5, 1, "", "not valid YAML")
    assert "started at line 4, column 19" in issue.message


def test_bare_star_gets_a_hint() -> None:
    issue = only(policy_text("  - from: *\n    to: b\n"))
    expect(issue, 4, 11, "", 'write "*" in quotes')


def test_empty_document() -> None:
    expect(only(""), 1, 1, "", "empty document")


def test_root_must_be_a_mapping() -> None:
    expect(only("- a\n- b\n"), 1, 1, "", "a policy must be a mapping")


def test_header_errors() -> None:
    issues = problems("apiVersion: trellis/v2\nkind: Pol\nrules: []\n")
    expect(issues[0], 1, 13, "apiVersion", "apiVersion must be 'trellis/v1', not 'trellis/v2'")
    expect(issues[1], 2, 7, "kind", "kind must be 'Policy', not 'Pol'")
    issues = problems("rules: []\n")
    expect(issues[0], 1, 1, "apiVersion", "missing 'apiVersion'")
    expect(issues[1], 1, 1, "kind", "missing 'kind'")


def test_unknown_key_suggests_the_right_one() -> None:
    issues = problems("apiVersion: trellis/v1\nkind: Policy\nrule: []\n")
    expect(issues[0], 3, 1, "rule", "unknown key 'rule' in a policy")
    assert "did you mean 'rules'?" in issues[0].message
    expect(issues[1], 1, 1, "rules", "missing 'rules'")


def test_duplicate_key() -> None:
    issue = only(policy_text("  - from: a\n    to: b\n    from: c\n"))
    expect(issue, 6, 5, "rules[0].from", "duplicate key 'from' (first at line 4, column 5)")


def test_rules_must_be_a_list_of_mappings() -> None:
    expect(only("apiVersion: trellis/v1\nkind: Policy\nrules: all\n"), 3, 8, "rules", "rules must be a list")
    expect(only(policy_text("  - just-a-word\n")), 4, 5, "rules[0]", "a rule must be a mapping")


def test_unknown_rule_key() -> None:
    issue = only(policy_text("  - {from: a, to: b, port: tcp/22}\n"))
    expect(issue, 4, 22, "rules[0].port", "unknown key 'port' in a rule")
    assert "did you mean 'ports'?" in issue.message


def test_rule_names() -> None:
    line = "  - {name: Web_Rule, from: a, to: b}"
    expect(
        only(policy_text(line + "\n")),
        4,
        column_of(line, "Web_"),
        "rules[0].name",
        "invalid rule name 'Web_Rule'",
    )
    issue = only(policy_text("  - {name: web, from: a, to: b}\n  - {name: web, from: b, to: a}\n"))
    expect(issue, 5, 5, "rules[1].name", "duplicate rule name 'web' (first at line 4, column 5)")


def test_missing_ends() -> None:
    issues = problems(policy_text("  - name: lonely\n    ports: tcp/22\n"))
    expect(issues[0], 4, 5, "rules[0]", "rule 'lonely' needs 'from'")
    expect(issues[1], 4, 5, "rules[0]", "rule 'lonely' needs 'to'")


def column_of(line: str, token: str) -> int:
    """1-based column of ``token`` in ``line``: where an error about it must point."""
    assert token in line, (token, line)
    return line.index(token) + 1


@pytest.mark.parametrize(
    ("selector", "token", "path", "fragment"),
    [
        ("Branch-A", "Branch-A", "rules[0].to", "invalid selector 'Branch-A'"),
        ("{}", "{}", "rules[0].to", "an empty label selector would match every site"),
        ("[]", "[]", "rules[0].to", "a selector list is an empty list"),
        ("[a, [b]]", "[b]", "rules[0].to[1]", "a selector list cannot contain another list"),
        ("{role: []}", "[]", "rules[0].to.role", "values of label 'role' is an empty list"),
        ("{role: [x, ~]}", "~", "rules[0].to.role[1]", "a label value is empty"),
        ("{role: 'x y'}", "'x y'", "rules[0].to.role", "invalid label value 'x y' for 'role'"),
        ("'role in [a, ]'", "'role", "rules[0].to", "label 'role' needs at least one non-empty value"),
        ("{role: {x: y}}", "{x", "rules[0].to.role", "the value of label 'role' must be a single value"),
        ("{'a b': x}", "'a b'", "rules[0].to.a b", "invalid label key 'a b'"),
        ("{role: a, role: b}", "role: b", "rules[0].to.role", "duplicate label 'role'"),
        ("~", "~", "rules[0].to", "a selector is empty"),
    ],
)
def test_selector_errors(selector: str, token: str, path: str, fragment: str) -> None:
    line = f"  - {{to: {selector}, from: a}}"
    expect(only(policy_text(line + "\n")), 4, column_of(line, token), path, fragment)


@pytest.mark.parametrize(
    ("ports", "token", "path", "fragment"),
    [
        ("[sctp/80]", "sctp", "rules[0].ports[0]", "invalid port 'sctp/80' (expected any, icmp, tcp, udp"),
        ("443", "443", "rules[0].ports", "invalid port '443': write tcp/443 or udp/443"),
        ("icmp/8", "icmp/8", "rules[0].ports", "icmp takes no port"),
        ("tcp/70000", "tcp/", "rules[0].ports", "70000 is above 65535"),
        ("udp/10-5", "udp/", "rules[0].ports", "invalid port range 'udp/10-5': 10 is above 5"),
        ("[]", "[]", "rules[0].ports", "ports is an empty list"),
        ("~", "~", "rules[0].ports", "ports must be a list"),
        ("[tcp/22, {a: b}]", "{a", "rules[0].ports[1]", "a port must be a single value, not a mapping"),
    ],
)
def test_port_errors(ports: str, token: str, path: str, fragment: str) -> None:
    line = f"  - {{from: a, to: b, ports: {ports}}}"
    expect(only(policy_text(line + "\n")), 4, column_of(line, token), path, fragment)


def test_prefix_errors() -> None:
    line = "  - {from: a, to: b, to_prefixes: [10.0.0.1/24, nonsense]}"
    issues = problems(policy_text(line + "\n"))
    expect(
        issues[0],
        4,
        column_of(line, "10.0.0.1"),
        "rules[0].to_prefixes[0]",
        "invalid prefix '10.0.0.1/24': 10.0.0.1/24 has host bits set",
    )
    expect(issues[1], 4, column_of(line, "nonsense"), "rules[0].to_prefixes[1]", "invalid prefix 'nonsense'")


@pytest.mark.parametrize(
    ("field", "fragment"),
    [
        ("not_before: tomorrow", "invalid time 'tomorrow': expected e.g. 2025-06-01T18:00:00Z"),
        ("not_after: 2025-06-01T18:00:00", "needs a time of day and a timezone"),
        ("not_after: 2025-06-01", "needs a time of day and a timezone"),
    ],
)
def test_time_errors(field: str, fragment: str) -> None:
    key, value = field.split(": ")
    line = f"  - {{from: a, to: b, {field}}}"
    expect(only(policy_text(line + "\n")), 4, column_of(line, value), f"rules[0].{key}", fragment)


def test_window_must_not_be_empty() -> None:
    issue = only(
        policy_text(
            "  - from: a\n    to: b\n"
            "    not_before: 2025-06-02T00:00:00Z\n    not_after: 2025-06-01T00:00:00Z\n"
        )
    )
    expect(issue, 7, 16, "rules[0].not_after", "not_after must be later than not_before (line 6)")


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [
        ("monday 08:00-18:00", "unknown day 'monday'"),
        ("mon-fri 8:00-18:00", "expected a time range HH:MM-HH:MM (UTC), got '8:00-18:00'"),
        ("mon-fri 08:00-08:00", "empty window '08:00-08:00'"),
        ("mon-fri 08:60-09:00", "invalid time 08:60"),
        ("mon-fri 24:30-09:00", "invalid time 24:30"),
        ("mon-fri", "expected 'DAYS HH:MM-HH:MM'"),
        ("' '", "empty schedule"),
    ],
)
def test_schedule_errors(schedule: str, fragment: str) -> None:
    line = f"  - {{from: a, to: b, schedule: {schedule}}}"
    issue = only(policy_text(line + "\n"))
    expect(issue, 4, column_of(line, schedule), "rules[0].schedule", f"invalid schedule: {fragment}")


@pytest.mark.parametrize(
    ("test", "token", "path", "fragment"),
    [
        ("{to: b, proto: tcp, port: 1, expect: allow}", "{", "tests[0]", "a test needs 'from'"),
        ("{from: a, to: b, proto: gre, expect: allow}", "gre", "tests[0].proto", "invalid proto 'gre'"),
        ("{from: a, to: b, proto: 256, expect: allow}", "256", "tests[0].proto", "invalid proto '256'"),
        (
            "{from: a, to: b, proto: tcp, expect: allow}",
            "tcp",
            "tests[0].proto",
            "a tcp or udp test needs a 'port'",
        ),
        (
            "{from: a, to: b, proto: icmp, port: 3, expect: deny}",
            "3,",
            "tests[0].port",
            "only tcp and udp tests",
        ),
        ("{from: a, to: b, proto: udp, port: -1, expect: deny}", "-1", "tests[0].port", "invalid port '-1'"),
        ("{from: a, to: b, proto: udp, port: 65536, expect: deny}", "65536", "tests[0].port", "invalid port"),
        (
            "{from: a, to: b, proto: icmp, expect: maybe}",
            "maybe",
            "tests[0].expect",
            "expect must be allow or deny",
        ),
        (
            "{from: a, to: b, proto: icmp, expect: deny, at: 2025-01-01}",
            "2025",
            "tests[0].at",
            "needs a time of day",
        ),
        (
            "{from: a, to: b, proto: icmp, expect: deny, dst: 10.0.0}",
            "10.0.0",
            "tests[0].dst",
            "invalid address",
        ),
        ("{from: A!, to: b, proto: icmp, expect: deny}", "A!", "tests[0].from", "'A!' is not a site name"),
        ("{from: a, to: b, proto: icmp, expect: deny, via: c}", "via", "tests[0].via", "unknown key 'via'"),
    ],
)
def test_test_errors(test: str, token: str, path: str, fragment: str) -> None:
    text = "apiVersion: trellis/v1\nkind: Policy\nrules: []\ntests:\n" + f"  - {test}\n"
    expect(only(text), 5, column_of(f"  - {test}", token), path, fragment)


def test_tests_must_be_a_list() -> None:
    text = "apiVersion: trellis/v1\nkind: Policy\nrules: []\ntests: {from: a}\n"
    expect(only(text), 4, 8, "tests", "tests must be a list")


def test_metadata_errors() -> None:
    text = "apiVersion: trellis/v1\nkind: Policy\nmetadata: [a]\nrules: []\n"
    expect(only(text), 3, 11, "metadata", "metadata must be a mapping")
    text = "apiVersion: trellis/v1\nkind: Policy\nmetadata: {description: [a]}\nrules: []\n"
    expect(only(text), 3, 25, "metadata.description", "description must be text")


def test_every_problem_is_reported_at_once() -> None:
    text = policy_text(
        "  - {from: a, to: b, ports: tcp/99999}\n"
        "  - {from: a, to: b, schedule: someday}\n"
        "  - {from: a, to: b, not_before: never}\n"
    )
    assert [issue.line for issue in problems(text)] == [4, 5, 6]


def test_oversized_document_is_refused_before_parsing() -> None:
    expect(only("#" * (MAX_POLICY_BYTES + 1)), 1, 1, "", f"larger than {MAX_POLICY_BYTES} bytes")


def test_issue_text_reads_well() -> None:
    issue = only(policy_text("  - {from: a, to: b, ports: tcp/99999}\n"))
    assert str(issue) == "line 4, column 29: rules[0].ports: invalid port 'tcp/99999': 99999 is above 65535"
