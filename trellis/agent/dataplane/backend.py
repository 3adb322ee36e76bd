"""What a data-plane backend offers the agent: the userspace one now, kernel XFRM later.

Kept small on purpose so that both fit: SAs in and out, routes in and out, counters, and the
port-4500 socket shared with IKE (which the backend owns in both cases: userspace reads it for
ESP, the kernel backend sets UDP_ENCAP on it and the kernel takes the ESP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from trellis.agent.dataplane.counters import DataplaneCounters
from trellis.agent.dataplane.hooks import PacketFilter
from trellis.agent.esp.constants import Direction
from trellis.agent.esp.sa import LifetimeEvent, SaParams
from trellis.agent.esp.selectors import IPNetwork
from trellis.v1 import common_pb2

Endpoint = tuple[str, int]
# Called in the event loop with an IKE message (non-ESP marker removed) and its sender.
IkeHandler = Callable[[bytes, Endpoint], None]
# Called in the event loop when an SA reaches a soft (rekey) or hard (dead) lifetime limit.
EventHandler = Callable[[LifetimeEvent], None]


class DataplaneError(RuntimeError):
    """The backend cannot do what was asked, or has failed (e.g. a worker died)."""


class DataplaneBackend(Protocol):
    async def start(self) -> None:
        """Take the port-4500 socket and the device; DataplaneError or OSError if they cannot be
        had."""
        ...

    @property
    def failed(self) -> str | None:
        """Why the backend stopped working (then every call raises DataplaneError), or None."""
        ...

    async def install_sa(self, params: SaParams) -> None:
        """Install one direction of a CHILD SA; returns once packets use it."""
        ...

    async def remove_sa(self, spi: int, direction: Direction) -> None: ...

    async def add_route(self, prefix: IPNetwork) -> None:
        """Send traffic for ``prefix`` into the tunnel device (dropped while no SA covers it,
        so it never leaks in clear)."""
        ...

    async def remove_route(self, prefix: IPNetwork) -> None: ...

    async def counters(self) -> DataplaneCounters: ...

    async def set_filter(self, packet_filter: PacketFilter | None) -> None:
        """A filter of your own asked about every packet (None: allow everything); it replaces
        the policy filter."""
        ...

    async def set_policy(self, view: common_pb2.PolicyView | None) -> None:
        """Enforce the site's PolicyView on every packet (trellis.agent.filter): the first view
        builds the filter, a later one updates it and the flows it still allows go on. None: no
        policy filter (everything passes, as with static peers). InvalidPolicyView (a
        ValueError) leaves the current view in place."""
        ...

    def send_ike(self, message: bytes, destination: Endpoint) -> bool:
        """Send an IKE message from port 4500 (the non-ESP marker is added); False if dropped."""
        ...

    def send_keepalive(self, destination: Endpoint) -> bool:
        """Send a NAT-keepalive (RFC 3948 section 2.3) from port 4500."""
        ...

    async def close(self) -> None: ...
