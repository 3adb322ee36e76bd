"""The standard lab topology: N sites on one underlay bridge, each with a LAN of host namespaces.

::

    wan namespace:   br0 (bridge, no address) ── s1, s2, ... (veth ends, one per site)
    site i:          wan0 192.0.2.i/24 (underlay)    lan0 10.i.0.1/24 (bridge) ── h1, h2, ...
    host j of i:     eth0 10.i.0.(10+j)/24, default route via 10.i.0.1

Sites forward IPv4 but have no route to each other's LANs: LAN-to-LAN traffic only flows once a
tunnel (strongSwan or Trellis) installs one. This is the local lab and the benchmark topology.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from trellis.lab.faults import UnderlayFaults
from trellis.lab.netns import Lab, Netns

UNDERLAY = ipaddress.IPv4Network("192.0.2.0/24")
MAX_SITES = 250
MAX_HOSTS_PER_SITE = 200
WAN_BRIDGE = "br0"
SITE_UNDERLAY_IF = "wan0"
SITE_LAN_BRIDGE = "lan0"
HOST_IF = "eth0"
FIRST_HOST_OCTET = 10


@dataclass(frozen=True, slots=True)
class LanHost:
    name: str
    netns: Netns
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address

    @property
    def ip(self) -> ipaddress.IPv4Address:
        return self.address.ip


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    index: int
    netns: Netns
    underlay: ipaddress.IPv4Interface
    lan: ipaddress.IPv4Network
    lan_gateway: ipaddress.IPv4Interface
    hosts: tuple[LanHost, ...]
    underlay_if: str = SITE_UNDERLAY_IF
    lan_if: str = SITE_LAN_BRIDGE

    @property
    def underlay_ip(self) -> ipaddress.IPv4Address:
        return self.underlay.ip


@dataclass(frozen=True, slots=True)
class StandardTopology:
    lab: Lab
    wan: Netns
    sites: tuple[Site, ...]
    faults: UnderlayFaults
    wan_bridge: str = WAN_BRIDGE

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise KeyError(f"no site {name!r} in this topology")


def build_standard_topology(
    lab: Lab,
    *,
    sites: int | Sequence[str] = 2,
    hosts_per_site: int = 1,
    underlay_mtu: int | None = None,
    lan_mtu: int | None = None,
) -> StandardTopology:
    """Build the standard topology inside ``lab`` (which deletes it on exit).

    ``sites`` is a count (names site1..siteN) or a list of names (lowercase, digits, '-')."""
    names = [f"site{i}" for i in range(1, sites + 1)] if isinstance(sites, int) else list(sites)
    if not 1 <= len(names) <= MAX_SITES:
        raise ValueError(f"between 1 and {MAX_SITES} sites, not {len(names)}")
    if len(set(names)) != len(names) or "wan" in names:
        raise ValueError(f"site names must be unique and not 'wan': {names}")
    if not 1 <= hosts_per_site <= MAX_HOSTS_PER_SITE:
        raise ValueError(f"between 1 and {MAX_HOSTS_PER_SITE} hosts per site, not {hosts_per_site}")

    wan = lab.namespace("wan")
    lab.bridge(wan, WAN_BRIDGE, mtu=underlay_mtu)
    built = []
    for index, name in enumerate(names, start=1):
        ns = lab.namespace(name, forwarding=True)
        port = f"s{index}"
        lab.veth(ns, SITE_UNDERLAY_IF, wan, port, mtu=underlay_mtu)
        lab.bridge_port(wan, WAN_BRIDGE, port)
        underlay = ipaddress.IPv4Interface(f"{UNDERLAY.network_address + index}/{UNDERLAY.prefixlen}")
        ns.add_address(SITE_UNDERLAY_IF, underlay)

        lan = ipaddress.IPv4Network(f"10.{index}.0.0/24")
        gateway = ipaddress.IPv4Interface(f"{lan.network_address + 1}/{lan.prefixlen}")
        lab.bridge(ns, SITE_LAN_BRIDGE, mtu=lan_mtu)
        ns.add_address(SITE_LAN_BRIDGE, gateway)
        hosts = []
        for j in range(1, hosts_per_site + 1):
            host_ns = lab.namespace(f"{name}-h{j}")
            site_port = f"h{j}"
            lab.veth(ns, site_port, host_ns, HOST_IF, mtu=lan_mtu)
            lab.bridge_port(ns, SITE_LAN_BRIDGE, site_port)
            address = ipaddress.IPv4Interface(
                f"{lan.network_address + FIRST_HOST_OCTET + j - 1}/{lan.prefixlen}"
            )
            host_ns.add_address(HOST_IF, address)
            host_ns.add_route("default", via=gateway.ip)
            hosts.append(LanHost(name=f"{name}-h{j}", netns=host_ns, address=address, gateway=gateway.ip))
        built.append(
            Site(
                name=name,
                index=index,
                netns=ns,
                underlay=underlay,
                lan=lan,
                lan_gateway=gateway,
                hosts=tuple(hosts),
            )
        )
    return StandardTopology(lab=lab, wan=wan, sites=tuple(built), faults=UnderlayFaults(wan))


@contextlib.contextmanager
def standard_lab(
    *,
    sites: int | Sequence[str] = 2,
    hosts_per_site: int = 1,
    underlay_mtu: int | None = None,
    lan_mtu: int | None = None,
    keep_workdir: bool | None = None,
) -> Iterator[StandardTopology]:
    """A fresh :class:`Lab` with the standard topology in it; everything is deleted on exit."""
    with Lab(keep_workdir=keep_workdir) as lab:
        yield build_standard_topology(
            lab, sites=sites, hosts_per_site=hosts_per_site, underlay_mtu=underlay_mtu, lan_mtu=lan_mtu
        )
