"""IKE_AUTH in both roles (RFC 7296 sections 1.2, 2.15, 2.21.2): identities, certificates,
AUTH payloads and the first CHILD SA.

A CHILD SA that cannot be agreed does not fail the IKE SA: the responder answers with the error
Notify in place of SA/TSi/TSr and both keep the IKE SA (section 2.21.2). An authentication
failure closes it: the responder answers AUTHENTICATION_FAILED; an initiator that refuses the
responder says so in an INFORMATIONAL request and closes at once.
"""

from __future__ import annotations

from trellis.agent.ike.child import ChildSa
from trellis.agent.ike.config import ChildConfig
from trellis.agent.ike.constants import ExchangeType, NotifyType
from trellis.agent.ike.errors import AuthenticationFailed, IkePeerError, MalformedMessage
from trellis.agent.ike.events import AuthenticationFailed as AuthenticationFailedEvent
from trellis.agent.ike.events import ChildSaFailed, DownReason
from trellis.agent.ike.exchanges import authn
from trellis.agent.ike.exchanges.childsa import accept_child, answer_child, select_child_config
from trellis.agent.ike.exchanges.informational import DeleteSpis
from trellis.agent.ike.message import Message
from trellis.agent.ike.payloads import (
    Authentication,
    Certificate,
    IdInitiator,
    IdResponder,
    Notify,
    Payload,
    SecurityAssociation,
    TsInitiator,
    TsResponder,
)
from trellis.agent.ike.proposals import esp_sa_payload
from trellis.agent.ike.sa import IkeSa, PeerAuth, error_notifies, error_notify, find_notify
from trellis.agent.ike.states import IkeState
from trellis.agent.ike.window import Reply


def _auth_failed(sa: IkeSa, reason: str, *, by_peer: bool) -> None:
    sa.host.emit(
        AuthenticationFailedEvent(peer=sa.peer_name, remote=sa.remote, reason=reason, by_peer=by_peer)
    )


def _child_failed(sa: IkeSa, name: str, reason: str) -> None:
    sa.host.emit(ChildSaFailed(peer=sa.require_peer().name, ike_sa=sa.id, name=name, reason=reason))


def _record_auth(sa: IkeSa, peer_auth: PeerAuth | None) -> None:
    peer = sa.require_peer()
    sa.peer_auth = peer_auth
    bounds = [authn.credential_expiry(sa.host, peer)]
    if peer_auth is not None:
        bounds.append(peer_auth.not_after)
    known = [b for b in bounds if b is not None]
    sa.credential_not_after = bounds[0]
    sa.auth_expires = min(known) if known else None
    old = sa.reauth_of
    if old is not None and old.auth_expires is not None and sa.auth_expires is not None:
        # A re-authentication that bought no time must not trigger another one.
        sa.reauth_allowed = sa.auth_expires > old.auth_expires


class IkeAuth:
    exchange_type = ExchangeType.IKE_AUTH

    def __init__(self, *, child: ChildConfig | None, initial_contact: bool) -> None:
        self.child = child
        self.initial_contact = initial_contact
        self.child_spi = b""

    def wanted(self, sa: IkeSa) -> bool:
        return sa.state in (IkeState.INIT_SENT, IkeState.AUTH_SENT)

    def request_payloads(self, sa: IkeSa, now: float) -> tuple[Payload, ...]:
        peer = sa.require_peer()
        my_id = authn.local_id(sa.host, peer)
        sa.local_id = str(my_id)
        payloads: list[Payload] = [
            IdInitiator(id_type=my_id.id_type, data=my_id.data),
            *authn.cert_payloads(sa.host, peer),
        ]
        if self.initial_contact:
            payloads.append(Notify(notify_type=NotifyType.INITIAL_CONTACT))
        payloads += authn.certreq_payloads([peer])
        payloads.append(authn.auth_payload(sa, peer, authn.our_octets(sa, my_id)))
        if self.child is not None:
            self.child_spi = self.child_spi or sa.host.new_child_spi()
            payloads += [
                esp_sa_payload(self.child.proposals, spi=self.child_spi, with_dh=False),
                TsInitiator(selectors=self.child.local_ts),
                TsResponder(selectors=self.child.remote_ts),
            ]
        return tuple(payloads)

    def handle_response(self, sa: IkeSa, response: Message, raw: bytes, now: float) -> None:
        peer = sa.require_peer()
        id_r = response.find(IdResponder)
        auth = response.find(Authentication)
        if find_notify(response, NotifyType.AUTHENTICATION_FAILED) is not None or (
            auth is None and error_notifies(response)
        ):
            errors = error_notifies(response)
            reason = f"the peer refused us with {errors[0].notify_type!r}"
            if errors[0].notify_type == NotifyType.AUTHENTICATION_FAILED:
                _auth_failed(sa, "the peer refused our authentication", by_peer=True)
                sa.close(DownReason.AUTHENTICATION_FAILED, now, detail=reason)
            else:
                sa.fail(reason, now)
            return
        if id_r is None or auth is None:
            raise MalformedMessage("IKE_AUTH response without IDr or AUTH")
        try:
            peer_auth = authn.verify_peer(
                sa, peer, id_payload=id_r, certificates=response.find_all(Certificate), auth=auth, now=now
            )
        except AuthenticationFailed as e:
            _auth_failed(sa, e.reason, by_peer=False)
            sa.send_once(
                ExchangeType.INFORMATIONAL, (Notify(notify_type=NotifyType.AUTHENTICATION_FAILED),), now
            )
            sa.close(DownReason.AUTHENTICATION_FAILED, now, detail=e.reason)
            return
        _record_auth(sa, peer_auth)
        sa.establish(now)
        if self.child is not None:
            self._child(sa, response, now)
        sa.host.sa_established(sa, now)

    def _child(self, sa: IkeSa, response: Message, now: float) -> None:
        config = self.child
        if config is None:
            return
        if response.find(SecurityAssociation) is None:
            errors = error_notifies(response)
            reason = f"refused with {errors[0].notify_type!r}" if errors else "no CHILD SA in the answer"
            _child_failed(sa, config.name, reason)
            return
        try:
            child = accept_child(
                sa,
                response,
                config=config,
                our_spi=self.child_spi,
                nonce_i=sa.ni,
                nonce_r=sa.nr,
                ke=None,
                with_dh=False,
                proposed_local=config.local_ts,
                proposed_remote=config.remote_ts,
                now=now,
            )
        except IkePeerError as e:
            _child_failed(sa, config.name, str(e))
            # The peer installed what it answered: delete it rather than leave it dangling.
            sa.start(DeleteSpis(spis=(self.child_spi,)), now)
            return
        sa.add_child(child, now)

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)

    def abandoned(self, sa: IkeSa, now: float) -> None:
        pass


