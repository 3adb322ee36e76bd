"""The asyncio shell around the sans-IO IKE engine: UDP sockets, the clock and the timer.

The seam with the data plane is small and explicit:

* the shell sends through a ``DatagramTransport`` (``UdpSockets`` by default, one socket per
  local port). A data plane that wants to own the NAT-T socket itself can implement the protocol
  for port 4500 and hand the shell what it receives;
* ``IkeShell.datagram_received(data, local_port, remote_addr)`` is the one entry point for
  received datagrams (IKE on 500; IKE, ESP or keepalives on 4500);
* ESP found on the NAT-T port goes to the ``on_esp(packet, addr)`` hook; the data plane sends
  its ESP with ``IkeShell.send_esp`` (same socket, so NAT mappings stay shared with IKE);
* or the data plane owns the NAT-T socket: ``open(bind, nat_t=transport)`` binds only the IKE
  port and sends what the engine sends from the NAT-T port through ``transport`` (which gets the
  datagram as the engine made it: IKE behind the non-ESP marker, or a NAT keepalive); the data
  plane hands what it receives there to ``datagram_received(data, nat_t_port, remote)``.

``flush`` hands the engine's events to ``on_event`` before it sends the engine's datagrams, so a
hook can act (install SAs, hold the datagrams until they are installed) before the peer hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from trellis.agent.ike.config import Address
from trellis.agent.ike.engine import IkeEngine
from trellis.agent.ike.events import Event

log = logging.getLogger("trellis.agent.ike")

EventHook = Callable[[Event], None]
EspHook = Callable[[bytes, Address], None]
MAX_DATAGRAM = 65_535


class DatagramTransport(Protocol):
    def send(self, data: bytes, local_port: int, remote: Address) -> None: ...


def route_source(remote_host: str) -> str:
    """The local address the kernel would use towards ``remote_host`` (no packet is sent): what
    NAT detection must hash as our address."""
    family = socket.AF_INET6 if ":" in remote_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((remote_host, 9))
        except OSError:
            return "::" if family == socket.AF_INET6 else "0.0.0.0"
        return str(probe.getsockname()[0])


def address_resolver(bind_address: str) -> Callable[[str], str]:
    """Our address as the peer sees it: the bound one, or the route's source when unbound."""
    if bind_address not in ("0.0.0.0", "::"):
        return lambda _remote: bind_address
    cache: dict[str, str] = {}

    def resolve(remote_host: str) -> str:
        if remote_host not in cache:
            cache[remote_host] = route_source(remote_host)
        return cache[remote_host]

    return resolve


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, port: int, receive: Callable[[bytes, int, Address], None]) -> None:
        self.port = port
        self.receive = receive

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        host, port = addr[0], addr[1]
        self.receive(data, self.port, (str(host), int(port)))

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP port %d: %s", self.port, exc)  # ICMP unreachable and the like


class UdpSockets:
    """One UDP socket per local port, all bound to one address."""

    def __init__(self, transports: dict[int, asyncio.DatagramTransport]) -> None:
        self._transports = transports

    @classmethod
    async def open(
        cls, bind_address: str, ports: Iterable[int], receive: Callable[[bytes, int, Address], None]
    ) -> UdpSockets:
        loop = asyncio.get_running_loop()
        transports: dict[int, asyncio.DatagramTransport] = {}
        try:
            for port in ports:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda port=port: _Endpoint(port, receive),  # type: ignore[misc]
                    local_addr=(bind_address, port),
                    reuse_port=False,
                )
                transports[port] = transport
        except OSError:
            for transport in transports.values():
                transport.close()
            raise
        return cls(transports)

    def send(self, data: bytes, local_port: int, remote: Address) -> None:
        transport = self._transports.get(local_port)
        if transport is None:
            log.warning("no socket on port %d to send from", local_port)
            return
        transport.sendto(data, remote)

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()
        self._transports = {}


class PortMux:
    """Sends through one transport per local port (the IKE port's socket here, the NAT-T port's
    in the data plane)."""

    def __init__(self, transports: dict[int, DatagramTransport]) -> None:
        self._transports = transports

    def send(self, data: bytes, local_port: int, remote: Address) -> None:
        transport = self._transports.get(local_port)
        if transport is None:
            log.warning("no transport for port %d to send from", local_port)
            return
        transport.send(data, local_port, remote)


class IkeShell:
    """Runs an ``IkeEngine`` on the event loop: feeds it datagrams and time, sends what it
    produces, hands its events to ``on_event`` and arms one timer for ``next_timer()``."""

    def __init__(
        self,
        engine: IkeEngine,
        *,
        on_event: EventHook | None = None,
        on_esp: EspHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.on_event = on_event
        self.on_esp = on_esp
        self.clock = clock
        self.transport: DatagramTransport | None = None
        self._sockets: UdpSockets | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def open(self, bind_address: str = "0.0.0.0", *, nat_t: DatagramTransport | None = None) -> None:
        """Bind the engine's IKE and NAT-T ports and start handling timers. With ``nat_t``, only
        the IKE port is bound here and datagrams from the NAT-T port go through ``nat_t``."""
        settings = self.engine.settings
        ports = (settings.ike_port,) if nat_t is not None else (settings.ike_port, settings.nat_t_port)
        self._sockets = await UdpSockets.open(bind_address, ports, self.datagram_received)
        if nat_t is None:
            self.attach(self._sockets)
        else:
            self.attach(PortMux({settings.ike_port: self._sockets, settings.nat_t_port: nat_t}))

    def attach(self, transport: DatagramTransport) -> None:
        self.transport = transport
        self.flush()

    def start(self) -> None:
        """Initiate the peers configured to be initiated."""
        self.engine.start(self.clock())
        self.flush()

    def datagram_received(self, data: bytes, local_port: int, remote_addr: Address) -> None:
        esp = self.engine.datagram_received(data, local_port=local_port, remote=remote_addr, now=self.clock())
        if esp is not None and self.on_esp is not None:
            self.on_esp(esp, remote_addr)
        self.flush()

    def send_esp(self, packet: bytes, remote: Address) -> None:
        """ESP-in-UDP from the data plane, out of the NAT-T socket (RFC 3948)."""
        if self.transport is not None:
            self.transport.send(packet, self.engine.settings.nat_t_port, remote)

    def call(self, action: Callable[[float], None]) -> None:
        """Run an engine command (``lambda now: engine.rekey(...)``) and send what it made."""
        action(self.clock())
        self.flush()

    def flush(self) -> None:
        for event in self.engine.events():
            if self.on_event is not None:
                self.on_event(event)
        if self.transport is not None:
            for datagram in self.engine.datagrams():
                self.transport.send(datagram.data, datagram.local_port, datagram.remote)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.engine.next_timer()
        if due is None:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the caller drives time
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, due - self.clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.engine.handle_timer(self.clock())
        self.flush()

    async def close(self, *, grace: float = 0.5) -> None:
        """Delete every IKE SA with its peer (best effort, ``grace`` seconds for the answers),
        then close the sockets."""
        for name in list(self.engine.peers):
            self.engine.terminate(name, self.clock())
        self.flush()
        deadline = self.clock() + grace
        while self.engine.status() and self.clock() < deadline:
            await asyncio.sleep(0.05)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sockets is not None:
            self._sockets.close()
            self._sockets = None
        self.transport = None
