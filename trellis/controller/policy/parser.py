"""YAML text -> a validated ``Policy``, or every problem with its line and column.

The document is composed into YAML nodes (not constructed into Python objects) so that every
value keeps its place in the text, and so that duplicate keys, which a YAML loader would
silently collapse, are reported. See ``trellis.controller.policy`` for the grammar.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import yaml

from trellis.controller.policy.errors import Issue, PolicyInvalid
from trellis.controller.policy.model import (
    ANY_SERVICE,
    PORT_MAX,
    PROTO_ICMP,
    PROTO_TCP,
    PROTO_UDP,
    PROTOCOL_NAMES,
    AllSites,
    AnyOf,
    IPAddress,
    IPNetwork,
    LabelMatch,
    LabelRequirement,
    Mark,
    Policy,
    PolicyTest,
    Rule,
    Selector,
    Service,
    SiteName,
)
from trellis.controller.policy.timing import ScheduleError, TimeWindow, WeeklySchedule, parse_schedule
from trellis.v1.identity import IdentityError, check_name

API_VERSION = "trellis/v1"
KIND = "Policy"

# Bounds on one document: the text comes from an administrator, but one bad paste must not turn
# compilation of a thousand sites into minutes.
MAX_POLICY_BYTES = 1 << 20
MAX_RULES = 5000
MAX_TESTS = 5000
MAX_LIST_ITEMS = 1000

TOP_KEYS = ("apiVersion", "kind", "metadata", "rules", "tests")
METADATA_KEYS = ("name", "description")
RULE_KEYS = (
    "name",
    "description",
    "from",
    "to",
    "ports",
    "to_prefixes",
    "not_before",
    "not_after",
    "schedule",
)
TEST_KEYS = ("description", "from", "to", "proto", "port", "expect", "at", "src", "dst")

_RULE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9._-]{0,63}$")
_IN_EXPRESSION = re.compile(r"^\s*(\S+)\s+in\s+\[(.*)\]\s*$")
_PORT_SPEC = re.compile(r"^(tcp|udp)/(\d{1,5})(?:-(\d{1,5}))?$")

_T = TypeVar("_T")
_NULL_TAG = "tag:yaml.org,2002:null"


def parse_policy(text: str) -> Policy:
    """Parse and validate a policy document. Raises ``PolicyInvalid`` with every problem found."""
    parser = _Parser()
    policy = parser.parse(text)
    if parser.issues or policy is None:
        raise PolicyInvalid(tuple(parser.issues))
    return policy


def validate_policy(text: str) -> tuple[Issue, ...]:
    """The problems in a document (empty when it is a valid policy)."""
    try:
        parse_policy(text)
    except PolicyInvalid as invalid:
        return invalid.issues
    return ()


def _mark(node: yaml.Node) -> Mark:
    return Mark(line=node.start_mark.line + 1, column=node.start_mark.column + 1)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Parser:
    def __init__(self) -> None:
        self.issues: list[Issue] = []

    # --- reporting ----------------------------------------------------------------------------

    def error(self, where: yaml.Node | Mark, path: str, message: str) -> None:
        mark = where if isinstance(where, Mark) else _mark(where)
        self.issues.append(Issue(line=mark.line, column=mark.column, path=path, message=message))

    # --- generic node readers -----------------------------------------------------------------

    def mapping(self, node: yaml.Node, path: str, allowed: Sequence[str], what: str) -> dict[str, yaml.Node]:
        """The entries of a mapping node, reporting a non-mapping, duplicates and unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"{what} must be a mapping (key: value lines)")
            return {}
        entries: dict[str, yaml.Node] = {}
        first_seen: dict[str, Mark] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, path, "keys must be plain words")
                continue
            key = key_node.value
            if key in entries:
                self.error(key_node, _join(path, key), f"duplicate key {key!r} (first at {first_seen[key]})")
                continue
            if key not in allowed:
                self.error(
                    key_node,
                    _join(path, key),
                    f"unknown key {key!r} in {what} (expected one of {', '.join(allowed)})"
                    f"{_suggest(key, allowed)}",
                )
                continue
            entries[key] = value_node
            first_seen[key] = _mark(key_node)
        return entries

    def text(self, node: yaml.Node, path: str, what: str) -> str | None:
        """A non-empty scalar, as written."""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, path, f"{what} must be a single value, not a {_kind(node)}")
            return None
        if node.tag == _NULL_TAG or node.value == "":
            self.error(node, path, f"{what} is empty")
            return None
        return str(node.value)

    def items(self, node: yaml.Node, path: str, what: str, *, scalar_ok: bool) -> list[tuple[str, yaml.Node]]:
        """The (path, node) items of a sequence; a lone scalar counts as a list of one if allowed."""
        if isinstance(node, yaml.ScalarNode) and scalar_ok and node.tag != _NULL_TAG:
            return [(path, node)]
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, f"{what} must be a list")
            return []
        if not node.value:
            self.error(node, path, f"{what} is an empty list")
            return []
        if len(node.value) > MAX_LIST_ITEMS:
            self.error(node, path, f"{what} has {len(node.value)} items (at most {MAX_LIST_ITEMS})")
            return []
        return [(f"{path}[{i}]", item) for i, item in enumerate(node.value)]

    def each(
        self, node: yaml.Node, path: str, what: str, read: Callable[[str, yaml.Node], _T | None]
    ) -> tuple[_T, ...] | None:
        values: list[_T] = []
        failed = False
        items = self.items(node, path, what, scalar_ok=True)
        for item_path, item in items:
            value = read(item_path, item)
            if value is None:
                failed = True
            else:
                values.append(value)
        return None if failed or not items else tuple(values)

    # --- the document -------------------------------------------------------------------------

    def parse(self, text: str) -> Policy | None:
        if len(text.encode()) > MAX_POLICY_BYTES:
            self.error(Mark(line=1, column=1), "", f"policy is larger than {MAX_POLICY_BYTES} bytes")
            return None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            self.yaml_error(exc)
            return None
        except yaml.YAMLError as exc:  # errors without a position (rare: e.g. several documents)
            self.error(Mark(line=1, column=1), "", f"not valid YAML: {exc}")
            return None
        if root is None:
            self.error(
                Mark(line=1, column=1), "", "empty document: expected a policy (apiVersion, kind, rules)"
            )
            return None
        top = self.mapping(root, "", TOP_KEYS, "a policy")
        if not isinstance(root, yaml.MappingNode):
            return None
        self.header(root, top)
        name, description = self.metadata(top.get("metadata"))
        rules = self.rules(top.get("rules"), root)
        tests = self.tests(top.get("tests"))
        if rules is None or tests is None or self.issues:
            return None
        return Policy(name=name, description=description, rules=rules, tests=tests)

    def yaml_error(self, exc: yaml.MarkedYAMLError) -> None:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "not valid YAML"
        if exc.context == "while scanning an alias" and exc.context_mark is not None:
            mark = exc.context_mark
            problem = "'*' starts a YAML alias here: write \"*\" in quotes to select every site"
        elif exc.context:
            problem = f"{problem} ({exc.context}"
            if exc.context_mark is not None:
                problem += (
                    f" started at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
                )
            problem += ")"
        where = (
            Mark(line=mark.line + 1, column=mark.column + 1) if mark is not None else Mark(line=1, column=1)
        )
        self.error(where, "", f"not valid YAML: {problem}")

    def header(self, root: yaml.Node, top: dict[str, yaml.Node]) -> None:
        for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
            node = top.get(key)
            if node is None:
                self.error(root, key, f"missing {key!r} (it must be {expected!r})")
                continue
            value = self.text(node, key, key)
            if value is not None and value != expected:
                self.error(node, key, f"{key} must be {expected!r}, not {value!r}")

    def metadata(self, node: yaml.Node | None) -> tuple[str, str]:
        if node is None:
            return "", ""
        entries = self.mapping(node, "metadata", METADATA_KEYS, "metadata")
        name = self.text(entries["name"], "metadata.name", "name") if "name" in entries else ""
        description = self.free_text(entries.get("description"), "metadata.description")
        return name or "", description

    def free_text(self, node: yaml.Node | None, path: str) -> str:
        if node is None:
            return ""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, path, "description must be text")
            return ""
        return str(node.value)

    # --- rules --------------------------------------------------------------------------------

    def rules(self, node: yaml.Node | None, root: yaml.Node) -> tuple[Rule, ...] | None:
        if node is None:
            self.error(root, "rules", "missing 'rules' (a list; write 'rules: []' to deny everything)")
            return None
        if isinstance(node, yaml.SequenceNode) and not node.value:
            return ()  # an explicit empty list: default deny everywhere
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, "rules", "rules must be a list")
            return None
        if len(node.value) > MAX_RULES:
            self.error(node, "rules", f"too many rules ({len(node.value)}; at most {MAX_RULES})")
            return None
        rules: list[Rule] = []
        names: dict[str, Mark] = {}
        for index, item in enumerate(node.value):
            rule = self.rule(item, f"rules[{index}]", index)
            if rule is None:
                continue
            if rule.name in names:
                self.error(
                    rule.mark,
                    f"rules[{index}].name",
                    f"duplicate rule name {rule.name!r} (first at {names[rule.name]})",
                )
                continue
            names[rule.name] = rule.mark
            rules.append(rule)
        return tuple(rules)

    def rule(self, node: yaml.Node, path: str, index: int) -> Rule | None:
        entries = self.mapping(node, path, RULE_KEYS, "a rule")
        if not isinstance(node, yaml.MappingNode):
            return None
        before = len(self.issues)
        name = f"rule-{index + 1}"
        name_mark = _mark(node)
        if "name" in entries:
            written = self.text(entries["name"], f"{path}.name", "name")
            if written is not None and not _RULE_NAME.match(written):
                self.error(
                    entries["name"],
                    f"{path}.name",
                    f"invalid rule name {written!r}: use lowercase letters, digits, '.', '_' and '-'",
                )
            elif written is not None:
                name = written
        source = destination = None
        for key in ("from", "to"):
            if key not in entries:
                self.error(
                    node, path, f'rule {name!r} needs {key!r} (a selector: a site name, labels or "*")'
                )
                continue
            selector = self.selector(entries[key], f"{path}.{key}")
            if key == "from":
                source = selector
            else:
                destination = selector
        services: tuple[Service, ...] | None = (ANY_SERVICE,)
        if "ports" in entries:
            services = self.each(entries["ports"], f"{path}.ports", "ports", self.service)
        to_prefixes: tuple[IPNetwork, ...] | None = None
        if "to_prefixes" in entries:
            to_prefixes = self.each(entries["to_prefixes"], f"{path}.to_prefixes", "to_prefixes", self.prefix)
        window = self.window(entries, path)
        description = self.free_text(entries.get("description"), f"{path}.description")
        if len(self.issues) > before or source is None or destination is None or services is None:
            return None
        if window is None:
            return None
        return Rule(
            name=name,
            source=source,
            destination=destination,
            services=services,
            to_prefixes=to_prefixes,
            window=window,
            description=description,
            mark=name_mark,
        )

    def window(self, entries: dict[str, yaml.Node], path: str) -> TimeWindow | None:
        not_before = not_after = None
        schedule: WeeklySchedule | None = None
        ok = True
        if "not_before" in entries:
            not_before = self.instant(f"{path}.not_before", entries["not_before"])
            ok = ok and not_before is not None
        if "not_after" in entries:
            not_after = self.instant(f"{path}.not_after", entries["not_after"])
            ok = ok and not_after is not None
        if "schedule" in entries:
            schedule = self.schedule(f"{path}.schedule", entries["schedule"])
            ok = ok and schedule is not None
        if not_before is not None and not_after is not None and not_after <= not_before:
            self.error(
                entries["not_after"],
                f"{path}.not_after",
                f"not_after must be later than not_before (line {entries['not_before'].start_mark.line + 1})",
            )
            ok = False
        if not ok:
            return None
        return TimeWindow(not_before=not_before, not_after=not_after, schedule=schedule)

    # --- values -------------------------------------------------------------------------------

    def selector(self, node: yaml.Node, path: str) -> Selector | None:
        if isinstance(node, yaml.SequenceNode):
            parts: list[AllSites | SiteName | LabelMatch] = []
            failed = False
            for item_path, item in self.items(node, path, "a selector list", scalar_ok=False):
                if isinstance(item, yaml.SequenceNode):
                    self.error(item, item_path, "a selector list cannot contain another list")
                    failed = True
                    continue
                part = self.selector(item, item_path)
                if part is None or isinstance(part, AnyOf):
                    failed = True
                else:
                    parts.append(part)
            if failed or not parts:
                return None
            return AnyOf(selectors=tuple(parts), mark=_mark(node))
        if isinstance(node, yaml.MappingNode):
            return self.label_match(node, path)
        text = self.text(node, path, "a selector")
        if text is None:
            return None
        if text == "*":
            return AllSites(mark=_mark(node))
        expression = _IN_EXPRESSION.match(text)
        if expression is not None:
            values = [v.strip() for v in expression.group(2).split(",")]
            requirement = self.requirement(node, path, expression.group(1), values)
            if requirement is None:
                return None
            return LabelMatch(requirements=(requirement,), mark=_mark(node))
        try:
            check_name(text)
        except IdentityError:
            self.error(
                node,
                path,
                f"invalid selector {text!r}: expected \"*\", a site name (lowercase letters, digits, '-'), "
                "labels such as {region: eu}, or an expression such as 'role in [branch, dc]'",
            )
            return None
        return SiteName(name=text, mark=_mark(node))

    def label_match(self, node: yaml.MappingNode, path: str) -> LabelMatch | None:
        if not node.value:
            self.error(
                node, path, 'an empty label selector would match every site: write "*" if you mean that'
            )
            return None
        requirements: list[LabelRequirement] = []
        seen: set[str] = set()
        failed = False
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, path, "label keys must be plain words")
                failed = True
                continue
            key = str(key_node.value)
            key_path = _join(path, key)
            if key in seen:
                self.error(key_node, key_path, f"duplicate label {key!r}")
                failed = True
                continue
            seen.add(key)
            if not _LABEL_KEY.match(key):
                self.error(key_node, key_path, f"invalid label key {key!r}")
                failed = True
                continue
            if isinstance(value_node, yaml.SequenceNode):
                values: list[str] = []
                items = self.items(value_node, key_path, f"values of label {key!r}", scalar_ok=False)
                if not items:
                    failed = True
                    continue
                for item_path, item in items:
                    value = self.text(item, item_path, "a label value")
                    if value is not None:
                        values.append(value)
                if len(values) != len(items):
                    failed = True
                    continue
            else:
                value = self.text(value_node, key_path, f"the value of label {key!r}")
                if value is None:
                    failed = True
                    continue
                values = [value]
            requirement = self.requirement(value_node, key_path, key, values)
            if requirement is None:
                failed = True
            else:
                requirements.append(requirement)
        if failed:
            return None
        return LabelMatch(requirements=tuple(requirements), mark=_mark(node))

    def requirement(self, node: yaml.Node, path: str, key: str, values: list[str]) -> LabelRequirement | None:
        if not _LABEL_KEY.match(key):
            self.error(node, path, f"invalid label key {key!r}")
            return None
        if not values or any(v == "" for v in values):
            self.error(node, path, f"label {key!r} needs at least one non-empty value")
            return None
        bad = [v for v in values if not _LABEL_VALUE.match(v)]
        if bad:
            self.error(node, path, f"invalid label value {bad[0]!r} for {key!r}")
            return None
        return LabelRequirement(key=key, values=frozenset(values))

    def service(self, path: str, node: yaml.Node) -> Service | None:
        text = self.text(node, path, "a port")
        if text is None:
            return None
        spec = text.strip().lower()
        if spec in ("any", "icmp", "tcp", "udp"):
            return Service(protocol=spec)
        match = _PORT_SPEC.match(spec)
        if match is None:
            if spec.isdigit():
                hint = f": write tcp/{spec} or udp/{spec}"
            elif spec.startswith("icmp/"):
                hint = ": icmp takes no port"
            else:
                hint = " (expected any, icmp, tcp, udp, tcp/PORT, udp/PORT or a range such as udp/5000-5010)"
            self.error(node, path, f"invalid port {text!r}{hint}")
            return None
        protocol, first, last = match.group(1), int(match.group(2)), int(match.group(3) or match.group(2))
        for number in (first, last):
            if number > PORT_MAX:
                self.error(node, path, f"invalid port {text!r}: {number} is above {PORT_MAX}")
                return None
        if first > last:
            self.error(node, path, f"invalid port range {text!r}: {first} is above {last}")
            return None
        return Service(protocol=protocol, port_start=first, port_end=last)

    def prefix(self, path: str, node: yaml.Node) -> IPNetwork | None:
        text = self.text(node, path, "a prefix")
        if text is None:
            return None
        try:
            return ipaddress.ip_network(text)
        except ValueError as exc:
            self.error(node, path, f"invalid prefix {text!r}: {exc}")
            return None

    def address(self, path: str, node: yaml.Node) -> IPAddress | None:
        text = self.text(node, path, "an address")
        if text is None:
            return None
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            self.error(node, path, f"invalid address {text!r}: expected an IPv4 or IPv6 address")
            return None

    def instant(self, path: str, node: yaml.Node) -> dt.datetime | None:
        text = self.text(node, path, "a time")
        if text is None:
            return None
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            self.error(node, path, f"invalid time {text!r}: expected e.g. 2025-06-01T18:00:00Z")
            return None
        if value.tzinfo is None:
            self.error(
                node, path, f"time {text!r} needs a time of day and a timezone, e.g. 2025-06-01T18:00:00Z"
            )
            return None
        return value.astimezone(dt.UTC)

    def schedule(self, path: str, node: yaml.Node) -> WeeklySchedule | None:
        text = self.text(node, path, "a schedule")
        if text is None:
            return None
        try:
            return parse_schedule(text)
        except ScheduleError as exc:
            self.error(node, path, f"invalid schedule: {exc}")
            return None

    # --- tests --------------------------------------------------------------------------------

    def tests(self, node: yaml.Node | None) -> tuple[PolicyTest, ...] | None:
        if node is None:
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, "tests", "tests must be a list")
            return None
        if len(node.value) > MAX_TESTS:
            self.error(node, "tests", f"too many tests ({len(node.value)}; at most {MAX_TESTS})")
            return None
        tests = [self.test(item, f"tests[{index}]", index) for index, item in enumerate(node.value)]
        if any(test is None for test in tests):
            return None
        return tuple(test for test in tests if test is not None)

    def test(self, node: yaml.Node, path: str, index: int) -> PolicyTest | None:
        entries = self.mapping(node, path, TEST_KEYS, "a test")
        if not isinstance(node, yaml.MappingNode):
            return None
        before = len(self.issues)
        ends: dict[str, str] = {}
        for key in ("from", "to", "proto", "expect"):
            if key not in entries:
                self.error(node, path, f"a test needs {key!r}")
                continue
            value = self.text(entries[key], f"{path}.{key}", key)
            if value is not None:
                ends[key] = value
        for key in ("from", "to"):
            if key in ends and not ends[key].startswith("spiffe://"):
                try:
                    check_name(ends[key])
                except IdentityError:
                    self.error(entries[key], f"{path}.{key}", f"{ends[key]!r} is not a site name or identity")
        protocol = self.test_protocol(entries.get("proto"), ends.get("proto"), f"{path}.proto")
        port = self.test_port(entries, protocol, path)
        expect = ends.get("expect")
        if expect is not None and expect not in ("allow", "deny"):
            self.error(entries["expect"], f"{path}.expect", f"expect must be allow or deny, not {expect!r}")
        at = self.instant(f"{path}.at", entries["at"]) if "at" in entries else None
        src = self.address(f"{path}.src", entries["src"]) if "src" in entries else None
        dst = self.address(f"{path}.dst", entries["dst"]) if "dst" in entries else None
        if len(self.issues) > before or protocol is None:
            return None
        return PolicyTest(
            index=index,
            source=ends["from"],
            destination=ends["to"],
            protocol=protocol,
            port=port,
            expect_allow=expect == "allow",
            at=at,
            src_address=src,
            dst_address=dst,
            mark=_mark(node),
        )

    def test_protocol(self, node: yaml.Node | None, text: str | None, path: str) -> int | None:
        if node is None or text is None:
            return None
        name = text.lower()
        if name in PROTOCOL_NAMES:
            return PROTO_ICMP if name == "icmpv6" else PROTOCOL_NAMES[name]
        if name.isdigit() and int(name) <= 255:
            return int(name)
        self.error(
            node, path, f"invalid proto {text!r}: expected tcp, udp, icmp or an IP protocol number 0-255"
        )
        return None

    def test_port(self, entries: dict[str, yaml.Node], protocol: int | None, path: str) -> int | None:
        node = entries.get("port")
        if protocol in (PROTO_TCP, PROTO_UDP):
            if node is None:
                self.error(entries["proto"], f"{path}.proto", "a tcp or udp test needs a 'port'")
                return None
            text = self.text(node, f"{path}.port", "port")
            if text is None:
                return None
            if not text.isdigit() or int(text) > PORT_MAX:
                self.error(node, f"{path}.port", f"invalid port {text!r}: expected a number 0-{PORT_MAX}")
                return None
            return int(text)
        if node is not None and protocol is not None:
            self.error(node, f"{path}.port", "only tcp and udp tests take a port")
        return None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.SequenceNode):
        return "list"
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    return "value"
