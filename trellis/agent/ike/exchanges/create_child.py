"""CREATE_CHILD_SA for CHILD SAs in both roles: a new CHILD SA, or the rekey of one with
optional PFS (RFC 7296 sections 1.3.1, 1.3.3, 2.8, 2.8.1, 2.25.1). The IKE SA rekey form of
the exchange lives in ``rekey_ike``; ``respond`` dispatches between them.

Simultaneous rekey of one CHILD SA (section 2.8.1): each side answers the other, so two new SAs
exist; the one created by the exchange holding the lowest of the four nonces is redundant and is
deleted by whoever initiated that exchange, and the winner deletes the old SA.
"""

from __future__ import annotations

import logging
import secrets

from trellis.agent.ike.child import ChildSa, PeerRekey
from trellis.agent.ike.config import ChildConfig
from trellis.agent.ike.constants import DhId, ExchangeType, NotifyType, ProtocolId
from trellis.agent.ike.crypto.dh import KeyExchange
from trellis.agent.ike.errors import (
    ChildSaNotFound,
    IkePeerError,
    MalformedMessage,
    TemporaryFailure,
    TsUnacceptable,
)
from trellis.agent.ike.events import ChildSaFailed, DownReason
from trellis.agent.ike.exchanges.childsa import accept_child, answer_child, select_child_config
from trellis.agent.ike.exchanges.informational import DeleteChildren, DeleteSpis
from trellis.agent.ike.exchanges.rekey_ike import RekeyIke, answer_ike_rekey
from trellis.agent.ike.message import Message
from trellis.agent.ike.payloads import (
    KeyExchange as KePayload,
)
from trellis.agent.ike.payloads import (
    Nonce,
    Notify,
    Payload,
    SecurityAssociation,
    TsInitiator,
    TsResponder,
)
from trellis.agent.ike.proposals import esp_sa_payload, offered_groups, pfs_group
from trellis.agent.ike.sa import NONCE_LENGTH, IkeSa, Timer, error_notifies, find_notify
from trellis.agent.ike.selectors import narrow
from trellis.agent.ike.states import ChildInput, ChildState, IkeState
from trellis.agent.ike.window import Reply

log = logging.getLogger("trellis.agent.ike")

TEMPORARY_FAILURE_RETRY = (2.0, 10.0)  # seconds: retry a rekey the peer put off (section 2.25)


