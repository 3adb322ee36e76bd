"""IKE_SA_INIT in both roles (RFC 7296 sections 1.2, 2.6, 2.7, 2.23; RFC 7383; RFC 7427).

The initiator retries on a COOKIE (section 2.6: the same message with the cookie first) and on
INVALID_KE_PAYLOAD (section 1.2: a new KE for the group the responder named), message ID 0 again
each time, at most ``EngineSettings.max_init_retries`` times. The responder answers errors
without keeping any state; ``answer_ike_sa_init`` makes the half-open SA only on success.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from trellis.agent.ike.config import Address, IkeProposal, PeerConfig
from trellis.agent.ike.constants import DhId, ExchangeType, NotifyType
from trellis.agent.ike.cookies import MAX_COOKIE_LENGTH
from trellis.agent.ike.crypto.auth import decode_signature_hash_algorithms, encode_signature_hash_algorithms
from trellis.agent.ike.crypto.dh import KeyExchange
from trellis.agent.ike.crypto.keys import initial_ike_sa_keys
from trellis.agent.ike.errors import (
    AuthenticationFailed,
    IkePeerError,
    InvalidKePayload,
    MalformedMessage,
    NoProposalChosen,
)
from trellis.agent.ike.exchanges import authn
from trellis.agent.ike.exchanges.auth import IkeAuth
from trellis.agent.ike.message import IkeHeader, Message, encode_message
from trellis.agent.ike.natt import fake_nat_detection_hash, nat_detection_hash, nat_in_front
from trellis.agent.ike.payloads import (
    CertificateRequest,
    Nonce,
    Notify,
    Payload,
    SecurityAssociation,
)
from trellis.agent.ike.payloads import (
    KeyExchange as KePayload,
)
from trellis.agent.ike.proposals import check_ike_choice, choose_ike, ike_sa_payload, offered_groups
from trellis.agent.ike.sa import NONCE_LENGTH, IkeSa, SaHost, Timer, error_notifies
from trellis.agent.ike.states import IkeState
from trellis.agent.ike.window import CachedResponse

ZERO_SPI = bytes(8)
KE_GROUP_LENGTH = 2  # INVALID_KE_PAYLOAD data: the accepted group (RFC 7296 section 3.10.1)


def _find(message: Message, notify_type: NotifyType) -> tuple[Notify, ...]:
    return tuple(n for n in message.find_all(Notify) if n.notify_type == notify_type)


def nat_notifies(sa: IkeSa, *, spi_r: bytes, force: bool) -> tuple[Notify, Notify]:
    """NAT_DETECTION_SOURCE_IP and _DESTINATION_IP over the SPIs of the message they go in."""
    source = fake_nat_detection_hash() if force else nat_detection_hash(sa.spi_i, spi_r, sa.local_address)
    return (
        Notify(notify_type=NotifyType.NAT_DETECTION_SOURCE_IP, data=source),
        Notify(
            notify_type=NotifyType.NAT_DETECTION_DESTINATION_IP,
            data=nat_detection_hash(sa.spi_i, spi_r, sa.remote),
        ),
    )


def learn_from_peer(sa: IkeSa, message: Message, *, force_encapsulation: bool) -> bool:
    """Record what the peer's IKE_SA_INIT says about NATs, fragmentation, signature hashes and
    the CAs it trusts. Returns whether the peer does NAT detection (and so NAT-T)."""
    header = message.header
    sa.peer_fragmentation = bool(_find(message, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    hashes = _find(message, NotifyType.SIGNATURE_HASH_ALGORITHMS)
    if hashes:
        sa.peer_hash_algorithms = decode_signature_hash_algorithms(hashes[0].data)
    certreqs = message.find_all(CertificateRequest)
    if certreqs:
        sa.peer_certreq = tuple(a for c in certreqs for a in c.authorities)
    sources = tuple(n.data for n in _find(message, NotifyType.NAT_DETECTION_SOURCE_IP))
    destinations = tuple(n.data for n in _find(message, NotifyType.NAT_DETECTION_DESTINATION_IP))
    if not sources or not destinations:
        sa.nat_here = sa.nat_there = False
        return False
    sa.nat_there = nat_in_front(sources, header.spi_i, header.spi_r, sa.remote)
    sa.nat_here = force_encapsulation or nat_in_front(
        destinations, header.spi_i, header.spi_r, sa.local_address
    )
    return True


# --- initiator ----------------------------------------------------------------------------------


class IkeSaInit:
    exchange_type = ExchangeType.IKE_SA_INIT

    def __init__(self, *, group: DhId, cookie: bytes | None = None, retries: int = 0) -> None:
        self.group = group
        self.cookie = cookie
        self.retries = retries

    def wanted(self, sa: IkeSa) -> bool:
        return sa.state in (IkeState.INIT_SENT, IkeState.AUTH_SENT)

    def request_payloads(self, sa: IkeSa, now: float) -> tuple[Payload, ...]:
        peer = sa.require_peer()
        if sa.ke is None or sa.ke.group != self.group:
            sa.ke = KeyExchange.generate(self.group)
        if not sa.ni:
            sa.ni = secrets.token_bytes(NONCE_LENGTH)
        payloads: list[Payload] = []
        if self.cookie is not None:
            payloads.append(Notify(notify_type=NotifyType.COOKIE, data=self.cookie))
        payloads += [
            ike_sa_payload(peer.ike_proposals),
            KePayload(group=self.group, data=sa.ke.public_data),
            Nonce(data=sa.ni),
            *nat_notifies(sa, spi_r=ZERO_SPI, force=peer.force_encapsulation),
        ]
        if peer.fragmentation:
            payloads.append(Notify(notify_type=NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        payloads.append(
            Notify(notify_type=NotifyType.SIGNATURE_HASH_ALGORITHMS, data=encode_signature_hash_algorithms())
        )
        return tuple(payloads)

    def _retry(self, sa: IkeSa, now: float, *, group: DhId, cookie: bytes | None) -> None:
        if self.retries >= sa.settings.max_init_retries:
            sa.fail("too many IKE_SA_INIT retries (COOKIE / INVALID_KE_PAYLOAD)", now)
            return
        sa.next_message_id = 0  # a new IKE_SA_INIT, still message 0 (RFC 7296 section 2.6)
        sa.start(IkeSaInit(group=group, cookie=cookie, retries=self.retries + 1), now, first=True)

    def handle_response(self, sa: IkeSa, response: Message, raw: bytes, now: float) -> None:
        peer = sa.require_peer()
        sa_payload = response.find(SecurityAssociation)
        cookies = _find(response, NotifyType.COOKIE)
        if cookies and sa_payload is None:
            cookie = cookies[0].data
            if not 1 <= len(cookie) <= MAX_COOKIE_LENGTH:
                raise MalformedMessage(f"COOKIE of {len(cookie)} bytes")
            self._retry(sa, now, group=self.group, cookie=cookie)
            return
        invalid_ke = _find(response, NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke and sa_payload is None:
            data = invalid_ke[0].data
            if len(data) != KE_GROUP_LENGTH:
                raise MalformedMessage("INVALID_KE_PAYLOAD without a 2-byte group")
            wanted = int.from_bytes(data, "big")
            if wanted == self.group or wanted not in offered_groups(peer.ike_proposals):
                raise NoProposalChosen(f"the peer wants DH group {wanted}, which we do not offer")
            self._retry(sa, now, group=DhId(wanted), cookie=self.cookie)
            return
        errors = error_notifies(response)
        if errors:
            raise IkePeerError(f"the peer refused IKE_SA_INIT with {errors[0].notify_type!r}", notify=None)
        ke = response.find(KePayload)
        nonce = response.find(Nonce)
        if sa_payload is None or ke is None or nonce is None:
            raise MalformedMessage("IKE_SA_INIT response without SA, KE or Nonce")
        if response.header.spi_r == ZERO_SPI:
            raise MalformedMessage("IKE_SA_INIT response with a zero responder SPI")
        suite, _ = check_ike_choice(peer.ike_proposals, sa_payload)
        if suite.dh != self.group or ke.group != self.group or sa.ke is None:
            raise NoProposalChosen(f"the response chose group {suite.dh}, our KE is for {self.group}")
        shared = sa.ke.shared_secret(ke.data)
        sa.spi_r = response.header.spi_r
        sa.nr = nonce.data
        sa.init_response = raw
        sa.install_keys(
            suite, initial_ike_sa_keys(suite, shared, ni=sa.ni, nr=sa.nr, spi_i=sa.spi_i, spi_r=sa.spi_r)
        )
        sa.ke = None
        nat_t = learn_from_peer(sa, response, force_encapsulation=peer.force_encapsulation)
        if nat_t and not sa.on_nat_t_port:
            # strongSwan floats to 4500 after NAT-D even without a NAT; so do we (section 2.23).
            sa.local_port = sa.settings.nat_t_port
            sa.remote = (sa.remote[0], peer.remote_nat_t_port)
        try:
            authn.check_can_sign(sa.host, peer, sa.peer_hash_algorithms)
        except AuthenticationFailed as e:
            sa.fail(e.reason, now)
            return
        sa.machine.move(IkeState.AUTH_SENT)
        initial_contact = sa.reauth_of is None and not sa.host.has_established_sa(peer.name, besides=sa)
        sa.start(
            IkeAuth(child=peer.children[0] if peer.children else None, initial_contact=initial_contact), now
        )

    def failed(self, sa: IkeSa, reason: str, now: float) -> None:
        sa.fail(reason, now)

    def abandoned(self, sa: IkeSa, now: float) -> None:
        sa.ke = None


# --- responder ----------------------------------------------------------------------------------


def _error_response(request: Message, notify: Notify) -> bytes:
    header = IkeHeader(
        spi_i=request.header.spi_i,
        spi_r=ZERO_SPI,
        exchange=ExchangeType.IKE_SA_INIT,
        initiator=False,
        response=True,
        message_id=0,
    )
    return encode_message(Message(header=header, payloads=(notify,)))


def cookie_response(request: Message, cookie: bytes) -> bytes:
    return _error_response(request, Notify(notify_type=NotifyType.COOKIE, data=cookie))


def request_cookie(request: Message) -> bytes | None:
    """The COOKIE an initiator echoes: it must be the first payload (RFC 7296 section 2.6)."""
    first = request.payloads[0] if request.payloads else None
    if isinstance(first, Notify) and first.notify_type == NotifyType.COOKIE:
        return first.data
    return None


def _merged_proposals(candidates: Sequence[PeerConfig]) -> tuple[IkeProposal, ...]:
    merged: list[IkeProposal] = []
    for peer in candidates:
        for proposal in peer.ike_proposals:
            if proposal not in merged:
                merged.append(proposal)
    return tuple(merged)


def answer_ike_sa_init(
    host: SaHost,
    request: Message,
    raw: bytes,
    *,
    local_port: int,
    remote: Address,
    candidates: Sequence[PeerConfig],
    now: float,
) -> tuple[IkeSa | None, bytes]:
    """Answer an IKE_SA_INIT request: (the new half-open SA, its response), or (None, an error
    response) when we refuse; nothing is kept for a refusal."""
    sa_payload = request.find(SecurityAssociation)
    ke = request.find(KePayload)
    nonce = request.find(Nonce)
    if sa_payload is None or ke is None or nonce is None:
        return None, _error_response(request, Notify(notify_type=NotifyType.INVALID_SYNTAX))
    try:
        choice = choose_ike(_merged_proposals(candidates), sa_payload, ke_group=int(ke.group))
    except InvalidKePayload as e:
        data = int(e.wanted).to_bytes(KE_GROUP_LENGTH, "big")
        return None, _error_response(request, Notify(notify_type=NotifyType.INVALID_KE_PAYLOAD, data=data))
    except NoProposalChosen:
        return None, _error_response(request, Notify(notify_type=NotifyType.NO_PROPOSAL_CHOSEN))
    suite = choice.suite
    exchange = KeyExchange.generate(suite.dh)
    try:
        shared = exchange.shared_secret(ke.data)
    except IkePeerError:
        return None, _error_response(request, Notify(notify_type=NotifyType.INVALID_SYNTAX))
    spi_r = host.new_ike_spi()
    sa = IkeSa(
        host,
        initiator=False,
        spi_i=request.header.spi_i,
        spi_r=spi_r,
        local_port=local_port,
        remote=remote,
        peer=None,
        candidates=candidates,
        state=IkeState.HALF_OPEN,
        now=now,
    )
    sa.ni = nonce.data
    sa.nr = secrets.token_bytes(NONCE_LENGTH)
    sa.init_request = raw
    force = any(peer.force_encapsulation for peer in candidates)
    learn_from_peer(sa, request, force_encapsulation=force)
    payloads: list[Payload] = [
        SecurityAssociation(proposals=(choice.proposal,)),
        KePayload(group=suite.dh, data=exchange.public_data),
        Nonce(data=sa.nr),
    ]
    if _find(request, NotifyType.NAT_DETECTION_SOURCE_IP):
        payloads += nat_notifies(sa, spi_r=spi_r, force=force)
    if sa.peer_fragmentation and any(peer.fragmentation for peer in candidates):
        payloads.append(Notify(notify_type=NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    payloads.append(
        Notify(notify_type=NotifyType.SIGNATURE_HASH_ALGORITHMS, data=encode_signature_hash_algorithms())
    )
    payloads += authn.certreq_payloads(candidates)
    header = IkeHeader(
        spi_i=request.header.spi_i,
        spi_r=spi_r,
        exchange=ExchangeType.IKE_SA_INIT,
        initiator=False,
        response=True,
        message_id=0,
    )
    response = encode_message(Message(header=header, payloads=tuple(payloads)))
    sa.init_response = response
    sa.install_keys(
        suite, initial_ike_sa_keys(suite, shared, ni=sa.ni, nr=sa.nr, spi_i=sa.spi_i, spi_r=spi_r)
    )
    sa.expected_message_id = 1
    sa.cached_response = CachedResponse(
        message_id=0, exchange=ExchangeType.IKE_SA_INIT, datagrams=(response,)
    )
    sa.set_timer(Timer.HALF_OPEN, now + host.settings.half_open_timeout)
    return sa, response
