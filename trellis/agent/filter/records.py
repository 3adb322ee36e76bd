"""Flow records: how one copy of the filter's flow table tells another about its flows.

The userspace data plane runs one worker process per direction, each with its own filter; a
flow opened by one is answered through the other. A record carries what the other copy needs to
let the flow's packets through: the flow's tuple, the direction that opened it, the peer its
rule is for (as a ``peer_tag``), the state its packets changed (reply seen, FINs) and how long it
lasts. Records are fixed-size so that a byte stream of them never needs framing.

Codec: ``push_flow_record`` / ``pull_flow_records``. Garbage either parses or raises
``MalformedFlowRecord``, nothing else.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass

from trellis.agent.filter.flows import FLOW_REPLIED, TCP_FIN_OPENER, TCP_FIN_RESPONDER, FlowKey
from trellis.agent.filter.rules import PEER_TAG_BYTES, Direction

RECORD_VERSION = 1
# version, kind, flags, IP version, protocol, pad, src port, dst port, expires, peer tag, src, dst
FLOW_RECORD = struct.Struct(f"!BBBBBxHHd{PEER_TAG_BYTES}s16s16s")
FLOW_RECORD_SIZE = FLOW_RECORD.size

_OPENED_INBOUND = 0x10  # flags: the direction that opened the flow; the low bits are Flow.bits
_STATE_BITS = FLOW_REPLIED | TCP_FIN_OPENER | TCP_FIN_RESPONDER
_ADDRESS_LIMIT = {4: 1 << 32, 6: 1 << 128}


class RecordKind(enum.IntEnum):
    NEW = 1  # the flow was opened: let its replies through
    UPDATE = 2  # it saw a reply, a FIN, or traffic that keeps it alive longer
    END = 3  # it ended (a TCP RST): forget it


class MalformedFlowRecord(ValueError):
    """Bytes that are not flow records."""


@dataclass(frozen=True, slots=True)
class FlowRecord:
    kind: RecordKind
    key: FlowKey  # version, protocol, src, src port, dst, dst port of the opening packet
    opened: Direction
    peer_tag: bytes  # rules.peer_tag of the peer the flow's rule is for
    bits: int  # Flow.bits: FLOW_REPLIED, TCP_FIN_OPENER, TCP_FIN_RESPONDER
    expires: float  # Unix time at which the sender's copy ends unless traffic extends it


def push_flow_record(record: FlowRecord) -> bytes:
    version, protocol, src, src_port, dst, dst_port = record.key
    flags = (record.bits & _STATE_BITS) | (_OPENED_INBOUND if record.opened is Direction.INBOUND else 0)
    return FLOW_RECORD.pack(
        RECORD_VERSION,
        record.kind,
        flags,
        version,
        protocol,
        src_port,
        dst_port,
        record.expires,
        record.peer_tag,
        src.to_bytes(16),
        dst.to_bytes(16),
    )


def pull_flow_records(data: bytes | bytearray | memoryview) -> list[FlowRecord]:
    """Every record in ``data``, which must hold whole records only."""
    if len(data) % FLOW_RECORD_SIZE:
        raise MalformedFlowRecord(f"{len(data)} bytes are not whole {FLOW_RECORD_SIZE}-byte records")
    return [_pull(fields) for fields in FLOW_RECORD.iter_unpack(data)]


def _pull(fields: tuple[int, int, int, int, int, int, int, float, bytes, bytes, bytes]) -> FlowRecord:
    version, kind, flags, ip_version, protocol, src_port, dst_port, expires, tag, src_bytes, dst_bytes = (
        fields
    )
    if version != RECORD_VERSION:
        raise MalformedFlowRecord(f"record version {version}")
    if kind not in RecordKind.__members__.values():
        raise MalformedFlowRecord(f"record kind {kind}")
    if flags & ~(_STATE_BITS | _OPENED_INBOUND):
        raise MalformedFlowRecord(f"record flags {flags:#x}")
    limit = _ADDRESS_LIMIT.get(ip_version)
    src, dst = int.from_bytes(src_bytes), int.from_bytes(dst_bytes)
    if limit is None or src >= limit or dst >= limit:
        raise MalformedFlowRecord(f"IP version {ip_version} with these addresses")
    if not math.isfinite(expires):
        raise MalformedFlowRecord("expiry not a finite time")
    return FlowRecord(
        kind=RecordKind(kind),
        key=(ip_version, protocol, src, src_port, dst, dst_port),
        opened=Direction.INBOUND if flags & _OPENED_INBOUND else Direction.OUTBOUND,
        peer_tag=tag,
        bits=flags & _STATE_BITS,
        expires=expires,
    )
