"""The port-4500 UDP socket: ESP-in-UDP and IKE share it (RFC 3948).

Sending uses UDP GSO (UDP_SEGMENT, Linux 4.18): a run of equal-sized ESP packets to one peer
goes down in one sendmsg and is cut into datagrams by the kernel (or the NIC). Receiving uses
UDP GRO (UDP_GRO, Linux 5.0): one recvmsg may return several datagrams of one sender glued
together, with their size in a control message.
"""

from __future__ import annotations

import errno
import select
import socket
import struct

from trellis.agent.esp.transforms import Buffer

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SOCKET_BUFFER = 4 << 20  # bytes; bursts of 64 KB super-packets need room
# The kernel accepts at most 64 segments (UDP_MAX_SEGMENTS) and 64 KB per GSO send.
MAX_GSO_SEGMENTS = 64
MAX_GSO_BYTES = 65000
RECEIVE_BUFFER = 65536 + 4096
SEND_RETRY_TIMEOUT_MS = 100  # wait for buffer space once before dropping a batch

_GSO_SIZE = struct.Struct("=H")
_GRO_SIZE = struct.Struct("=i")
_CMSG_SPACE = socket.CMSG_SPACE(_GRO_SIZE.size)

Endpoint = tuple[str, int]


def open_udp_socket(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        for option, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # *BUFFORCE as root
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


class UdpSender:
    """Sends ESP packets, batching equal-sized runs with UDP GSO when the kernel allows it."""

    def __init__(self, sock: socket.socket, *, gso: bool = True) -> None:
        self.sock = sock
        self.gso = gso
        self.sent_datagrams = 0
        self.sent_calls = 0
        self.dropped = 0

    def send(self, endpoint: Endpoint, packets: list[bytes]) -> None:
        """Send ``packets`` (in order) to ``endpoint``."""
        if not self.gso:
            for packet in packets:
                self._sendmsg([packet], None, endpoint, 1)
            return
        start = 0
        count = len(packets)
        while start < count:
            size = len(packets[start])
            end = start + 1
            total = size
            # A GSO run: equal sizes, and optionally one shorter packet to end it.
            while end < count and end - start < MAX_GSO_SEGMENTS:
                length = len(packets[end])
                if length > size or total + length > MAX_GSO_BYTES:
                    break
                total += length
                end += 1
                if length < size:
                    break
            if end - start == 1:
                self._sendmsg([packets[start]], None, endpoint, 1)
            else:
                self._sendmsg(packets[start:end], size, endpoint, end - start)
            start = end

    def _sendmsg(self, buffers: list[bytes], segment: int | None, endpoint: Endpoint, count: int) -> None:
        ancillary = [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(segment))] if segment is not None else []
        for attempt in range(2):
            try:
                self.sock.sendmsg(buffers, ancillary, 0, endpoint)
            except BlockingIOError:
                if attempt == 0:
                    select.select([], [self.sock], [], SEND_RETRY_TIMEOUT_MS / 1000)
                    continue
                self.dropped += count
                return
            except OSError as e:
                if segment is not None and e.errno in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT):
                    self.gso = False  # the kernel or route cannot segment: send one by one
                    for buffer in buffers:
                        self._sendmsg([buffer], None, endpoint, 1)
                    return
                if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED, errno.EMSGSIZE):
                    self.dropped += count
                    return
                raise
            self.sent_calls += 1
            self.sent_datagrams += count
            return


class UdpReceiver:
    """Reads datagrams; with GRO, splits glued datagrams apart again."""

    def __init__(self, sock: socket.socket, *, gro: bool = True) -> None:
        self.sock = sock
        self.gro = enable_gro(sock) if gro else False
        self._buffer = bytearray(RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self.calls = 0

    def receive(self) -> tuple[list[memoryview], Endpoint] | None:
        """The datagrams of one recvmsg (views into a buffer reused by the next call) and
        their sender; None when nothing is waiting."""
        try:
            length, ancillary, _flags, source = self.sock.recvmsg_into([self._buffer], _CMSG_SPACE)
        except BlockingIOError:
            return None
        self.calls += 1
        segment = length
        for level, kind, data in ancillary:
            if level == SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
                segment = _GRO_SIZE.unpack_from(data)[0] or length
        view = self._view
        if segment >= length:
            return [view[:length]], (source[0], source[1])
        return [view[i : min(i + segment, length)] for i in range(0, length, segment)], (source[0], source[1])


def send_plain(sock: socket.socket, data: Buffer, endpoint: Endpoint) -> bool:
    """One datagram, never blocking (IKE messages and keepalives); False if it was dropped."""
    try:
        sock.sendto(data, endpoint)
    except (BlockingIOError, OSError):
        return False
    return True
