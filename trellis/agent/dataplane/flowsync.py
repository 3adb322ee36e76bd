"""The flow channel: how the two worker processes tell each other about the flows they open.

Each worker has its own copy of the policy filter and sees one direction of every flow: a flow
opened outbound is answered through the inbound worker, and the other way round. So each worker
sends the other the flow records its filter makes (trellis.agent.filter.records) over a pipe of
its own, before it forwards the packet that made them:

    outbound worker ── pipe ──> inbound worker
    outbound worker <── pipe ── inbound worker

Why pipes: records are fixed-size and a non-blocking write of at most PIPE_BUF bytes is atomic
(POSIX: all of it or EAGAIN), so the stream holds whole records only and needs no framing; a
full pipe never blocks the writer. Bounds: FLOW_CHANNEL_BYTES of backlog per direction (the
pipe's capacity), MAX_RECORDS_PER_WRITE records per write, MAX_DRAIN_BYTES read per drain. When
the pipe is full the records are not sent (counted in ``dropped_full``) and the caller closes
the flows they opened again: a flow its replies could not pass is never opened.
"""

from __future__ import annotations

import fcntl
import os
import select

from trellis.agent.filter.records import (
    FLOW_RECORD_SIZE,
    FlowRecord,
    MalformedFlowRecord,
    pull_flow_records,
    push_flow_record,
)

FLOW_CHANNEL_BYTES = 64 << 10  # backlog of one direction (≈ 1,100 records)
MAX_RECORDS_PER_WRITE = select.PIPE_BUF // FLOW_RECORD_SIZE  # one atomic write
READ_CHUNK = MAX_RECORDS_PER_WRITE * FLOW_RECORD_SIZE
MAX_DRAIN_BYTES = FLOW_CHANNEL_BYTES  # per drain: the worker goes back to packets after that


def flow_pipe() -> tuple[int, int]:
    """A non-blocking pipe (read end, write end) of FLOW_CHANNEL_BYTES, closed on exec (the
    data plane passes the ends its workers need explicitly)."""
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, FLOW_CHANNEL_BYTES)
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    return read_fd, write_fd


class FlowChannel:
    """One worker's ends: it sends on ``send_fd`` and receives on ``receive_fd`` (both
    non-blocking). The counters are read by the worker's snapshot."""

    def __init__(self, send_fd: int, receive_fd: int) -> None:
        self.send_fd = send_fd
        self.receive_fd = receive_fd
        self.sent = 0  # records written
        self.received = 0  # records read
        self.dropped_full = 0  # records not written: the pipe was full
        self.malformed = 0  # bytes read that were not records (a bug): chunks discarded
        self._buffer = bytearray(READ_CHUNK)
        self._carry = b""  # a partial record from the last read (not expected with pipes)

    def send(self, records: list[FlowRecord]) -> list[FlowRecord]:
        """Write ``records``; returns those that could not be written (the pipe is full)."""
        for start in range(0, len(records), MAX_RECORDS_PER_WRITE):
            batch = records[start : start + MAX_RECORDS_PER_WRITE]
            data = b"".join(push_flow_record(record) for record in batch)
            try:
                os.write(self.send_fd, data)  # all or EAGAIN: len(data) <= PIPE_BUF
            except BlockingIOError:
                lost = records[start:]
                self.dropped_full += len(lost)
                return lost
            self.sent += len(batch)
        return []

    def receive(self) -> list[FlowRecord]:
        """The records waiting (at most MAX_DRAIN_BYTES of them); empty if none."""
        records: list[FlowRecord] = []
        total = 0
        while total < MAX_DRAIN_BYTES:
            try:
                length = os.readv(self.receive_fd, [self._buffer])
            except BlockingIOError:
                break
            if length == 0:
                break  # the other worker is gone; the data plane notices through its control socket
            total += length
            data = self._carry + self._buffer[:length]
            whole = len(data) - len(data) % FLOW_RECORD_SIZE
            self._carry = bytes(data[whole:])
            try:
                records.extend(pull_flow_records(data[:whole]))
            except MalformedFlowRecord:
                self.malformed += 1
            if length < len(self._buffer):
                break
        self.received += len(records)
        return records

    def close(self) -> None:
        for fd in (self.send_fd, self.receive_fd):
            os.close(fd)
