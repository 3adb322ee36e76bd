"""Rekeying the IKE SA with CREATE_CHILD_SA (RFC 7296 sections 1.3.2, 2.8, 2.8.2, 2.18).

The new IKE SA gets new SPIs and keys derived from the old SK_d; its message IDs start at 0 and
the CHILD SAs move over. Whoever initiated the rekey deletes the old IKE SA. In a simultaneous
rekey each side answers the other; the new SA made by the exchange holding the lowest of the four
nonces is redundant and is deleted by its initiator, and the CHILD SAs go to the other one.
"""

from __future__ import annotations

import secrets

from trellis.agent.ike.constants import DhId, ExchangeType, NotifyType
from trellis.agent.ike.crypto.dh import KeyExchange
from trellis.agent.ike.crypto.keys import IkeSaKeys, rekeyed_ike_sa_keys
from trellis.agent.ike.crypto.suites import IkeSuite
from trellis.agent.ike.errors import MalformedMessage, NoProposalChosen, TemporaryFailure
from trellis.agent.ike.events import DownReason, IkeSaRekeyed
from trellis.agent.ike.message import Message
from trellis.agent.ike.payloads import KeyExchange as KePayload
from trellis.agent.ike.payloads import Nonce, Notify, Payload, SecurityAssociation
from trellis.agent.ike.proposals import (
    IKE_SPI_LENGTH,
    check_ike_choice,
    choose_ike,
    ike_sa_payload,
    offered_groups,
)
from trellis.agent.ike.sa import NONCE_LENGTH, IkeRekeyCollision, IkeSa, Timer, error_notifies
from trellis.agent.ike.states import IkeState
from trellis.agent.ike.window import Reply

TEMPORARY_FAILURE_RETRY = (2.0, 10.0)
REFUSED_RETRY = 60.0


def spawn_rekeyed(
    old: IkeSa,
    *,
    initiator: bool,
    spi_i: bytes,
    spi_r: bytes,
    suite: IkeSuite,
    keys: IkeSaKeys,
    ni: bytes,
    nr: bytes,
    now: float,
) -> IkeSa:
    """The IKE SA that replaces ``old``: same peer, addresses and authentication, new keys."""
    new = IkeSa(
        old.host,
        initiator=initiator,
        spi_i=spi_i,
        spi_r=spi_r,
        local_port=old.local_port,
        remote=old.remote,
        peer=old.peer,
        candidates=old.candidates,
        state=IkeState.ESTABLISHED,
        now=now,
    )
    new.ni, new.nr = ni, nr
    new.install_keys(suite, keys)
    new.nat_here, new.nat_there = old.nat_here, old.nat_there
    new.peer_fragmentation = old.peer_fragmentation
    new.peer_hash_algorithms = old.peer_hash_algorithms
    new.peer_certreq = old.peer_certreq
    new.local_id = old.local_id
    new.peer_auth = old.peer_auth
    new.auth_expires = old.auth_expires
    new.credential_not_after = old.credential_not_after
    new.reauth_allowed = old.reauth_allowed
    old.host.adopt(new)
    new.establish(now, announce=False)
    return new


def complete_rekey(old: IkeSa, new: IkeSa, now: float, *, delete_old: bool) -> None:
    """Hand the CHILD SAs and queued requests over to ``new`` and retire ``old``."""
    old.move_children_to(new)
    new.queue.extend(old.queue)
    old.queue.clear()
    old.machine.move(IkeState.REKEYED)
    for timer in (Timer.IKE_REKEY, Timer.REAUTH, Timer.DPD, Timer.IKE_EXPIRE, Timer.KEEPALIVE):
        old.cancel_timer(timer)
    suite, _ = new.require_keys()
    new.announced = True
    old.host.emit(IkeSaRekeyed(peer=new.require_peer().name, old=old.id, new=new.id, suite=str(suite)))
    if delete_old:
        old.delete(DownReason.REKEYED, now)
    else:
        old.set_timer(Timer.REKEYED_WAIT, now + old.settings.rekeyed_sa_timeout)
    new.pump(now)


