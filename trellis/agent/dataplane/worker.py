"""A data-plane worker process: one per direction, each with its own interpreter (and GIL).

    python -m trellis.agent.dataplane.worker --tun-fd N --udp-fd M --control-fd K \
        [--flow-send-fd S --flow-receive-fd R]

The outbound worker reads the TUN device and sends ESP-in-UDP; the inbound worker reads the UDP
socket and writes the TUN device. Both inherit the descriptors from the controller (the agent
process), which configures them over the control socket (see control.py). A worker exits when
the control socket closes, on Stop, or when its parent dies. The flow channel (flowsync.py)
joins the two workers' policy filters.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable

from google.protobuf.message import DecodeError

from trellis.agent.dataplane.control import (
    MAX_POLICY_PARTS,
    MAX_POLICY_VIEW_BYTES,
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
    receive_message,
    send_message,
)
from trellis.agent.dataplane.engine import EngineConfig, InboundEngine, OutboundEngine
from trellis.agent.dataplane.flowsync import FlowChannel
from trellis.agent.dataplane.packets import PLAIN_VNET_HEADER, VNET_HEADER_LENGTH
from trellis.agent.dataplane.policy import PolicyHook
from trellis.agent.dataplane.udp import UdpReceiver, UdpSender
from trellis.agent.esp.errors import EspError
from trellis.agent.filter.records import FlowRecord
from trellis.v1 import common_pb2

# Flow records kept while this worker has no policy filter (the newest; a channel's worth).
MAX_EARLY_FLOW_RECORDS = 1024
BATCH = 64  # reads per poll round: bounds latency for control messages and flushes
POLL_INTERVAL = 1.0  # seconds between lifetime checks when idle
READ_BUFFER = 65536 + VNET_HEADER_LENGTH
PR_SET_PDEATHSIG = 1
ROLES = ("outbound", "inbound")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Worker:
    def __init__(
        self, tun_fd: int, udp: socket.socket, control: socket.socket, flows: FlowChannel | None = None
    ) -> None:
        self.tun_fd = tun_fd
        self.udp = udp
        self.control = control
        self.flows = flows
        self.policy: PolicyHook | None = None
        self.role = ""
        self._policy_parts: list[bytes] = []
        # the other worker's flow records that came before this worker had a policy filter
        self._early_records: deque[FlowRecord] = deque(maxlen=MAX_EARLY_FLOW_RECORDS)
        self.running = True
        self.config = EngineConfig()
        self.outbound: OutboundEngine | None = None
        self.inbound: InboundEngine | None = None
        self.sender: UdpSender | None = None
        self.receiver: UdpReceiver | None = None
        self._buffer = bytearray(READ_BUFFER)
        self._view = memoryview(self._buffer)

    # ---- control ----------------------------------------------------------------------

    def handle_control(self) -> None:
        message = receive_message(self.control)
        if message is None:
            self.running = False
            return
        if not isinstance(message, Request):
            return
        try:
            reply = self._execute(message)
        except (EspError, ValueError, OSError) as error:
            reply = Reply(request_id=message.request_id, error=f"{type(error).__name__}: {error}")
        send_message(self.control, reply)

    def _execute(self, request: Request) -> Reply:
        command = request.command
        now = time.monotonic()
        engine = self.outbound or self.inbound
        if isinstance(command, Configure):
            if engine is not None or command.role not in ROLES:
                raise ValueError(f"cannot configure as {command.role!r}")
            self.config = command.config
            self.role = command.role
            if command.role == "outbound":
                self.outbound = OutboundEngine(command.config)
                self.sender = UdpSender(self.udp, gso=command.config.udp_gso)
            else:
                self.inbound = InboundEngine(command.config)
                self.receiver = UdpReceiver(self.udp, gro=command.config.udp_gro)
        elif engine is None:
            raise ValueError("worker not configured")
        elif isinstance(command, InstallSa):
            engine.install(command.params, now)
        elif isinstance(command, RemoveSa):
            engine.remove(command.spi)
        elif isinstance(command, SetFilter):
            engine.filter = command.filter
            self.policy = None
        elif isinstance(command, SetPolicy):
            self._set_policy(engine, command)
        elif isinstance(command, SetTunMtu):
            engine.tun_mtu = command.mtu
        elif isinstance(command, Snapshot):
            stats = engine.stats
            traffic = dict(stats.traffic)
            if self.sender is not None:
                traffic.update(
                    esp_tx=self.sender.sent_datagrams,
                    udp_send_calls=self.sender.sent_calls,
                    esp_tx_dropped=self.sender.dropped,
                )
            if self.receiver is not None:
                traffic["udp_recv_calls"] = self.receiver.calls
            if self.policy is not None:
                policy = self.policy.counters()
                traffic[f"policy_flows_{self.role}"] = policy.pop("policy_flows")
                traffic.update(policy)
            return Reply(
                request_id=request.request_id,
                counters=Counters(
                    sas=tuple(engine.snapshot(now)),
                    drops=dict(stats.drops),
                    policy_reasons=dict(stats.policy_reasons),
                    traffic=traffic,
                ),
            )
        elif isinstance(command, Stop):
            self.running = False
        return Reply(request_id=request.request_id)

    def _set_policy(self, engine: OutboundEngine | InboundEngine, command: SetPolicy) -> None:
        if command.data is None:
            self._policy_parts = []
            self.policy = None
            engine.filter = None
            return
        if command.part == 0:
            self._policy_parts = []
        if command.part != len(self._policy_parts) or not 0 < command.parts <= MAX_POLICY_PARTS:
            self._policy_parts = []
            raise ValueError(f"policy view part {command.part} of {command.parts} out of order")
        self._policy_parts.append(command.data)
        if sum(map(len, self._policy_parts)) > MAX_POLICY_VIEW_BYTES:
            self._policy_parts = []
            raise ValueError(f"policy view larger than {MAX_POLICY_VIEW_BYTES} bytes")
        if len(self._policy_parts) < command.parts:
            return
        data, self._policy_parts = b"".join(self._policy_parts), []
        view = common_pb2.PolicyView()
        try:
            view.ParseFromString(data)
        except DecodeError as error:
            raise ValueError(f"policy view does not parse: {error}") from None
        if self.policy is None:
            self.policy = PolicyHook(view, self.flows)
            self.policy.wall_offset = time.time() - time.monotonic()
            early, self._early_records = list(self._early_records), deque(maxlen=MAX_EARLY_FLOW_RECORDS)
            self.policy.filter.import_flow_records(early, time.time())
            engine.filter = self.policy
        else:
            self.policy.update(view, time.time())

    def report_events(self, engine: OutboundEngine | InboundEngine) -> None:
        if engine.events:
            events, engine.events = tuple(engine.events), []
            send_message(self.control, Events(events=events))

    # ---- loops ------------------------------------------------------------------------

    def run(self) -> None:
        while self.running and self.outbound is None and self.inbound is None:
            self.handle_control()
        if self.outbound is not None and self.sender is not None:
            outbound, sender = self.outbound, self.sender
            self._loop(self.tun_fd, outbound, lambda now: self._outbound_round(outbound, sender, now))
        elif self.inbound is not None and self.receiver is not None:
            inbound, receiver = self.inbound, self.receiver
            self._loop(self.udp.fileno(), inbound, lambda now: self._inbound_round(inbound, receiver, now))

    def _loop(
        self, data_fd: int, engine: OutboundEngine | InboundEngine, round_: Callable[[float], None]
    ) -> None:
        poller = select.poll()
        poller.register(self.control, select.POLLIN)
        poller.register(data_fd, select.POLLIN)
        control_fd = self.control.fileno()
        flows_fd = -1
        if self.flows is not None:
            flows_fd = self.flows.receive_fd
            poller.register(flows_fd, select.POLLIN)
        next_poll = time.monotonic() + POLL_INTERVAL
        while self.running:
            ready = poller.poll(POLL_INTERVAL * 1000)
            now = time.monotonic()
            policy = self.policy
            if policy is not None:
                policy.wall_offset = time.time() - now
            for fd, _mask in ready:
                if fd == control_fd:
                    self.handle_control()
                elif fd == flows_fd:
                    self.receive_flows(now)
                else:
                    round_(now)
            if now >= next_poll:
                engine.poll(now)
                self.report_events(engine)
                next_poll = now + POLL_INTERVAL

    def receive_flows(self, now: float) -> None:
        """The other worker's flow records, as they come (a miss also drains, see PolicyHook)."""
        if self.policy is not None:
            self.policy.drain(now + self.policy.wall_offset)
        elif self.flows is not None:
            # no filter here yet (the other worker got the view first): keep them for it
            self._early_records.extend(self.flows.receive())

    def _outbound_round(self, engine: OutboundEngine, sender: UdpSender, now: float) -> None:
        buffer, view, tun_fd = self._buffer, self._view, self.tun_fd
        for _ in range(BATCH):
            try:
                length = os.readv(tun_fd, [buffer])
            except BlockingIOError:
                break
            engine.handle_frame(view[:length], now)
        for endpoint, packets in engine.take_datagrams():
            sender.send(endpoint, packets)
        prefix = PLAIN_VNET_HEADER if self.config.vnet_header else b""
        for packet in engine.take_tun_writes():
            with contextlib.suppress(BlockingIOError):
                os.write(tun_fd, prefix + packet)
        self.report_events(engine)

    def _inbound_round(self, engine: InboundEngine, receiver: UdpReceiver, now: float) -> None:
        for _ in range(BATCH):
            received = receiver.receive()
            if received is None:
                break
            datagrams, source = received
            for datagram in datagrams:
                engine.handle_datagram(datagram, source, now)
        tun_fd = self.tun_fd
        for iov in engine.take_tun_writes():
            with contextlib.suppress(BlockingIOError):
                os.writev(tun_fd, iov)
        for message, source in engine.take_ike():
            # never stall the data path on a busy controller: IKE retransmits
            if not send_message(self.control, IkeDatagram(message=message, source=source), wait=False):
                engine.stats.traffic["ike_dropped"] += 1
        self.report_events(engine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tun-fd", type=int, required=True)
    parser.add_argument("--udp-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--flow-send-fd", type=int, help="the flow channel to the other worker")
    parser.add_argument("--flow-receive-fd", type=int, help="the flow channel from the other worker")
    args = parser.parse_args(argv)
    _die_with_parent()
    # The controller decides when we stop (a signal to the whole process group must not kill
    # the workers before their controller): Stop, the control socket closing, or its death.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    udp = socket.socket(fileno=args.udp_fd)
    control = socket.socket(fileno=args.control_fd)
    control.setblocking(True)
    flows = None
    if args.flow_send_fd is not None and args.flow_receive_fd is not None:
        flows = FlowChannel(args.flow_send_fd, args.flow_receive_fd)
    worker = Worker(args.tun_fd, udp, control, flows)
    try:
        worker.run()
    except (BrokenPipeError, ConnectionResetError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
