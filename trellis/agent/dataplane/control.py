"""Messages between the data plane's controller (the agent process) and its worker processes.

They travel pickled over a SOCK_SEQPACKET socketpair that only these processes hold; the
workers are started by the agent itself from this package, so unpickling is as trusted as
importing. Messages are frozen dataclasses.
"""

from __future__ import annotations

import pickle
import socket
from dataclasses import dataclass, field

from trellis.agent.dataplane.engine import EngineConfig
from trellis.agent.dataplane.hooks import PacketFilter
from trellis.agent.esp.constants import DropReason
from trellis.agent.esp.sa import LifetimeEvent, SaCounters, SaParams

CONTROL_BUFFER = 1 << 20  # bytes of socket buffer: a message must fit whole
MAX_MESSAGE = 256 << 10
# A PolicyView travels in parts of this size (a view may be larger than one message) ...
POLICY_PART_BYTES = 192 << 10
# ... and may be this large in all: the NetworkMap that carries it is bounded alike
# (trellis.agent.control.client.MAX_MAP_BYTES).
MAX_POLICY_VIEW_BYTES = 16 << 20
MAX_POLICY_PARTS = -(-MAX_POLICY_VIEW_BYTES // POLICY_PART_BYTES)

Endpoint = tuple[str, int]


# controller -> worker: requests, each answered by a Reply with the same id (in order)


@dataclass(frozen=True, slots=True)
class Configure:
    role: str  # "outbound" or "inbound"
    config: EngineConfig


@dataclass(frozen=True, slots=True)
class InstallSa:
    params: SaParams


@dataclass(frozen=True, slots=True)
class RemoveSa:
    spi: int


@dataclass(frozen=True, slots=True)
class SetFilter:
    filter: PacketFilter | None


@dataclass(frozen=True, slots=True)
class SetPolicy:
    """Part ``part`` of ``parts`` of a serialized PolicyView; the worker enforces the view when
    the last part arrives (building its filter, or updating it to keep the flows it allows).
    ``data`` None (one part): no policy filter any more."""

    data: bytes | None
    part: int = 0
    parts: int = 1


@dataclass(frozen=True, slots=True)
class SetTunMtu:
    mtu: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    pass


@dataclass(frozen=True, slots=True)
class Stop:
    pass


Command = Configure | InstallSa | RemoveSa | SetFilter | SetPolicy | SetTunMtu | Snapshot | Stop


@dataclass(frozen=True, slots=True)
class Request:
    request_id: int
    command: Command


# worker -> controller


@dataclass(frozen=True, slots=True)
class Counters:
    sas: tuple[SaCounters, ...]
    drops: dict[DropReason, int]
    policy_reasons: dict[str, int] = field(default_factory=dict)
    traffic: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    request_id: int
    counters: Counters | None = None
    error: str | None = None  # the command failed (e.g. bad SA parameters)


@dataclass(frozen=True, slots=True)
class Events:
    events: tuple[LifetimeEvent, ...]


@dataclass(frozen=True, slots=True)
class IkeDatagram:
    message: bytes  # without the non-ESP marker
    source: Endpoint


Message = Request | Reply | Events | IkeDatagram


def control_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CONTROL_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CONTROL_BUFFER)
    return a, b


def send_message(sock: socket.socket, message: Message, *, wait: bool = True) -> bool:
    """Send one message whole (SOCK_SEQPACKET keeps record boundaries). With ``wait`` False,
    drop it (returning False) rather than wait for room in the socket buffer."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"control message of {len(data)} bytes")
    try:
        sock.send(data, 0 if wait else socket.MSG_DONTWAIT)
    except BlockingIOError:
        if wait:
            raise
        return False
    return True


def decode_message(data: bytes) -> Message:
    message: Message = pickle.loads(data)
    return message


def receive_message(sock: socket.socket) -> Message | None:
    """One message, or None when the other side has closed."""
    data = sock.recv(MAX_MESSAGE)
    if not data:
        return None
    return decode_message(data)
