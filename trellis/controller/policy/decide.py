"""Answering one question: is this flow allowed, and by which rule? Also the document's tests.

``check`` evaluates the policy directly (no compiled views); the property tests hold the agent's
packet filter, built from compiled views, to the same answers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from trellis.controller.policy.compiler import narrow
from trellis.controller.policy.errors import UnknownSite
from trellis.controller.policy.model import (
    PORT_MAX,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    PROTOCOL_NAMES,
    Inventory,
    IPAddress,
    IPNetwork,
    Mark,
    Policy,
    PolicyTest,
    Site,
)
from trellis.controller.policy.selection import SiteIndex
from trellis.controller.policy.timing import format_instant
from trellis.controller.policy.view import collapse, protocol_text


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str | None  # the first rule (in policy order) that allows the flow; None: default deny
    reason: str  # a sentence
    rule_mark: Mark | None = None
    # Where the flow may go (the allowing rules' reach in the destination), when allowed.
    dst_prefixes: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyTestResult:
    index: int
    mark: Mark
    flow: str
    passed: bool
    expected_allow: bool
    decision: Decision | None  # None when the test could not be evaluated (e.g. an unknown site)
    message: str  # why it failed, naming the test's line and column ("" when it passed)


def _protocol_number(protocol: int | str) -> tuple[int, bool]:
    """(IANA number, is the family-neutral name 'icmp')."""
    if isinstance(protocol, int):
        if not 0 <= protocol <= 255:
            raise ValueError(f"IP protocol {protocol} is not 0-255")
        return protocol, False
    name = protocol.strip().lower()
    if name == "icmp":
        return PROTO_ICMP, True
    if name in PROTOCOL_NAMES:
        return PROTOCOL_NAMES[name], False
    if name.isdigit() and int(name) <= 255:
        return int(name), False
    raise ValueError(f"unknown protocol {protocol!r}: expected tcp, udp, icmp or a number 0-255")


def _address(value: IPAddress | str | None) -> IPAddress | None:
    if value is None or isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    return ipaddress.ip_address(value)


def check(
    policy: Policy,
    inventory: Inventory,
    *,
    source: str,
    destination: str,
    protocol: int | str,
    port: int | None = None,
    at: dt.datetime,
    src_address: IPAddress | str | None = None,
    dst_address: IPAddress | str | None = None,
    index: SiteIndex | None = None,
) -> Decision:
    """May ``source`` open this flow to ``destination`` at ``at``?

    ``source``/``destination`` are site names or identities (UnknownSite if absent); ``protocol``
    is tcp, udp, icmp (ICMP or ICMPv6 by address family), or an IP protocol number; ``port`` the
    destination port, required for tcp and udp. Without addresses, the answer is "allowed" when
    the flow is allowed to some address of the destination (``dst_prefixes`` says which).
    ``index`` may be passed to reuse selector results across many calls on one inventory.
    """
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    number, icmp_name = _protocol_number(protocol)
    if number in (PROTO_TCP, PROTO_UDP):
        if port is None or not 0 <= port <= PORT_MAX:
            raise ValueError(f"a {protocol_text(number)} check needs a destination port 0-{PORT_MAX}")
    else:
        port = None
    src_site, dst_site = inventory.find(source), inventory.find(destination)
    if src_site is None:
        raise UnknownSite(source)
    if dst_site is None:
        raise UnknownSite(destination)
    src_ip, dst_ip = _address(src_address), _address(dst_address)
    flow = _describe_flow(
        src_site, dst_site, number=number, port=port, icmp_name=icmp_name, dst_ip=dst_ip, at=at
    )
    if src_site.identity == dst_site.identity:
        return Decision(allowed=False, rule=None, reason=f"{flow}: source and destination are the same site")
    for ip, site in ((src_ip, src_site), (dst_ip, dst_site)):
        if ip is not None and not any(ip.version == p.version and ip in p for p in site.subnets):
            return Decision(
                allowed=False, rule=None, reason=f"{flow}: {ip} is not in the subnets of site {site.name}"
            )
    versions = {p.version for p in src_site.subnets} & {p.version for p in dst_site.subnets}
    for ip in (src_ip, dst_ip):
        if ip is not None:
            versions &= {ip.version}
    index = index or SiteIndex(inventory)
    allowed_by: list[tuple[str, Mark]] = []
    reach: list[IPNetwork] = []
    near_miss = ""
    for rule in policy.rules:
        if src_site.identity not in index.select(rule.source):
            continue
        if dst_site.identity not in index.select(rule.destination):
            continue
        admitted = {
            v
            for v in versions
            if any(s.admits(_family_protocol(number, icmp_name, v), port, v) for s in rule.services)
        }
        if not admitted:
            continue
        targets = [p for p in narrow(dst_site.subnets, rule.to_prefixes) if p.version in admitted]
        if dst_ip is not None:
            targets = [p for p in targets if dst_ip in p]
        if not targets:
            if not near_miss and rule.to_prefixes is not None:
                allowed = ", ".join(str(p) for p in rule.to_prefixes)
                near_miss = f"rule {rule.name!r} ({rule.mark}) allows it only to {allowed}"
            continue
        if not rule.window.active(at):
            if not near_miss:
                near_miss = (
                    f"rule {rule.name!r} ({rule.mark}) would allow it but is not in effect then "
                    f"({rule.window.describe()})"
                )
            continue
        allowed_by.append((rule.name, rule.mark))
        reach.extend(targets)
    if allowed_by:
        name, mark = allowed_by[0]
        return Decision(
            allowed=True,
            rule=name,
            reason=f"rule {name!r} ({mark}) allows {flow}",
            rule_mark=mark,
            dst_prefixes=collapse(reach),
        )
    why = f"no rule allows {flow}"
    return Decision(
        allowed=False, rule=None, reason=f"{why}: {near_miss}" if near_miss else f"{why} (default deny)"
    )


def _family_protocol(number: int, icmp_name: bool, version: int) -> int:
    if icmp_name:
        return PROTO_ICMPV6 if version == 6 else PROTO_ICMP
    return number


def _describe_flow(
    src: Site,
    dst: Site,
    *,
    number: int,
    port: int | None,
    icmp_name: bool,
    dst_ip: IPAddress | None,
    at: dt.datetime,
) -> str:
    service = (
        "icmp" if icmp_name else protocol_text(number, port or 0, port if port is not None else PORT_MAX)
    )
    to = f" to {dst_ip}" if dst_ip is not None else ""
    return f"{src.name} -> {dst.name} {service}{to} at {format_instant(at)}"


def run_policy_tests(policy: Policy, inventory: Inventory, now: dt.datetime) -> tuple[PolicyTestResult, ...]:
    """Run the document's ``tests:``; a test without ``at`` is evaluated at ``now``.

    A policy with a failed test must be refused; each failure's ``message`` names the test's
    line and column, what was expected and what the policy decided.
    """
    index = SiteIndex(inventory)
    return tuple(_run_one(policy, inventory, index, test, now) for test in policy.tests)


def _run_one(
    policy: Policy, inventory: Inventory, index: SiteIndex, test: PolicyTest, now: dt.datetime
) -> PolicyTestResult:
    at = test.at or now
    expected = "allow" if test.expect_allow else "deny"
    service = protocol_text(test.protocol, test.port or 0, test.port if test.port is not None else PORT_MAX)
    flow = f"{test.source} -> {test.destination} {service}"
    where = f"test {test.index + 1} ({test.mark})"
    protocol: int | str = "icmp" if test.protocol == PROTO_ICMP else test.protocol
    try:
        decision = check(
            policy,
            inventory,
            source=test.source,
            destination=test.destination,
            protocol=protocol,
            port=test.port,
            at=at,
            src_address=test.src_address,
            dst_address=test.dst_address,
            index=index,
        )
    except UnknownSite as unknown:
        return PolicyTestResult(
            index=test.index,
            mark=test.mark,
            flow=flow,
            passed=False,
            expected_allow=test.expect_allow,
            decision=None,
            message=f"{where}: expected {expected} for {flow}, but {unknown} is not in the inventory",
        )
    passed = decision.allowed == test.expect_allow
    message = ""
    if not passed:
        outcome = decision.reason if decision.allowed else f"it is denied: {decision.reason}"
        message = f"{where}: expected {expected}, but {outcome}"
    return PolicyTestResult(
        index=test.index,
        mark=test.mark,
        flow=flow,
        passed=passed,
        expected_allow=test.expect_allow,
        decision=decision,
        message=message,
    )