class CreateChild:
    """Create a CHILD SA from ``config``, or rekey ``rekey`` (already moved to REKEYING)."""

    exchange_type = ExchangeType.CREATE_CHILD_SA

    def __init__(
        self,
        config: ChildConfig,
        *,
        rekey: ChildSa | None = None,
        group: DhId | None = None,
        retries: int = 0,
    ) -> None:
        self.config = config
        self.rekey = rekey
        self.group = group if group is not None else pfs_group(config.proposals)
        self.retries = retries
        self.spi = b""
        self.nonce = b""
        self.ke: KeyExchange | None = None
        self.local = rekey.local_ts if rekey is not None else config.local_ts
        self.remote = rekey.remote_ts if rekey is not None else config.remote_ts

    def wanted(self, sa: IkeSa) -> bool:
        return sa.state == IkeState.ESTABLISHED and (
            self.rekey is None or self.rekey.state == ChildState.REKEYING
        )

    def request_payloads(self, sa: IkeSa, now: float) -> tuple[Payload, ...]:
        self.spi = sa.host.new_child_spi()
        self.nonce = secrets.token_bytes(NONCE_LENGTH)
        self.ke = KeyExchange.generate(self.group) if self.group is not None else None
        payloads: list[Payload] = []
        if self.rekey is not None:
            payloads.append(
                Notify(
                    notify_type=NotifyType.REKEY_SA, protocol_id=ProtocolId.ESP, spi=self.rekey.inbound_spi
                )
            )
        payloads += [
            esp_sa_payload(self.config.proposals, spi=self.spi, with_dh=True),
            Nonce(data=self.nonce),
        ]
        if self.ke is not None:
            payloads.append(KePayload(group=self.ke.group, data=self.ke.public_data))
        payloads += [TsInitiator(selectors=self.local), TsResponder(selectors=self.remote)]
        return tuple(payloads)

    def _revert(self, sa: IkeSa, now: float, *, retry_in: float | None = None) -> None:
        old = self.rekey
        if old is None or old.state != ChildState.REKEYING:
            return
        old.machine.move(ChildState.INSTALLED)
        owner = sa.owner_of(old)
        if owner is not None and retry_in is not None:
            owner.set_timer(Timer.CHILD_REKEY, now + retry_in, old.inbound_spi)

    def _report(self, sa: IkeSa, reason: str) -> None:
        if sa.peer is not None:
            sa.host.emit(ChildSaFailed(peer=sa.peer.name, ike_sa=sa.id, name=self.config.name, reason=reason))

    def handle_response(self, sa: IkeSa, response: Message, raw: bytes, now: float) -> None:
        if sa.state != IkeState.ESTABLISHED:
            self._revert(sa, now)
            return
        errors = error_notifies(response)
        if errors:
            self._refused(sa, errors[0], now)
            return
        nonce = response.find(Nonce)
        if nonce is None:
            raise MalformedMessage("CREATE_CHILD_SA response without a Nonce")
        try:
            child = accept_child(
                sa,
                response,
                config=self.config,
                our_spi=self.spi,
                nonce_i=self.nonce,
                nonce_r=nonce.data,
                ke=self.ke,
                with_dh=True,
                proposed_local=self.local,
                proposed_remote=self.remote,
                now=now,
            )
        except IkePeerError as e:
            self._revert(sa, now, retry_in=sa.host.jitter(60.0) + 30.0)
            self._report(sa, str(e))
            sa.start(DeleteSpis(spis=(self.spi,)), now)  # the peer installed what it answered
            return
        self.ke = None
        if self.rekey is None:
            sa.add_child(child, now)
        else:
            self._finish_rekey(sa, self.rekey, child, nonce.data, now)

    def _refused(self, sa: IkeSa, error: Notify, now: float) -> None:
        kind = error.notify_type
        groups = offered_groups(self.config.proposals)
        if (
            kind == NotifyType.INVALID_KE_PAYLOAD
            and len(error.data) == 2
            and self.retries < sa.settings.max_init_retries
        ):
            wanted = int.from_bytes(error.data, "big")
            if wanted in groups and wanted != self.group:
                retry = CreateChild(
                    self.config, rekey=self.rekey, group=DhId(wanted), retries=self.retries + 1
                )
                sa.start(retry, now, first=True)
                return
        if kind == NotifyType.TEMPORARY_FAILURE and self.rekey is not None:
            low, high = TEMPORARY_FAILURE_RETRY
            self._revert(sa, now, retry_in=low + sa.host.jitter(high - low))
            return
        if kind == NotifyType.CHILD_SA_NOT_FOUND and self.rekey is not None:
            sa.remove_child(self.rekey, DownReason.PEER_DELETED, now)
            return
        self._revert(sa, now, retry_in=sa.host.jitter(60.0) + 30.0)
        self._report(sa, f"refused with {kind!r}")

    def _finish_rekey(self, sa: IkeSa, old: ChildSa, child: ChildSa, nonce_r: bytes, now: float) -> None:
        if old.state == ChildState.DELETED:
            # The peer deleted the SA we were rekeying (section 2.25.1): drop the new one too.
            sa.add_child(child, now)
            child.machine.move(ChildState.DELETING)
            sa.start(DeleteChildren(children=(child,), reason=DownReason.DELETED), now)
            return
        collision = old.peer_rekey
        sa.add_child(child, now, replaces=old)
        if old.state == ChildState.REKEYING:
            old.machine.move(ChildState.REKEYED)
        if collision is not None:
            lowest = min(self.nonce, nonce_r, collision.nonce_i, collision.nonce_r)
            if lowest in (self.nonce, nonce_r):
                # Our exchange holds the lowest nonce: our new SA is the redundant one; the peer
                # deletes the old SA (we keep a backstop in case it does not).
                child.machine.move(ChildState.DELETING)
                sa.start(DeleteChildren(children=(child,), reason=DownReason.REKEYED), now)
                owner = sa.owner_of(old)
                if owner is not None:
                    owner.set_timer(Timer.CHILD_EXPIRE, now + sa.settings.rekeyed_sa_timeout, old.inbound_spi)
                return
        if old.state == ChildState.REKEYED:
            old.machine.move(ChildState.DELETING)
            sa.start(DeleteChildren(children=(old,), reason=DownReason.REKEYED), now)

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        self._revert(sa, now, retry_in=sa.host.jitter(60.0) + 30.0)
        self._report(sa, reason)

    def abandoned(self, sa: IkeSa, now: float) -> None:
        self.ke = None


