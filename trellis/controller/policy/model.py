"""The validated policy model and the inventory of sites it is compiled against.

Everything here is immutable. A ``Policy`` only comes out of ``parse_policy`` (which checks it);
an ``Inventory`` is built by the caller from the store with ``Site.build``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from trellis.controller.policy.timing import TimeWindow
from trellis.v1.identity import Identity, IdentityKind

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA protocol numbers.
PROTO_ANY = 0
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PORT_MAX = 65535

PROTOCOL_NAMES = {"tcp": PROTO_TCP, "udp": PROTO_UDP, "icmp": PROTO_ICMP, "icmpv6": PROTO_ICMPV6}


@dataclass(frozen=True, slots=True)
class Mark:
    """A place in the policy text, 1-based (line 0: no place, e.g. an empty document)."""

    line: int
    column: int

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}"


NO_MARK = Mark(line=0, column=0)


# --- selectors --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllSites:
    """``*``: every site."""

    mark: Mark = field(default=NO_MARK, compare=False)

    def __str__(self) -> str:
        return "*"


@dataclass(frozen=True, slots=True)
class SiteName:
    """One site, by name."""

    name: str
    mark: Mark = field(default=NO_MARK, compare=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    """``key: value`` (one value) or ``key in [v1, v2]``."""

    key: str
    values: frozenset[str]

    def __str__(self) -> str:
        if len(self.values) == 1:
            return f"{self.key}={next(iter(self.values))}"
        return f"{self.key} in [{', '.join(sorted(self.values))}]"


@dataclass(frozen=True, slots=True)
class LabelMatch:
    """Sites whose labels meet every requirement."""

    requirements: tuple[LabelRequirement, ...]
    mark: Mark = field(default=NO_MARK, compare=False)

    def __str__(self) -> str:
        return "{" + ", ".join(str(r) for r in self.requirements) + "}"


@dataclass(frozen=True, slots=True)
class AnyOf:
    """A YAML list of selectors: sites that any of them picks."""

    selectors: tuple[AllSites | SiteName | LabelMatch, ...]
    mark: Mark = field(default=NO_MARK, compare=False)

    def __str__(self) -> str:
        return "[" + ", ".join(str(s) for s in self.selectors) + "]"


Selector = AllSites | SiteName | LabelMatch | AnyOf


# --- services ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Service:
    """``any``, ``icmp`` (ICMP and ICMPv6), ``tcp``/``udp`` with an optional destination port range."""

    protocol: str  # "any" | "tcp" | "udp" | "icmp"
    port_start: int = 0
    port_end: int = PORT_MAX

    @property
    def all_ports(self) -> bool:
        return self.port_start == 0 and self.port_end == PORT_MAX

    def __str__(self) -> str:
        if self.protocol in ("any", "icmp") or self.all_ports:
            return self.protocol
        if self.port_start == self.port_end:
            return f"{self.protocol}/{self.port_start}"
        return f"{self.protocol}/{self.port_start}-{self.port_end}"

    def admits(self, protocol: int, port: int | None, version: int | None = None) -> bool:
        """Does this service allow a flow of this IP protocol to this destination port?

        ``version`` is the IP version of the flow (None: either); ``icmp`` means ICMP over IPv4
        and ICMPv6 over IPv6, nothing else.
        """
        if self.protocol == "any":
            return True
        if self.protocol == "icmp":
            return (protocol == PROTO_ICMP and version != 6) or (protocol == PROTO_ICMPV6 and version != 4)
        if protocol != PROTOCOL_NAMES[self.protocol]:
            return False
        return port is not None and self.port_start <= port <= self.port_end


ANY_SERVICE = Service(protocol="any")


# --- rules, tests, policy ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """Allow flows opened by sites picked by ``source`` towards sites picked by ``destination``."""

    name: str
    source: Selector
    destination: Selector
    services: tuple[Service, ...] = (ANY_SERVICE,)
    # Destination addresses narrowed to these prefixes (within the destination's subnets).
    to_prefixes: tuple[IPNetwork, ...] | None = None
    window: TimeWindow = field(default_factory=TimeWindow)
    description: str = ""
    mark: Mark = field(default=NO_MARK, compare=False)


@dataclass(frozen=True, slots=True)
class PolicyTest:
    """One expectation from the policy's ``tests:`` list."""

    index: int
    source: str  # site name or identity URI
    destination: str
    protocol: int  # IANA number; PROTO_ICMP stands for ICMP or ICMPv6 by address family
    port: int | None
    expect_allow: bool
    at: dt.datetime | None = None
    src_address: IPAddress | None = None
    dst_address: IPAddress | None = None
    mark: Mark = field(default=NO_MARK, compare=False)


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]
    tests: tuple[PolicyTest, ...] = ()
    description: str = ""

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


# --- inventory --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    """A site as the policy engine sees it. Build with ``Site.build``."""

    name: str
    identity: str
    labels: Mapping[str, str]
    subnets: tuple[IPNetwork, ...]

    @classmethod
    def build(
        cls,
        *,
        name: str,
        identity: str,
        labels: Mapping[str, str] | None = None,
        subnets: Iterable[str | IPNetwork] = (),
    ) -> Site:
        """Check and normalise: the identity must be spiffe://DOMAIN/site/NAME; prefixes strict CIDR.

        Raises ValueError (IdentityError is one) on bad input.
        """
        parsed = Identity.parse(identity)
        if parsed.kind is not IdentityKind.SITE or parsed.name != name:
            raise ValueError(f"identity {identity!r} is not the identity of site {name!r}")
        prefixes = tuple(ipaddress.ip_network(s) for s in subnets)
        return cls(
            name=name,
            identity=identity,
            labels=MappingProxyType(dict(labels or {})),
            subnets=prefixes,
        )


class Inventory:
    """The sites a policy is compiled against, by name and by identity."""

    __slots__ = ("_by_identity", "_by_name", "sites")

    def __init__(self, sites: Iterable[Site]) -> None:
        self.sites: tuple[Site, ...] = tuple(sorted(sites, key=lambda s: s.identity))
        self._by_name = {s.name: s for s in self.sites}
        self._by_identity = {s.identity: s for s in self.sites}
        if len(self._by_name) != len(self.sites) or len(self._by_identity) != len(self.sites):
            raise ValueError("duplicate site name or identity in inventory")

    def __len__(self) -> int:
        return len(self.sites)

    def __iter__(self) -> Iterator[Site]:
        return iter(self.sites)

    def find(self, name_or_identity: str) -> Site | None:
        """A site by name or by identity URI."""
        return self._by_identity.get(name_or_identity) or self._by_name.get(name_or_identity)

    def by_identity(self, identity: str) -> Site:
        return self._by_identity[identity]
