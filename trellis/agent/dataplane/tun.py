"""The TUN device of the userspace data plane (Linux, /dev/net/tun) and its routes.

With ``vnet_header`` every read and write carries a 10-byte virtio-net header and the kernel
accepts TCP super-packets of up to 64 KB in one write (GRO, see packets.py). With ``tso`` as
well (TUNSETOFFLOAD CSUM|TSO4|TSO6) it also hands them over in one read, with checksums left
for us to complete. Either replaces dozens of system calls and kernel traversals by one.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct

from pyroute2 import AsyncIPRoute

from trellis.agent.esp.selectors import IPNetwork

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
VNET_HEADER_SIZE = 10
MAX_IFNAME = 15
# Routes we add are marked 'proto static' (visible in `ip route`).
ROUTE_PROTOCOL_STATIC = 4


class TunError(OSError):
    """The TUN device or its routes could not be set up (a local, configuration problem)."""


class TunDevice:
    """An open TUN device in the current network namespace; closing the fd deletes it (with its
    routes). Link and route changes go through netlink (pyroute2, asyncio)."""

    def __init__(self, name: str, *, vnet_header: bool, tso: bool) -> None:
        if not 1 <= len(name.encode()) <= MAX_IFNAME:
            raise TunError(f"interface name {name!r} must be 1 to {MAX_IFNAME} bytes")
        self.name = name
        self.vnet_header = vnet_header or tso
        try:
            self.fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(f"cannot open {TUN_DEVICE}: {e}") from e
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if self.vnet_header else 0)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
            if self.vnet_header:
                fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HEADER_SIZE))
                offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN if tso else 0
                fcntl.ioctl(self.fd, TUNSETOFFLOAD, offloads)
        except OSError as e:
            os.close(self.fd)
            raise TunError(f"cannot set up TUN device {name}: {e}") from e
        self.index = 0
        self._ipr: AsyncIPRoute | None = None
        self._routes: set[IPNetwork] = set()

    async def _netlink(self) -> AsyncIPRoute:
        if self._ipr is None:
            self._ipr = AsyncIPRoute()
            await self._ipr.setup_endpoint()
            links = await self._ipr.link_lookup(ifname=self.name)
            if not links:
                raise TunError(f"TUN device {self.name} did not appear")
            self.index = int(links[0])
        return self._ipr

    async def up(self, mtu: int) -> None:
        ipr = await self._netlink()
        await ipr.link("set", index=self.index, mtu=mtu, state="up")

    async def set_mtu(self, mtu: int) -> None:
        ipr = await self._netlink()
        await ipr.link("set", index=self.index, mtu=mtu)

    async def mtu(self) -> int:
        ipr = await self._netlink()
        links = await ipr.link("get", index=self.index)
        return int(links[0].get("IFLA_MTU"))

    async def add_address(self, interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
        ipr = await self._netlink()
        await ipr.addr(
            "replace", index=self.index, address=str(interface.ip), prefixlen=interface.network.prefixlen
        )

    async def add_route(self, prefix: IPNetwork) -> None:
        ipr = await self._netlink()
        await ipr.route(
            "replace",
            dst=str(prefix.network_address),
            dst_len=prefix.prefixlen,
            oif=self.index,
            family=_family(prefix),
            proto=ROUTE_PROTOCOL_STATIC,
        )
        self._routes.add(prefix)

    async def remove_route(self, prefix: IPNetwork) -> None:
        if prefix not in self._routes:
            return
        ipr = await self._netlink()
        try:
            await ipr.route(
                "del",
                dst=str(prefix.network_address),
                dst_len=prefix.prefixlen,
                oif=self.index,
                family=_family(prefix),
            )
        finally:
            self._routes.discard(prefix)

    @property
    def routes(self) -> frozenset[IPNetwork]:
        return frozenset(self._routes)

    def close(self) -> None:
        """Close the device; the kernel deletes it and its routes with it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None


def _family(prefix: IPNetwork) -> int:
    return socket.AF_INET if prefix.version == 4 else socket.AF_INET6
