"""INFORMATIONAL exchanges (RFC 7296 sections 1.4, 1.5, 2.4, 3.11): deleting CHILD SAs and the
IKE SA, liveness checks, and the error notices a peer sends outside a response.

An empty INFORMATIONAL request is a liveness check and is always answered. Deleting CHILD SAs
is answered with a Delete of our halves, except those we are deleting ourselves at the same time
(section 1.4.1).
"""

from __future__ import annotations

from collections.abc import Sequence

from trellis.agent.ike.child import ChildSa
from trellis.agent.ike.constants import ExchangeType, NotifyType, ProtocolId
from trellis.agent.ike.events import AuthenticationFailed, DownReason
from trellis.agent.ike.message import Message
from trellis.agent.ike.payloads import Delete, Payload
from trellis.agent.ike.sa import IkeSa, find_notify
from trellis.agent.ike.states import ChildState, IkeState
from trellis.agent.ike.window import Reply


class DeleteChildren:
    """Delete CHILD SAs we hold (already moved to DELETING by whoever queued this)."""

    exchange_type = ExchangeType.INFORMATIONAL

    def __init__(self, *, children: Sequence[ChildSa], reason: DownReason) -> None:
        self.children = tuple(children)
        self.reason = reason

    def _live(self) -> tuple[ChildSa, ...]:
        return tuple(c for c in self.children if c.state != ChildState.DELETED)

    def wanted(self, sa: IkeSa) -> bool:
        return sa.state in (IkeState.ESTABLISHED, IkeState.REKEYED) and bool(self._live())

    def request_payloads(self, sa: IkeSa, now: float) -> tuple[Payload, ...]:
        return (Delete(protocol_id=ProtocolId.ESP, spis=tuple(c.inbound_spi for c in self._live())),)

    def handle_response(self, sa: IkeSa, response: Message, raw: bytes, now: float) -> None:
        self._forget(sa, now)

    def _forget(self, sa: IkeSa, now: float) -> None:
        for child in self._live():
            sa.remove_child(child, self.reason, now)

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        self._forget(sa, now)

    def abandoned(self, sa: IkeSa, now: float) -> None:
        pass


class DeleteSpis:
    """Delete CHILD SAs the peer installed but we refused (we never announced them)."""

    exchange_type = ExchangeType.INFORMATIONAL

    def __init__(self, *, spis: Sequence[bytes]) -> None:
        self.spis = tuple(spis)

    def wanted(self, sa: IkeSa) -> bool:
        return sa.state == IkeState.ESTABLISHED and bool(self.spis)

    def request_payloads(self, sa: IkeSa, now: float) -> tuple[Payload, ...]:
        return (Delete(protocol_id=ProtocolId.ESP, spis=self.spis),)

    def handle_response(self, sa: IkeSa, response: Message, raw: bytes, now: float) -> None:
        pass

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        pass

    def abandoned(self, sa: IkeSa, now: float) -> None:
        pass


class DeleteIke:
    exchange_type = ExchangeType.INFORMATIONAL

    def __init__(self, *, reason: DownReason) -> None:
        self.reason = reason

    def wanted(self, sa: IkeSa) -> bool:
        return sa.state == IkeState.DELETING

    def request_payloads(self, sa: IkeSa, now: float) -> tuple[Payload, ...]:
        return (Delete(protocol_id=ProtocolId.IKE),)

    def handle_response(self, sa: IkeSa, response: Message, raw: bytes, now: float) -> None:
        sa.close(self.reason, now)

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.close(self.reason, now)

    def abandoned(self, sa: IkeSa, now: float) -> None:
        pass


class Liveness:
    """An empty INFORMATIONAL request (RFC 7296 section 2.4): no answer after the retransmissions
    means the peer is dead."""

    exchange_type = ExchangeType.INFORMATIONAL

    def wanted(self, sa: IkeSa) -> bool:
        return sa.state == IkeState.ESTABLISHED

    def request_payloads(self, sa: IkeSa, now: float) -> tuple[Payload, ...]:
        return ()

    def handle_response(self, sa: IkeSa, response: Message, raw: bytes, now: float) -> None:
        pass

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        pass

    def abandoned(self, sa: IkeSa, now: float) -> None:
        pass


def respond(sa: IkeSa, request: Message, now: float) -> Reply:
    deletes = request.find_all(Delete)
    if any(d.protocol_id == ProtocolId.IKE for d in deletes):
        reason = DownReason.REKEYED if sa.state == IkeState.REKEYED else DownReason.PEER_DELETED
        return Reply(payloads=(), after=lambda t: sa.close(reason, t))
    ours: list[bytes] = []
    for delete in deletes:
        if delete.protocol_id != ProtocolId.ESP:
            continue
        for spi in delete.spis:
            child = sa.find_child_by_outbound(spi)
            if child is None:
                continue  # unknown or already gone: nothing to answer (section 1.4.1)
            if child.state != ChildState.DELETING:
                ours.append(child.inbound_spi)
            reason = DownReason.REKEYED if child.state == ChildState.REKEYED else DownReason.PEER_DELETED
            sa.remove_child(child, reason, now)
    if find_notify(request, NotifyType.AUTHENTICATION_FAILED) is not None:
        sa.host.emit(
            AuthenticationFailed(
                peer=sa.peer_name,
                remote=sa.remote,
                reason="the peer refused our authentication",
                by_peer=True,
            )
        )
        return Reply(payloads=(), after=lambda t: sa.close(DownReason.AUTHENTICATION_FAILED, t))
    payloads: tuple[Payload, ...] = (Delete(protocol_id=ProtocolId.ESP, spis=tuple(ours)),) if ours else ()
    return Reply(payloads=payloads)