def respond(sa: IkeSa, request: Message, now: float) -> Reply:
    if sa.state != IkeState.ESTABLISHED:
        raise TemporaryFailure(f"the IKE SA is {sa.state.value}")
    sa_payload = request.find(SecurityAssociation)
    nonce = request.find(Nonce)
    if sa_payload is None or nonce is None:
        raise MalformedMessage("CREATE_CHILD_SA request without SA or Nonce")
    if any(p.protocol == ProtocolId.IKE for p in sa_payload.proposals):
        return answer_ike_rekey(sa, request, sa_payload, nonce, now)
    out = sa.outstanding
    if out is not None and isinstance(out.exchange, RekeyIke):
        raise TemporaryFailure("our IKE SA rekey is in progress (RFC 7296 section 2.25.2)")
    tsi = request.find(TsInitiator)
    tsr = request.find(TsResponder)
    if tsi is None or tsr is None:
        raise MalformedMessage("CREATE_CHILD_SA request without TSi or TSr")
    ke = request.find(KePayload)
    nonce_r = secrets.token_bytes(NONCE_LENGTH)
    peer = sa.require_peer()
    rekey = find_notify(request, NotifyType.REKEY_SA)
    old: ChildSa | None = None
    if rekey is not None:
        old = sa.child_by_outbound(rekey.spi)
        if old is None:
            raise ChildSaNotFound(f"no CHILD SA with outbound SPI {rekey.spi.hex()}")
        if not old.accepts(ChildInput.PEER_REKEY):
            raise TemporaryFailure(f"CHILD SA {old.name} is {old.state.value}")
        config = old.config
        local_ts, remote_ts = narrow(tsr.selectors, config.local_ts), narrow(tsi.selectors, config.remote_ts)
        if not local_ts or not remote_ts:
            raise TsUnacceptable("the rekey's traffic selectors leave our policy")
    else:
        config, local_ts, remote_ts = select_child_config(peer, tsi, tsr)
    child, payloads = answer_child(
        sa,
        config=config,
        sa_payload=sa_payload,
        local_ts=local_ts,
        remote_ts=remote_ts,
        nonce_i=nonce.data,
        nonce_r=nonce_r,
        ke=ke,
        with_dh=True,
        now=now,
    )
    if old is None:
        sa.add_child(child, now)
    else:
        ours_out = out is not None and isinstance(out.exchange, CreateChild) and out.exchange.rekey is old
        if old.state == ChildState.REKEYING and ours_out:
            old.peer_rekey = PeerRekey(child=child, nonce_i=nonce.data, nonce_r=nonce_r)
        else:
            old.machine.move(ChildState.REKEYED)
            # The initiator deletes the old SA; if it never does, expire it ourselves.
            sa.set_timer(
                Timer.CHILD_EXPIRE, min(old.expires_at, now + sa.settings.rekeyed_sa_timeout), old.inbound_spi
            )
        sa.add_child(child, now, replaces=old)
    return Reply(payloads=(payloads[0], Nonce(data=nonce_r), *payloads[1:]))
