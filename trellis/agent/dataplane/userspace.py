"""The userspace data plane: a TUN device, ESP-in-UDP on port 4500, two worker processes.

::

    agent process (asyncio)          UserspaceDataplane: SAs, routes, counters, IKE hand-off
      ├─ outbound worker process     TUN read -> SA lookup -> policy -> ESP seal -> UDP (GSO) send
      └─ inbound worker process      UDP (GRO) receive -> ESP open -> selectors -> policy -> TUN write

The agent process owns the TUN device (routes, MTU) and the port-4500 socket; both workers
inherit them. One process per direction because Python runs one thread of bytecode per
process: encryption and decryption then use both cores.

The policy filter (``set_policy``) runs in both workers; each sees one direction of every flow,
so they share their flows over two pipes (flowsync.py, policy.py). A new view updates both
filters in place: the flows it still allows go on.

Port 4500 is shared with IKE (RFC 3948): the inbound worker hands datagrams that start with the
non-ESP marker to the controller, which calls ``on_ike(message, sender)`` in the event loop;
NAT-keepalives are counted and dropped. ``send_ike`` sends from the same socket (it adds the
marker), so IKE and ESP share one NAT mapping.

A worker that dies takes its SAs' state with it (sequence numbers, replay windows); the SAs are
never re-created with fresh counters (that would reuse GCM nonces): the data plane is marked
failed and every later call raises DataplaneError.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from trellis.agent.dataplane.backend import DataplaneError, Endpoint, EventHandler, IkeHandler
from trellis.agent.dataplane.control import (
    MAX_POLICY_VIEW_BYTES,
    POLICY_PART_BYTES,
    Command,
    Configure,
    Counters,
    Events,
    IkeDatagram,
    InstallSa,
    RemoveSa,
    Reply,
    Request,
    SetFilter,
    SetPolicy,
    SetTunMtu,
    Snapshot,
    Stop,
    control_pair,
    decode_message,
    send_message,
)
from trellis.agent.dataplane.counters import DataplaneCounters
from trellis.agent.dataplane.engine import NAT_KEEPALIVE, NON_ESP_MARKER, EngineConfig
from trellis.agent.dataplane.flowsync import flow_pipe
from trellis.agent.dataplane.hooks import PacketFilter
from trellis.agent.dataplane.tun import TunDevice
from trellis.agent.dataplane.udp import open_udp_socket, send_plain
from trellis.agent.esp.codec import max_payload
from trellis.agent.esp.constants import Direction, DropReason, Mode
from trellis.agent.esp.keylog import EspKeyLog
from trellis.agent.esp.sa import IPV4_HEADER, IPV6_HEADER, UDP_HEADER, SaCounters, SaParams
from trellis.agent.esp.selectors import IPNetwork
from trellis.agent.filter import PacketFilter as PolicyFilter
from trellis.v1 import common_pb2

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # seconds a worker may take to answer a command
WORKER_START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
EXIT_CODE_WAIT = 1.0
MAX_CONTROL_MESSAGE = 1 << 20
ROLES = ("outbound", "inbound")


@dataclass(frozen=True, slots=True)
class UserspaceConfig:
    """``gro``: merge received TCP segments into super-packets for the TUN device (see
    EngineConfig); ``tso``: take TCP super-packets from the TUN device and segment them here (off
    by default: in Python the per-segment checksums cost more than the kernel's segmentation and
    the extra reads, see bench/throughput.py --tso);
    ``udp_gso``/``udp_gro``: batch UDP sends/receives. ``tun_addresses``: optional addresses on
    the TUN device (also the source of our ICMP errors). ``keylog_path``: write Wireshark
    esp_sa rows (off: None)."""

    tun_name: str = "trellis0"
    listen_address: str = "0.0.0.0"
    listen_port: int = 4500
    underlay_mtu: int = 1500
    tso: bool = False
    gro: bool = True
    gro_verify_checksums: bool = True
    udp_gso: bool = True
    udp_gro: bool = True
    clamp_mss: bool = True
    tun_addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = ()
    keylog_path: Path | None = None

    @property
    def tun_mtu(self) -> int:
        """The largest inner packet an ESP-in-UDP datagram of ``underlay_mtu`` carries."""
        outer = (IPV6_HEADER if ":" in self.listen_address else IPV4_HEADER) + UDP_HEADER
        return max_payload(self.underlay_mtu - outer)


@dataclass(slots=True)
class _WorkerHandle:
    role: str
    process: subprocess.Popen[bytes]
    control: socket.socket
    pending: dict[int, asyncio.Future[Reply]] = field(default_factory=dict)


class UserspaceDataplane:
    """The userspace backend (see the module docstring). Use ``async with`` or start/close."""

    def __init__(
        self,
        config: UserspaceConfig,
        *,
        on_ike: IkeHandler | None = None,
        on_event: EventHandler | None = None,
    ) -> None:
        self.config = config
        self.on_ike = on_ike
        self.on_event = on_event
        self.tun: TunDevice | None = None
        self.sock: socket.socket | None = None
        self.tun_mtu = config.tun_mtu
        self._workers: dict[str, _WorkerHandle] = {}
        self._request_ids = itertools.count(1)
        self._keylog: EspKeyLog | None = None
        self._failed: str | None = None
        self._closing = False
        self._installed: dict[tuple[int, Direction], SaParams] = {}
        self._traffic: Counter[str] = Counter()
        self._policy_lock = asyncio.Lock()
        self.policy_version: int | None = None  # of the view enforced now; None: no policy filter

    # ---- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> UserspaceDataplane:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def start(self) -> None:
        config = self.config
        self.tun = TunDevice(config.tun_name, vnet_header=config.tso or config.gro, tso=config.tso)
        try:
            await self.tun.up(self.tun_mtu)
            for address in config.tun_addresses:
                await self.tun.add_address(address)
            self.sock = open_udp_socket(config.listen_address, config.listen_port)
            if config.keylog_path is not None:
                self._keylog = EspKeyLog(config.keylog_path)
            engine_config = EngineConfig(
                underlay_mtu=config.underlay_mtu,
                tso=config.tso,
                gro=config.gro,
                gro_verify_checksums=config.gro_verify_checksums,
                udp_gso=config.udp_gso,
                udp_gro=config.udp_gro,
                clamp_mss=config.clamp_mss,
                icmp_source_v4=next(
                    (a.ip for a in config.tun_addresses if isinstance(a, ipaddress.IPv4Interface)), None
                ),
                icmp_source_v6=next(
                    (a.ip for a in config.tun_addresses if isinstance(a, ipaddress.IPv6Interface)), None
                ),
            )
            # the flow channel: outbound -> inbound and inbound -> outbound (read end, write end)
            to_inbound, to_outbound = flow_pipe(), flow_pipe()
            flow_fds = {
                "outbound": (to_inbound[1], to_outbound[0]),
                "inbound": (to_outbound[1], to_inbound[0]),
            }
            try:
                for role in ROLES:
                    self._spawn(role, flow_fds[role])
            finally:
                for fd in (*to_inbound, *to_outbound):
                    os.close(fd)  # the workers hold their ends
            await asyncio.wait_for(
                asyncio.gather(
                    *(self._request(role, Configure(role=role, config=engine_config)) for role in ROLES),
                    *(self._request(role, SetTunMtu(mtu=self.tun_mtu)) for role in ROLES),
                ),
                WORKER_START_TIMEOUT,
            )
        except BaseException:
            await self.close()
            raise
        log.info(
            "userspace data plane up: %s mtu %d, udp %s:%d, tso %s gro %s",
            config.tun_name,
            self.tun_mtu,
            config.listen_address,
            config.listen_port,
            config.tso,
            config.gro,
        )

    def _spawn(self, role: str, flows: tuple[int, int]) -> None:
        if self.tun is None or self.sock is None:
            raise DataplaneError("not started")
        ours, theirs = control_pair()
        fds = (self.tun.fd, self.sock.fileno(), theirs.fileno(), *flows)
        argv = [sys.executable, "-m", "trellis.agent.dataplane.worker"]
        argv += ["--tun-fd", str(fds[0]), "--udp-fd", str(fds[1]), "--control-fd", str(fds[2])]
        argv += ["--flow-send-fd", str(flows[0]), "--flow-receive-fd", str(flows[1])]
        try:
            process = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        ours.setblocking(False)
        handle = _WorkerHandle(role=role, process=process, control=ours)
        self._workers[role] = handle
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_control, handle)

    async def close(self) -> None:
        """Stop the workers, delete the TUN device (and its routes), close the socket."""
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        for handle in self._workers.values():
            with contextlib.suppress(OSError, ValueError):
                send_message(handle.control, Request(request_id=0, command=Stop()))
        for handle in self._workers.values():
            try:
                await asyncio.wait_for(asyncio.to_thread(handle.process.wait), STOP_TIMEOUT)
            except TimeoutError:
                handle.process.kill()
                await asyncio.to_thread(handle.process.wait)
            loop.remove_reader(handle.control.fileno())
            handle.control.close()
            for future in handle.pending.values():
                if not future.done():
                    future.set_exception(DataplaneError("data plane closed"))
        self._workers.clear()
        if self.sock is not None:
            self.sock.close()
        if self.tun is not None:
            self.tun.close()
        if self._keylog is not None:
            self._keylog.close()

    @property
    def failed(self) -> str | None:
        """Why the data plane stopped working (a worker died), or None."""
        return self._failed

    @property
    def local_endpoint(self) -> Endpoint:
        if self.sock is None:
            raise DataplaneError("not started")
        address, port = self.sock.getsockname()[:2]
        return address, port

    # ---- control channel --------------------------------------------------------------

    def _on_control(self, handle: _WorkerHandle) -> None:
        error: OSError | None = None
        try:
            data = handle.control.recv(MAX_CONTROL_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            data, error = b"", e
        if not data:
            self._worker_died(handle, error)
            return
        message = decode_message(data)
        if isinstance(message, Reply):
            future = handle.pending.pop(message.request_id, None)
            if future is not None and not future.done():
                future.set_result(message)
        elif isinstance(message, IkeDatagram):
            self._traffic["ike_delivered"] += 1
            if self.on_ike is not None:
                self.on_ike(message.message, message.source)
        elif isinstance(message, Events) and self.on_event is not None:
            for event in message.events:
                self.on_event(event)

    def _worker_died(self, handle: _WorkerHandle, error: OSError | None) -> None:
        asyncio.get_running_loop().remove_reader(handle.control.fileno())
        if self._closing:
            return
        try:  # it closed its end: it is exiting; a moment to learn how (a fatal path only)
            code: int | None = handle.process.wait(EXIT_CODE_WAIT)
        except subprocess.TimeoutExpired:
            code = None
        self._failed = f"{handle.role} worker exited ({code}) {error or ''}".strip()
        log.error("userspace data plane failed: %s", self._failed)
        for future in handle.pending.values():
            if not future.done():
                future.set_exception(DataplaneError(self._failed))
        handle.pending.clear()

    async def _request(self, role: str, command: Command) -> Reply:
        if self._failed is not None:
            raise DataplaneError(self._failed)
        handle = self._workers.get(role)
        if handle is None:
            raise DataplaneError("not started")
        request_id = next(self._request_ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        handle.pending[request_id] = future
        send_message(handle.control, Request(request_id=request_id, command=command))
        try:
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        finally:
            handle.pending.pop(request_id, None)
        if reply.error is not None:
            raise DataplaneError(f"{role} worker: {reply.error}")
        return reply

    # ---- the backend interface --------------------------------------------------------

    async def install_sa(self, params: SaParams) -> None:
        """Install one direction of an SA; once this returns, packets use it."""
        if not params.udp_encap:
            raise DataplaneError("the userspace data plane only does ESP in UDP (RFC 3948)")
        if params.mode is not Mode.TUNNEL:
            raise DataplaneError("the userspace data plane does tunnel mode only")
        if self.sock is not None and (":" in self.config.listen_address) != (
            params.local_address.version == 6
        ):
            raise DataplaneError(f"SA outer addresses are IPv{params.local_address.version}, socket is not")
        role = "outbound" if params.direction is Direction.OUTBOUND else "inbound"
        await self._request(role, InstallSa(params=params))
        self._installed[params.sa_id] = params
        if self._keylog is not None:
            self._keylog.record(params)
        inner = params.inner_mtu(self.config.underlay_mtu)
        if params.direction is Direction.OUTBOUND and inner < self.tun_mtu and self.tun is not None:
            self.tun_mtu = inner
            await self.tun.set_mtu(inner)
            await asyncio.gather(*(self._request(r, SetTunMtu(mtu=inner)) for r in ROLES))

    async def remove_sa(self, spi: int, direction: Direction) -> None:
        role = "outbound" if direction is Direction.OUTBOUND else "inbound"
        await self._request(role, RemoveSa(spi=spi))
        self._installed.pop((spi, direction), None)

    async def add_route(self, prefix: IPNetwork | str) -> None:
        if self.tun is None:
            raise DataplaneError("not started")
        await self.tun.add_route(ipaddress.ip_network(prefix) if isinstance(prefix, str) else prefix)

    async def remove_route(self, prefix: IPNetwork | str) -> None:
        if self.tun is None:
            raise DataplaneError("not started")
        await self.tun.remove_route(ipaddress.ip_network(prefix) if isinstance(prefix, str) else prefix)

    async def set_filter(self, packet_filter: PacketFilter | None) -> None:
        """Install (or with None remove) a filter of your own in both workers; it must pickle.
        It replaces the policy filter of ``set_policy`` (and the other way round)."""
        async with self._policy_lock:
            await asyncio.gather(*(self._request(role, SetFilter(filter=packet_filter)) for role in ROLES))
            self.policy_version = None

    async def set_policy(self, view: common_pb2.PolicyView | None) -> None:
        """Enforce ``view`` in both workers: the first view builds their filters, later ones
        update them, keeping the flows the new view still allows. None: no policy filter
        (everything passes). InvalidPolicyView (a ValueError) if the view cannot be enforced,
        leaving the current one in place."""
        async with self._policy_lock:
            if view is None:
                await asyncio.gather(*(self._request(role, SetPolicy(data=None)) for role in ROLES))
                self.policy_version = None
                return
            PolicyFilter(view)  # checks the view here: InvalidPolicyView before any worker sees it
            data = view.SerializeToString()
            if len(data) > MAX_POLICY_VIEW_BYTES:
                raise DataplaneError(f"policy view of {len(data)} bytes (at most {MAX_POLICY_VIEW_BYTES})")
            chunks = [data[i : i + POLICY_PART_BYTES] for i in range(0, len(data), POLICY_PART_BYTES)] or [
                b""
            ]
            await asyncio.gather(*(self._send_policy(role, chunks) for role in ROLES))
            self.policy_version = view.policy_version

    async def _send_policy(self, role: str, chunks: list[bytes]) -> None:
        for index, chunk in enumerate(chunks):
            await self._request(role, SetPolicy(data=chunk, part=index, parts=len(chunks)))

    async def counters(self) -> DataplaneCounters:
        replies = await asyncio.gather(*(self._request(role, Snapshot()) for role in ROLES))
        parts = [reply.counters for reply in replies if reply.counters is not None]
        return merge_counters(parts, self._traffic, self.tun_mtu)

    def send_ike(self, message: bytes, destination: Endpoint) -> bool:
        if self.sock is None:
            raise DataplaneError("not started")
        sent = send_plain(self.sock, NON_ESP_MARKER + message, destination)
        self._traffic["ike_tx" if sent else "ike_tx_dropped"] += 1
        return sent

    def send_keepalive(self, destination: Endpoint) -> bool:
        if self.sock is None:
            raise DataplaneError("not started")
        sent = send_plain(self.sock, NAT_KEEPALIVE, destination)
        self._traffic["keepalive_tx"] += sent
        return sent

    @property
    def installed(self) -> tuple[SaParams, ...]:
        return tuple(self._installed.values())


def merge_counters(parts: list[Counters], controller: Counter[str], tun_mtu: int) -> DataplaneCounters:
    drops: Counter[DropReason] = Counter()
    reasons: Counter[str] = Counter()
    traffic: Counter[str] = Counter(controller)
    sas: list[SaCounters] = []
    for part in parts:
        drops.update(part.drops)
        reasons.update(part.policy_reasons)
        traffic.update(part.traffic)
        sas.extend(part.sas)
    return DataplaneCounters(
        sas=tuple(sas),
        drops=dict(drops),
        policy_reasons=dict(reasons),
        traffic=dict(traffic),
        tun_mtu=tun_mtu,
    )
