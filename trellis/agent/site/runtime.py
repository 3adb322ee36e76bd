"""One site at run time: an IKE shell and a data plane joined by a ``TunnelTable``.

::

    peers ── UDP 500 ──────────── IkeShell (IkeEngine)
          └─ UDP 4500 ─ data plane ─┘ on_ike / send_ike, send_keepalive
                           ▲  │ LifetimeEvent, counters
    IKE events ─ TunnelTable ─┘ install/remove SAs, routes; rekey/delete commands back to IKE

The seam, in full:

* the data plane owns port 4500 (RFC 3948): ESP stays there, IKE messages come to
  ``IkeShell.datagram_received`` (the non-ESP marker put back), and the shell's datagrams from
  port 4500 go out through the data plane's ``send_ike``/``send_keepalive``; the shell keeps its
  own socket for port 500;
* every IKE event goes through the table; the data-plane changes it returns are applied in order
  by one task, and IKE datagrams wait until the changes made before them are in place: a
  responder's inbound SA is installed before its answer leaves, so the initiator's first ESP
  packet finds it;
* data-plane lifetime events and the inbound packet counters go through the table back to the
  engine (rekey, delete, liveness);
* a data plane that fails (a worker died, an SA would not install) stops the site:
  ``run`` raises ``SiteFailed`` saying why, after IKE told its peers goodbye;
* ``set_policy(view)`` makes the data plane enforce the site's PolicyView (its packet filter);
  the runtime keeps the latest view and gives it to a data plane that starts later.

With no data plane (``dataplane=None``) the shell binds both ports itself and the site runs IKE
only (ESP on port 4500 then reaches the shell's ``on_esp`` hook, unused here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from typing import Any

from trellis.agent.dataplane.backend import (
    DataplaneBackend,
    DataplaneError,
    Endpoint,
    EventHandler,
    IkeHandler,
)
from trellis.agent.dataplane.counters import DataplaneCounters
from trellis.agent.dataplane.hooks import PacketFilter
from trellis.agent.esp.sa import LifetimeEvent
from trellis.agent.esp.selectors import IPNetwork
from trellis.agent.ike.config import Address
from trellis.agent.ike.constants import NAT_KEEPALIVE, NON_ESP_MARKER
from trellis.agent.ike.engine import IkeEngine
from trellis.agent.ike.errors import IkeLocalError
from trellis.agent.ike.events import Event
from trellis.agent.ike.shell import DatagramTransport, IkeShell
from trellis.agent.site.tunnels import (
    AddRoute,
    Changes,
    DataplaneChange,
    DeleteChild,
    EngineCommand,
    EspPolicy,
    InstallSa,
    RekeyChild,
    RemoveRoute,
    RemoveSa,
    TunnelTable,
)
from trellis.v1 import common_pb2

log = logging.getLogger("trellis.agent.site")

DataplaneFactory = Callable[[IkeHandler, EventHandler], DataplaneBackend]
TICK = 1.0  # seconds between counter reads (liveness, status) and data-plane health checks
CLOSE_GRACE = 0.5  # seconds IKE waits for the answers to its DELETEs when the site stops


class SiteFailed(RuntimeError):
    """The site cannot go on (its data plane failed); the message says why."""


class _NatTPort:
    """The shell's transport for port 4500: the data plane's socket."""

    def __init__(self, dataplane: DataplaneBackend) -> None:
        self.dataplane = dataplane

    def send(self, data: bytes, local_port: int, remote: Address) -> None:
        destination: Endpoint = (remote[0], remote[1])
        if data == NAT_KEEPALIVE:
            self.dataplane.send_keepalive(destination)
        elif data.startswith(NON_ESP_MARKER):
            self.dataplane.send_ike(data[len(NON_ESP_MARKER) :], destination)
        else:
            log.warning("not sending a %d-byte datagram that is neither IKE nor a keepalive", len(data))


class _Gate:
    """Wraps the shell's transport: datagrams wait while data-plane changes made before them are
    being applied (see the module docstring)."""

    def __init__(self, runtime: SiteRuntime, inner: DatagramTransport) -> None:
        self.runtime = runtime
        self.inner = inner

    def send(self, data: bytes, local_port: int, remote: Address) -> None:
        self.runtime.send_when_applied(self.inner, data, local_port, remote)


class SiteRuntime:
    """See the module docstring. ``open`` then ``start`` then ``run(stop)``; ``close`` at the end
    (``run`` closes too)."""

    def __init__(
        self,
        engine: IkeEngine,
        *,
        dataplane: DataplaneFactory | None,
        esp: EspPolicy | None = None,
        pinned_routes: Sequence[IPNetwork] = (),
        on_event: Callable[[Event], None] | None = None,
        clock: Callable[[], float] = time.time,
        backend: str = "userspace",
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.on_event = on_event
        self.shell = IkeShell(engine, on_event=self._ike_event, clock=clock)
        self.table = TunnelTable(policy=esp or EspPolicy(), pinned=tuple(pinned_routes))
        self._factory = dataplane
        self.dataplane: DataplaneBackend | None = None
        self.counters: DataplaneCounters | None = None
        self.started_at = clock()
        self.backend = "none" if dataplane is None else backend
        self._changes: asyncio.Queue[DataplaneChange] = asyncio.Queue()
        self._applying = 0  # changes queued or being applied
        self._idle = asyncio.Event()
        self._idle.set()
        self._held: list[tuple[DatagramTransport, bytes, int, Address]] = []
        self._applier: asyncio.Task[None] | None = None
        self._table_timer: asyncio.TimerHandle | None = None
        self._failure: str | None = None
        self._failed_event = asyncio.Event()
        self._closed = False
        self.policy: common_pb2.PolicyView | None = None
        self.policy_applied_at: float | None = None
        self._policy_lock = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def failure(self) -> str | None:
        """Why the site stopped working, or None."""
        if self._failure is None and self.dataplane is not None and self.dataplane.failed:
            self._fail(f"data plane failed: {self.dataplane.failed}")
        return self._failure

    async def open(self, bind_address: str = "0.0.0.0") -> None:
        """Start the data plane (it binds port 4500), bind port 500 for IKE, add the pinned
        routes. OSError/DataplaneError if a socket or the TUN device cannot be had."""
        self._applier = asyncio.create_task(self._apply_changes(), name="site-dataplane-changes")
        try:
            if self._factory is None:
                await self.shell.open(bind_address)
                return
            async with self._policy_lock:
                self.dataplane = self._factory(self._ike_from_dataplane, self._lifetime_event)
                await self.dataplane.start()
                if self.policy is not None:
                    await self.dataplane.set_policy(self.policy)
                    self.policy_applied_at = self.clock()
            await self.shell.open(bind_address, nat_t=_NatTPort(self.dataplane))
            if self.shell.transport is not None:
                self.shell.attach(_Gate(self, self.shell.transport))
            self._submit(self.table.start())
            await self.wait_applied()
        except BaseException:
            await self.close()
            raise

    def start(self) -> None:
        """Initiate the peers configured to be initiated."""
        self.shell.start()

    async def run(
        self,
        stop: asyncio.Event,
        *,
        tick: float = TICK,
        on_tick: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        """Until ``stop`` is set or the site fails (SiteFailed); closes the site either way."""
        try:
            while not stop.is_set() and self.failure is None:
                await self.refresh()
                if on_tick is not None:
                    result = on_tick()
                    if result is not None:
                        await result
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._failed_event.wait())]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED), tick)
                for waiter in waits:
                    waiter.cancel()
        finally:
            await self.close()
        if self._failure is not None:
            raise SiteFailed(self._failure)

    async def close(self) -> None:
        """Delete the IKE SAs with the peers (briefly waiting for answers), stop the data plane."""
        if self._closed:
            return
        self._closed = True
        if self._failure is not None:
            self._release_held(force=True)  # the goodbyes go out even if SAs cannot be removed
        await self.shell.close(grace=CLOSE_GRACE)
        if self._table_timer is not None:
            self._table_timer.cancel()
        if self._applier is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wait_applied(), CLOSE_GRACE)
            self._applier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._applier
        if self.dataplane is not None:
            await self.dataplane.close()

    # --- what the site offers --------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the data plane's counters (for status) and tell IKE which peers sent ESP."""
        if self.dataplane is None or self.failure is not None:
            return
        try:
            self.counters = await self.dataplane.counters()
        except DataplaneError as e:
            self._fail(f"data plane failed: {e}")
            return
        now = self.clock()
        for spi in self.table.inbound_traffic(self.counters):
            self.engine.note_esp_traffic(spi, now)
        self.shell.flush()

    async def set_filter(self, packet_filter: PacketFilter | None) -> None:
        """A filter of your own the data plane asks about every packet (None: allow all); it
        replaces the policy view's filter."""
        if self.dataplane is None:
            raise DataplaneError("this site runs without a data plane")
        await self.dataplane.set_filter(packet_filter)
        self.policy = None

    async def set_policy(self, view: common_pb2.PolicyView | None) -> None:
        """Enforce ``view`` on the site's traffic from now on; flows it still allows go on.
        None: no policy filter (everything the SAs carry passes). Kept for a data plane that
        is not started yet; without one (IKE only) there is nothing to enforce it. Raises
        InvalidPolicyView (a ValueError) if the view cannot be enforced, DataplaneError if the
        data plane failed; the previous view stays in force either way."""
        async with self._policy_lock:  # not while open() starts the data plane
            if self.dataplane is not None:
                await self.dataplane.set_policy(view)
                self.policy_applied_at = self.clock()
            elif self._factory is None:
                log.info("no data plane here: policy version %s not enforced", view and view.policy_version)
            self.policy = view

    async def wait_applied(self) -> None:
        """Until every data-plane change asked for so far is in place."""
        while self._applying and self._failure is None:
            await self._idle.wait()

    def snapshot(self) -> dict[str, Any]:
        """The site's status document (IKE SAs with their data-plane counters; see status.py)."""
        from trellis.agent.site.status import site_status

        policy = None
        if self.policy is not None:
            policy = {
                "version": self.policy.policy_version,
                "peers": len(self.policy.peers),
                "enforced": self.dataplane is not None and self.policy_applied_at is not None,
                "applied_at": self.policy_applied_at,
            }
        return site_status(
            [asdict(sa) for sa in self.engine.status()],
            policy=policy,
            counters=self.counters,
            backend=self.backend,
            routes=self.table.routes,
            failed=self.failure,
            started_at=self.started_at,
            now=self.clock(),
            pid=os.getpid(),
        )

    # --- IKE and data-plane input ------------------------------------------------------------

    def _ike_event(self, event: Event) -> None:
        if self.on_event is not None:
            self.on_event(event)
        if self._factory is not None:
            self._submit(self.table.ike_event(event, self.clock()))

    def _ike_from_dataplane(self, message: bytes, source: Endpoint) -> None:
        if not self._closed:
            port = self.engine.settings.nat_t_port
            self.shell.datagram_received(NON_ESP_MARKER + message, port, (source[0], source[1]))

    def _lifetime_event(self, event: LifetimeEvent) -> None:
        log.info(
            "SA %08x/%s reached its %s %s lifetime",
            event.spi,
            event.direction,
            "hard" if event.hard else "soft",
            event.trigger,
        )
        self._submit(self.table.lifetime_event(event))

    # --- applying changes ----------------------------------------------------------------------

    def _submit(self, changes: Changes) -> None:
        for change in changes.dataplane:
            self._applying += 1
            self._idle.clear()
            self._changes.put_nowait(change)
        for command in changes.engine:
            asyncio.get_running_loop().call_soon(self._command, command)
        self._arm_table_timer()

    def _command(self, command: EngineCommand) -> None:
        if self._closed:
            return
        spi = command.inbound_spi
        try:
            if isinstance(command, RekeyChild):
                self.shell.call(lambda now: self.engine.rekey_child(spi, now))
            elif isinstance(command, DeleteChild):
                self.shell.call(lambda now: self.engine.delete_child(spi, now))
        except IkeLocalError as e:
            log.debug("%s of CHILD SA %s not done: %s", type(command).__name__, spi.hex(), e)

    def _arm_table_timer(self) -> None:
        if self._table_timer is not None:
            self._table_timer.cancel()
            self._table_timer = None
        due = self.table.next_timer()
        if due is not None and not self._closed:
            delay = max(0.0, due - self.clock())
            self._table_timer = asyncio.get_running_loop().call_later(delay, self._table_due)

    def _table_due(self) -> None:
        self._table_timer = None
        self._submit(self.table.poll(self.clock()))

    async def _apply_changes(self) -> None:
        while True:
            change = await self._changes.get()
            try:
                if self._failure is None:
                    await self._apply(change)
            except (DataplaneError, OSError) as e:
                self._fail(f"data plane failed: {describe(change)}: {e}")
            finally:
                self._applying -= 1
            if not self._applying:
                self._idle.set()
                self._release_held()

    async def _apply(self, change: DataplaneChange) -> None:
        dataplane = self.dataplane
        if dataplane is None:
            return
        log.debug("data plane: %s", describe(change))
        if isinstance(change, InstallSa):
            await dataplane.install_sa(change.params)
        elif isinstance(change, RemoveSa):
            await dataplane.remove_sa(change.spi, change.direction)
        elif isinstance(change, AddRoute):
            await dataplane.add_route(change.prefix)
        elif isinstance(change, RemoveRoute):
            await dataplane.remove_route(change.prefix)

    def send_when_applied(
        self, transport: DatagramTransport, data: bytes, local_port: int, remote: Address
    ) -> None:
        """Send now, or once the data-plane changes queued so far are in place."""
        if self._applying and self._failure is None:
            self._held.append((transport, data, local_port, remote))
        else:
            self._release_held(force=True)
            transport.send(data, local_port, remote)

    def _release_held(self, *, force: bool = False) -> None:
        if self._applying and not force:
            return
        held, self._held = self._held, []
        for transport, data, local_port, remote in held:
            transport.send(data, local_port, remote)

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            log.error("site failed: %s", reason)
            self._failed_event.set()
            self._idle.set()


def describe(change: DataplaneChange) -> str:
    if isinstance(change, InstallSa):
        p = change.params
        return f"install {p.direction} SA {p.spi:08x} ({p.tag})"
    if isinstance(change, RemoveSa):
        return f"remove {change.direction} SA {change.spi:08x}"
    if isinstance(change, AddRoute):
        return f"route {change.prefix} into the tunnel"
    return f"remove the route to {change.prefix}"