def respond(sa: IkeSa, request: Message, now: float) -> Reply:
    """The responder's IKE_AUTH: authenticate the initiator, then answer (or refuse and close)."""
    id_i = request.find(IdInitiator)
    auth = request.find(Authentication)
    if id_i is None or auth is None:
        return Reply(
            payloads=(Notify(notify_type=NotifyType.INVALID_SYNTAX),),
            after=lambda t: sa.fail("IKE_AUTH request without IDi or AUTH", t),
        )
    try:
        peer = authn.select_peer(sa.candidates, id_i, int(auth.method))
        sa.peer = peer
        authn.check_suite_allowed(sa, peer)
        peer_auth = authn.verify_peer(
            sa, peer, id_payload=id_i, certificates=request.find_all(Certificate), auth=auth, now=now
        )
        authn.check_can_sign(sa.host, peer, sa.peer_hash_algorithms)
    except AuthenticationFailed as e:
        _auth_failed(sa, e.reason, by_peer=False)
        reason = e.reason
        return Reply(
            payloads=(Notify(notify_type=NotifyType.AUTHENTICATION_FAILED),),
            after=lambda t: sa.close(DownReason.AUTHENTICATION_FAILED, t, detail=reason),
        )
    _record_auth(sa, peer_auth)
    my_id = authn.local_id(sa.host, peer)
    sa.local_id = str(my_id)
    payloads: list[Payload] = [
        IdResponder(id_type=my_id.id_type, data=my_id.data),
        *authn.cert_payloads(sa.host, peer),
        authn.auth_payload(sa, peer, authn.our_octets(sa, my_id)),
    ]
    sa.establish(now)
    child, child_payloads = _answer_first_child(sa, request, now)
    payloads += child_payloads
    if child is not None:
        sa.add_child(child, now)
    if find_notify(request, NotifyType.INITIAL_CONTACT) is not None:
        sa.host.replace_older_sas(sa, now)
    sa.host.sa_established(sa, now)
    return Reply(payloads=tuple(payloads))


def _answer_first_child(
    sa: IkeSa, request: Message, now: float
) -> tuple[ChildSa | None, tuple[Payload, ...]]:
    sa_payload = request.find(SecurityAssociation)
    tsi = request.find(TsInitiator)
    tsr = request.find(TsResponder)
    if sa_payload is None or tsi is None or tsr is None:
        return None, ()
    peer = sa.require_peer()
    name = "?"
    try:
        config, local_ts, remote_ts = select_child_config(peer, tsi, tsr)
        name = config.name
        return answer_child(
            sa,
            config=config,
            sa_payload=sa_payload,
            local_ts=local_ts,
            remote_ts=remote_ts,
            nonce_i=sa.ni,
            nonce_r=sa.nr,
            ke=None,
            with_dh=False,
            now=now,
        )
    except IkePeerError as e:
        if e.notify is None:
            raise
        _child_failed(sa, name, str(e))
        return None, (error_notify(e),)
