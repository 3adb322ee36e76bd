"""What each IKE SA timer does when it fires (RFC 7296 sections 2.1, 2.4, 2.8; RFC 3948)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from trellis.agent.ike.events import DownReason
from trellis.agent.ike.exchanges.create_child import CreateChild
from trellis.agent.ike.exchanges.informational import DeleteChildren, Liveness
from trellis.agent.ike.exchanges.rekey_ike import RekeyIke
from trellis.agent.ike.sa import IkeSa, Timer
from trellis.agent.ike.states import ChildInput, ChildState, LocalAction

TimerHandler = Callable[[IkeSa, bytes, float], None]


def _retransmit(sa: IkeSa, key: bytes, now: float) -> None:
    sa.retransmit_or_give_up(now)


def _half_open(sa: IkeSa, key: bytes, now: float) -> None:
    sa.fail("IKE_AUTH did not complete in time", now)


def _rekey_ike(sa: IkeSa, key: bytes, now: float) -> None:
    pending = [sa.outstanding.exchange] if sa.outstanding is not None else []
    if sa.accepts(LocalAction.REKEY_IKE) and not any(isinstance(x, RekeyIke) for x in [*pending, *sa.queue]):
        sa.start(RekeyIke(), now)


def _expire_ike(sa: IkeSa, key: bytes, now: float) -> None:
    sa.delete(DownReason.EXPIRED, now)


def _reauth(sa: IkeSa, key: bytes, now: float) -> None:
    if sa.accepts(LocalAction.REAUTHENTICATE):
        sa.host.reauthenticate(sa, now)


def _dpd(sa: IkeSa, key: bytes, now: float) -> None:
    peer = sa.peer
    if peer is None or peer.dpd_delay <= 0 or not sa.accepts(LocalAction.LIVENESS):
        return
    if sa.outstanding is not None or sa.queue:
        sa.set_timer(Timer.DPD, now + peer.dpd_delay)  # a request is out: it detects death itself
        return
    sa.start(Liveness(), now)


def _keepalive(sa: IkeSa, key: bytes, now: float) -> None:
    sa.send_keepalive(now)


def _rekeyed_wait(sa: IkeSa, key: bytes, now: float) -> None:
    sa.close(DownReason.REKEYED, now, detail="the peer never deleted the replaced IKE SA")


def _rekey_child(sa: IkeSa, spi: bytes, now: float) -> None:
    child = sa.children.get(spi)
    if child is None or not child.accepts(ChildInput.START_REKEY) or not sa.accepts(LocalAction.REKEY_CHILD):
        return
    child.machine.move(ChildState.REKEYING)
    sa.start(CreateChild(child.config, rekey=child), now)


def _expire_child(sa: IkeSa, spi: bytes, now: float) -> None:
    child = sa.children.get(spi)
    if child is None:
        return
    if child.accepts(ChildInput.START_DELETE) and sa.accepts(LocalAction.DELETE_CHILD):
        reason = DownReason.REKEYED if child.state == ChildState.REKEYED else DownReason.EXPIRED
        child.machine.move(ChildState.DELETING)
        sa.start(DeleteChildren(children=(child,), reason=reason), now)
    elif child.state != ChildState.DELETING:
        sa.remove_child(child, DownReason.EXPIRED, now)


TIMER_HANDLERS: Mapping[Timer, TimerHandler] = MappingProxyType(
    {
        Timer.RETRANSMIT: _retransmit,
        Timer.HALF_OPEN: _half_open,
        Timer.IKE_REKEY: _rekey_ike,
        Timer.IKE_EXPIRE: _expire_ike,
        Timer.REAUTH: _reauth,
        Timer.DPD: _dpd,
        Timer.KEEPALIVE: _keepalive,
        Timer.REKEYED_WAIT: _rekeyed_wait,
        Timer.CHILD_REKEY: _rekey_child,
        Timer.CHILD_EXPIRE: _expire_child,
    }
)