class RekeyIke:
    exchange_type = ExchangeType.CREATE_CHILD_SA

    def __init__(self, *, group: DhId | None = None, retries: int = 0) -> None:
        self.group = group
        self.retries = retries
        self.spi = b""
        self.nonce = b""
        self.ke: KeyExchange | None = None

    def wanted(self, sa: IkeSa) -> bool:
        return sa.state == IkeState.ESTABLISHED

    def request_payloads(self, sa: IkeSa, now: float) -> tuple[Payload, ...]:
        peer = sa.require_peer()
        suite, _ = sa.require_keys()
        group = self.group
        if group is None:
            group = (
                suite.dh if suite.dh in offered_groups(peer.ike_proposals) else peer.ike_proposals[0].dh[0]
            )
        self.spi = sa.host.new_ike_spi()
        self.nonce = secrets.token_bytes(NONCE_LENGTH)
        self.ke = KeyExchange.generate(group)
        return (
            ike_sa_payload(peer.ike_proposals, spi=self.spi),
            Nonce(data=self.nonce),
            KePayload(group=group, data=self.ke.public_data),
        )

    def handle_response(self, sa: IkeSa, response: Message, raw: bytes, now: float) -> None:
        if sa.state != IkeState.ESTABLISHED:
            return
        peer = sa.require_peer()
        errors = error_notifies(response)
        if errors:
            self._refused(sa, errors[0], now)
            return
        sa_payload = response.find(SecurityAssociation)
        nonce = response.find(Nonce)
        peer_ke = response.find(KePayload)
        if sa_payload is None or nonce is None or peer_ke is None or self.ke is None:
            raise MalformedMessage("IKE rekey response without SA, Nonce or KE")
        suite, peer_spi = check_ike_choice(peer.ike_proposals, sa_payload)
        if len(peer_spi) != IKE_SPI_LENGTH:
            raise MalformedMessage(f"IKE SPI of {len(peer_spi)} bytes")
        if suite.dh != self.ke.group or peer_ke.group != self.ke.group:
            raise NoProposalChosen("the IKE rekey answer chose another DH group than our KE")
        _, old_keys = sa.require_keys()
        shared = self.ke.shared_secret(peer_ke.data)
        self.ke = None
        keys = rekeyed_ike_sa_keys(
            old_keys, suite, shared, ni=self.nonce, nr=nonce.data, spi_i=self.spi, spi_r=peer_spi
        )
        new = spawn_rekeyed(
            sa,
            initiator=True,
            spi_i=self.spi,
            spi_r=peer_spi,
            suite=suite,
            keys=keys,
            ni=self.nonce,
            nr=nonce.data,
            now=now,
        )
        collision = sa.rekey_collision
        sa.rekey_collision = None
        if collision is not None and min(self.nonce, nonce.data, collision.nonce_i, collision.nonce_r) in (
            self.nonce,
            nonce.data,
        ):
            # We lost: the SA the peer made survives, ours goes; the peer deletes the old one.
            complete_rekey(sa, collision.sa, now, delete_old=False)
            new.delete(DownReason.REKEYED, now)
            return
        complete_rekey(sa, new, now, delete_old=True)

    def _refused(self, sa: IkeSa, error: Notify, now: float) -> None:
        peer = sa.require_peer()
        if (
            error.notify_type == NotifyType.INVALID_KE_PAYLOAD
            and len(error.data) == 2
            and self.retries < sa.settings.max_init_retries
        ):
            wanted = int.from_bytes(error.data, "big")
            if wanted in offered_groups(peer.ike_proposals):
                sa.start(RekeyIke(group=DhId(wanted), retries=self.retries + 1), now, first=True)
                return
        if error.notify_type == NotifyType.TEMPORARY_FAILURE:
            low, high = TEMPORARY_FAILURE_RETRY
            sa.set_timer(Timer.IKE_REKEY, now + low + sa.host.jitter(high - low))
            return
        sa.set_timer(Timer.IKE_REKEY, now + REFUSED_RETRY)  # the hard lifetime still bounds the SA

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        self.ke = None
        if sa.state == IkeState.ESTABLISHED:
            sa.set_timer(Timer.IKE_REKEY, now + REFUSED_RETRY)

    def abandoned(self, sa: IkeSa, now: float) -> None:
        self.ke = None


def answer_ike_rekey(
    sa: IkeSa, request: Message, sa_payload: SecurityAssociation, nonce: Nonce, now: float
) -> Reply:
    out = sa.outstanding
    if (
        out is not None
        and out.exchange.exchange_type == ExchangeType.CREATE_CHILD_SA
        and not isinstance(out.exchange, RekeyIke)
    ):
        raise TemporaryFailure("a CHILD SA exchange of ours is in progress (RFC 7296 section 2.25.2)")
    ke = request.find(KePayload)
    if ke is None:
        raise MalformedMessage("IKE rekey request without KE")
    peer = sa.require_peer()
    _, old_keys = sa.require_keys()
    new_spi = sa.host.new_ike_spi()
    choice = choose_ike(peer.ike_proposals, sa_payload, ke_group=int(ke.group), spi=new_spi)
    if len(choice.peer_spi) != IKE_SPI_LENGTH:
        raise MalformedMessage(f"IKE SPI of {len(choice.peer_spi)} bytes")
    exchange = KeyExchange.generate(choice.suite.dh)
    shared = exchange.shared_secret(ke.data)
    nonce_r = secrets.token_bytes(NONCE_LENGTH)
    keys = rekeyed_ike_sa_keys(
        old_keys, choice.suite, shared, ni=nonce.data, nr=nonce_r, spi_i=choice.peer_spi, spi_r=new_spi
    )
    new = spawn_rekeyed(
        sa,
        initiator=False,
        spi_i=choice.peer_spi,
        spi_r=new_spi,
        suite=choice.suite,
        keys=keys,
        ni=nonce.data,
        nr=nonce_r,
        now=now,
    )
    if out is not None and isinstance(out.exchange, RekeyIke):
        sa.rekey_collision = IkeRekeyCollision(sa=new, nonce_i=nonce.data, nonce_r=nonce_r)
    else:
        complete_rekey(sa, new, now, delete_old=False)
    return Reply(
        payloads=(
            SecurityAssociation(proposals=(choice.proposal,)),
            Nonce(data=nonce_r),
            KePayload(group=choice.suite.dh, data=exchange.public_data),
        )
    )
