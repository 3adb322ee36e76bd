"""The message-ID windows of an IKE SA (RFC 7296 section 2.3), size 1 in both directions.

Requests we send and requests we receive are counted separately. Our side keeps at most one
request outstanding (retransmitted with back-off until answered) and queues the rest; the
peer's side is answered in order, and the last answer is kept to be replayed when the peer
retransmits its request (section 2.1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from trellis.agent.ike.config import Address
from trellis.agent.ike.constants import ExchangeType
from trellis.agent.ike.message import Message
from trellis.agent.ike.payloads import Payload

if TYPE_CHECKING:
    from trellis.agent.ike.sa import IkeSa


@dataclass(frozen=True, slots=True, kw_only=True)
class Datagram:
    """One UDP datagram to send: ``data`` is the whole UDP payload (on the NAT-T port that
    includes the non-ESP marker), sent from our ``local_port`` to ``remote``."""

    data: bytes
    local_port: int
    remote: Address


class Exchange(Protocol):
    """A request we start: it builds its payloads when its turn comes (so that it sees the SA as
    it is then) and handles the response. ``failed`` is called when the response was an error
    or could not be used, ``abandoned`` when the IKE SA goes away first."""

    exchange_type: ExchangeType

    def wanted(self, sa: IkeSa) -> bool:
        """Still worth sending when its turn comes (the SA or CHILD SA may have moved on)."""
        ...

    def request_payloads(self, sa: IkeSa, now: float) -> tuple[Payload, ...]: ...

    def handle_response(self, sa: IkeSa, response: Message, raw: bytes, now: float) -> None: ...

    def failed(self, sa: IkeSa, reason: str, now: float) -> None: ...

    def abandoned(self, sa: IkeSa, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Step:
    """A queued local action without a message (e.g. "now delete the old IKE SA"), run when its
    turn in the request queue comes."""

    run: Callable[[float], None]


@dataclass(slots=True, kw_only=True)
class Outstanding:
    message_id: int
    exchange: Exchange
    datagrams: tuple[bytes, ...]  # IKE messages without the non-ESP marker
    tries: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """What a request handler answers, and what to do once the answer is sent."""

    payloads: tuple[Payload, ...]
    after: Callable[[float], None] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedResponse:
    message_id: int
    exchange: ExchangeType | int
    datagrams: tuple[bytes, ...]
