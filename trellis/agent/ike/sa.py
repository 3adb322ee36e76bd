"""One IKE SA, sans-IO: its keys, its message-ID windows, its timers and its CHILD SAs.

Messages come in through ``receive`` (bytes already attributed to this SA by the engine); what
the SA sends goes out through its host (the engine) as ``Datagram`` values, what it has to say as
events. Time is the ``now`` argument of every call; ``next_timer`` says when to call
``handle_timer`` again.

The exchanges themselves (what goes into each request and how each answer is handled) live in
``trellis.agent.ike.exchanges``; this module moves messages and keeps the state straight.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from trellis.agent.ike.child import ChildSa
from trellis.agent.ike.config import (
    Address,
    CertificateCredentials,
    EngineSettings,
    Lifetime,
    PeerConfig,
)
from trellis.agent.ike.constants import NAT_KEEPALIVE, ExchangeType, NotifyType, PayloadType
from trellis.agent.ike.crypto.aead import SkAead, sk_aeads
from trellis.agent.ike.crypto.dh import KeyExchange
from trellis.agent.ike.crypto.keylog import ikev2_decryption_table_line
from trellis.agent.ike.crypto.keys import IkeSaKeys
from trellis.agent.ike.crypto.suites import IkeSuite
from trellis.agent.ike.encrypted import decrypt_message, encrypt_message
from trellis.agent.ike.errors import (
    IkeLocalError,
    IkePeerError,
    InvalidKePayload,
    InvalidMessageId,
    MalformedMessage,
    UnsupportedCriticalPayload,
)
from trellis.agent.ike.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    DownReason,
    Event,
    IkeSaDown,
    IkeSaFailed,
    IkeSaId,
    IkeSaUp,
    PeerAddressChanged,
    PeerDead,
)
from trellis.agent.ike.fragments import FragmentReassembler, decrypt_fragment, encrypt_message_fragments
from trellis.agent.ike.message import IkeHeader, Message, decode_message, encode_message, open_message
from trellis.agent.ike.payloads import EncryptedFragment, Notify, Payload
from trellis.agent.ike.states import (
    IKE_ACTIONS,
    IKE_EDGES,
    IKE_REQUESTS,
    IKE_RESPONSES,
    ChildState,
    IkeState,
    LocalAction,
    Machine,
)
from trellis.agent.ike.udp import frame_ike_for_nat_t, max_ike_message_size
from trellis.agent.ike.window import CachedResponse, Datagram, Exchange, Outstanding, Reply, Step

log = logging.getLogger("trellis.agent.ike")

ZERO_SPI = bytes(8)
NONCE_LENGTH = 32  # RFC 7296 section 2.10: at least half the PRF key size; 32 covers SHA-384


class SaHost(Protocol):
    """What an IKE SA needs from the engine that owns it."""

    settings: EngineSettings

    def emit(self, event: Event) -> None: ...

    def send(self, datagram: Datagram) -> None: ...

    def credentials(self, name: str) -> CertificateCredentials: ...

    def is_revoked(self, identity: str | None, serial: str) -> bool: ...

    def jitter(self, amount: float) -> float: ...

    def new_ike_spi(self) -> bytes: ...

    def new_child_spi(self) -> bytes: ...

    def keylog(self, line: str) -> None: ...

    def local_address_for(self, remote_host: str) -> str: ...

    def adopt(self, sa: IkeSa) -> None: ...

    def sa_established(self, sa: IkeSa, now: float) -> None: ...

    def sa_closed(self, sa: IkeSa, reason: DownReason, now: float) -> None: ...

    def reauthenticate(self, sa: IkeSa, now: float) -> None: ...

    def has_established_sa(self, peer: str, *, besides: IkeSa) -> bool: ...

    def replace_older_sas(self, sa: IkeSa, now: float) -> None: ...


class Timer(enum.Enum):
    RETRANSMIT = "retransmit"
    HALF_OPEN = "half-open"
    IKE_REKEY = "ike-rekey"
    IKE_EXPIRE = "ike-expire"
    REAUTH = "reauth"
    DPD = "dpd"
    KEEPALIVE = "keepalive"
    REKEYED_WAIT = "rekeyed-wait"
    CHILD_REKEY = "child-rekey"
    CHILD_EXPIRE = "child-expire"


TimerKey = tuple[Timer, bytes]  # bytes: the CHILD SA's inbound SPI, or b"" for the IKE SA


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAuth:
    """Who the peer proved to be in IKE_AUTH."""

    remote_id: str
    identity: str | None  # spiffe:// URI from its certificate
    serial: str | None
    not_after: float | None  # certificate path expiry (None: PSK)


@dataclass(frozen=True, slots=True, kw_only=True)
class IkeRekeyCollision:
    """The IKE SA we created by answering the peer's rekey while ours was out (RFC 7296
    section 2.8.2), with its exchange's nonces."""

    sa: IkeSa
    nonce_i: bytes
    nonce_r: bytes


class IkeSa:
    def __init__(
        self,
        host: SaHost,
        *,
        initiator: bool,
        spi_i: bytes,
        spi_r: bytes,
        local_port: int,
        remote: Address,
        peer: PeerConfig | None,
        candidates: Sequence[PeerConfig],
        state: IkeState,
        now: float,
    ) -> None:
        self.host = host
        self.initiator = initiator  # original initiator of this IKE SA (the I flag)
        self.spi_i = spi_i
        self.spi_r = spi_r
        self.local_port = local_port
        self.remote = remote
        self.peer = peer
        self.candidates = tuple(candidates)
        self.machine: Machine[IkeState] = Machine("IKE SA", state, IKE_EDGES)
        self.created_at = now
        self.established_at: float | None = None
        self.announced = False  # IkeSaUp (or IkeSaRekeyed) said it exists: IkeSaDown will follow
        # IKE_SA_INIT results
        self.suite: IkeSuite | None = None
        self.keys: IkeSaKeys | None = None
        self._aead_out: SkAead | None = None
        self._aead_in: SkAead | None = None
        self.ke: KeyExchange | None = None
        self.ni = b""
        self.nr = b""
        self.init_request = b""
        self.init_response = b""
        self.peer_hash_algorithms: tuple[int, ...] = ()
        self.peer_fragmentation = False
        self.peer_certreq: tuple[bytes, ...] | None = None
        self.nat_here = False  # we are behind a NAT (or pretend to be)
        self.nat_there = False  # the peer is behind a NAT
        # IKE_AUTH results
        self.local_id = ""
        self.peer_auth: PeerAuth | None = None
        self.auth_expires: float | None = None
        self.credential_not_after: float | None = None
        self.children: dict[bytes, ChildSa] = {}
        # windows (RFC 7296 section 2.3)
        self.next_message_id = 0
        self.expected_message_id = 0
        self.outstanding: Outstanding | None = None
        self.queue: deque[Exchange | Step] = deque()
        self.cached_response: CachedResponse | None = None
        self._request_fragments = FragmentReassembler()
        self._response_fragments = FragmentReassembler()
        self.timers: dict[TimerKey, float] = {}
        self.last_inbound = now
        # lifecycle links
        self.reauth_of: IkeSa | None = None
        self.reauth_allowed = True
        self.reauth_deferred = False
        self.successor: IkeSa | None = None
        self.rekey_collision: IkeRekeyCollision | None = None
        self.delete_reason = DownReason.DELETED

    # --- identity ------------------------------------------------------------------------

    @property
    def state(self) -> IkeState:
        return self.machine.state

    @property
    def id(self) -> IkeSaId:
        return IkeSaId(spi_i=self.spi_i, spi_r=self.spi_r)

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def peer_name(self) -> str | None:
        return self.peer.name if self.peer is not None else None

    @property
    def settings(self) -> EngineSettings:
        return self.host.settings

    @property
    def on_nat_t_port(self) -> bool:
        return self.local_port == self.settings.nat_t_port

    @property
    def udp_encapsulation(self) -> bool:
        return self.nat_here or self.nat_there

    @property
    def local_address(self) -> Address:
        return (self.host.local_address_for(self.remote[0]), self.local_port)

    def require_keys(self) -> tuple[IkeSuite, IkeSaKeys]:
        if self.suite is None or self.keys is None:
            raise IkeLocalError("the IKE SA has no keys yet")
        return self.suite, self.keys

    def require_peer(self) -> PeerConfig:
        if self.peer is None:
            raise IkeLocalError("the IKE SA has no peer configuration yet")
        return self.peer

    def install_keys(self, suite: IkeSuite, keys: IkeSaKeys) -> None:
        self.suite, self.keys = suite, keys
        self._aead_out, self._aead_in = sk_aeads(keys, initiator=self.initiator)
        line = ikev2_decryption_table_line(self.spi_i, self.spi_r, keys)
        if line is not None:
            self.host.keylog(line)

    def accepts(self, action: LocalAction) -> bool:
        return action in IKE_ACTIONS.get(self.state, frozenset())

    # --- sending -------------------------------------------------------------------------

    def start(self, item: Exchange | Step, now: float, *, first: bool = False) -> None:
        """Queue a request (or a local step) and send it when the window is free."""
        if self.state == IkeState.CLOSED:
            return
        if first:
            self.queue.appendleft(item)
        else:
            self.queue.append(item)
        self.pump(now)

    def pump(self, now: float) -> None:
        while self.outstanding is None and self.queue and self.state != IkeState.CLOSED:
            item = self.queue.popleft()
            if isinstance(item, Step):
                item.run(now)
            elif item.wanted(self):
                self._send_request(item, now)
            else:
                item.abandoned(self, now)

    def _send_request(self, exchange: Exchange, now: float) -> None:
        payloads = exchange.request_payloads(self, now)
        header = IkeHeader(
            spi_i=self.spi_i,
            spi_r=self.spi_r,
            exchange=exchange.exchange_type,
            initiator=self.initiator,
            response=False,
            message_id=self.next_message_id,
        )
        message = Message(header=header, payloads=payloads)
        if exchange.exchange_type == ExchangeType.IKE_SA_INIT:
            self.init_request = encode_message(message)
            datagrams: tuple[bytes, ...] = (self.init_request,)
        else:
            datagrams = self.protect(message)
        self.outstanding = Outstanding(
            message_id=self.next_message_id, exchange=exchange, datagrams=datagrams
        )
        self.next_message_id += 1
        self.set_timer(Timer.RETRANSMIT, now + self.settings.retransmit.wait(1))
        self.transmit(datagrams, now)

    def send_once(self, exchange_type: ExchangeType, payloads: tuple[Payload, ...], now: float) -> None:
        """A request we send without waiting for its answer (the notice before we close)."""
        header = IkeHeader(
            spi_i=self.spi_i,
            spi_r=self.spi_r,
            exchange=exchange_type,
            initiator=self.initiator,
            response=False,
            message_id=self.next_message_id,
        )
        self.next_message_id += 1
        self.transmit(self.protect(Message(header=header, payloads=payloads)), now)

    def protect(self, message: Message) -> tuple[bytes, ...]:
        if self._aead_out is None:
            raise IkeLocalError("no keys to protect a message with")
        aead = self._aead_out
        data = encrypt_message(message, aead=aead, iv=aead.next_iv())
        limit = max_ike_message_size(
            self.settings.fragment_size, ipv6=":" in self.remote[0], nat_t=self.on_nat_t_port
        )
        allowed = self.peer is None or self.peer.fragmentation
        if len(data) > limit and self.peer_fragmentation and allowed:
            return tuple(
                encrypt_message_fragments(message, aead=aead, next_iv=aead.next_iv, max_message_size=limit)
            )
        return (data,)

    def transmit(
        self,
        datagrams: Sequence[bytes],
        now: float,
        *,
        local_port: int | None = None,
        remote: Address | None = None,
    ) -> None:
        port = self.local_port if local_port is None else local_port
        to = self.remote if remote is None else remote
        for message in datagrams:
            data = frame_ike_for_nat_t(message) if port == self.settings.nat_t_port else message
            self.host.send(Datagram(data=data, local_port=port, remote=to))
        self._keepalive_after(now)

    def _keepalive_after(self, now: float) -> None:
        peer = self.peer
        if self.nat_here and self.on_nat_t_port and peer is not None and peer.keepalive_interval > 0:
            self.set_timer(Timer.KEEPALIVE, now + peer.keepalive_interval)

    # --- receiving -----------------------------------------------------------------------

    def receive(
        self, data: bytes, header: IkeHeader, *, local_port: int, remote: Address, now: float
    ) -> None:
        """A message for this SA. Raises IkePeerError (the engine logs and drops) when it is not
        acceptable; answers requests, hands responses to the outstanding exchange."""
        if header.initiator == self.initiator:
            raise MalformedMessage("the I flag says the message comes from ourselves")
        if header.exchange != ExchangeType.IKE_SA_INIT and (header.spi_i, header.spi_r) != (
            self.spi_i,
            self.spi_r,
        ):
            raise MalformedMessage("SPIs do not match this IKE SA")
        if header.response:
            self._receive_response(data, header, local_port=local_port, remote=remote, now=now)
        else:
            self._receive_request(data, header, local_port=local_port, remote=remote, now=now)

    def _open(self, data: bytes, reassembler: FragmentReassembler) -> Message | None:
        if self._aead_in is None:
            raise MalformedMessage("a protected message before we have keys")
        _, first_payload, _ = open_message(data)
        if first_payload == PayloadType.SKF:
            return reassembler.receive(data, aead=self._aead_in)
        return decrypt_message(data, aead=self._aead_in)

    def _receive_response(
        self, data: bytes, header: IkeHeader, *, local_port: int, remote: Address, now: float
    ) -> None:
        out = self.outstanding
        if header.exchange not in IKE_RESPONSES.get(self.state, frozenset()):
            raise InvalidMessageId(f"no {header.exchange} response expected in state {self.state.value}")
        if (
            out is None
            or header.message_id != out.message_id
            or header.exchange != out.exchange.exchange_type
        ):
            raise InvalidMessageId(f"unexpected response {header.message_id}", notify=None)
        if header.exchange == ExchangeType.IKE_SA_INIT:
            message: Message | None = decode_message(data)
        else:
            message = self._open(data, self._response_fragments)
        if message is None:
            return  # more fragments to come
        self.last_inbound = now
        self._follow_peer(local_port, remote, now)
        self.outstanding = None
        self.cancel_timer(Timer.RETRANSMIT)
        self._restart_dpd(now)
        try:
            out.exchange.handle_response(self, message, data, now)
        except IkePeerError as e:
            log.info("IKE SA %s: %s response refused: %s", self.id, header.exchange, e)
            out.exchange.failed(self, str(e), now)
        self.pump(now)

    def _receive_request(
        self, data: bytes, header: IkeHeader, *, local_port: int, remote: Address, now: float
    ) -> None:
        cached = self.cached_response
        if (
            cached is not None
            and header.message_id == cached.message_id
            and header.exchange == cached.exchange
            and header.message_id + 1 == self.expected_message_id
        ):
            if self._authentic_retransmission(data):
                self.transmit(cached.datagrams, now, local_port=local_port, remote=remote)
            return
        if header.message_id != self.expected_message_id:
            raise InvalidMessageId(
                f"request {header.message_id}, expected {self.expected_message_id}", notify=None
            )
        if header.exchange not in IKE_REQUESTS.get(self.state, frozenset()):
            raise InvalidMessageId(
                f"no {header.exchange} request accepted in state {self.state.value}", notify=None
            )
        message = self._open(data, self._request_fragments)
        if message is None:
            return
        self.last_inbound = now
        self._follow_peer(local_port, remote, now)
        self._restart_dpd(now)
        from trellis.agent.ike.exchanges.dispatch import REQUEST_HANDLERS

        handler = REQUEST_HANDLERS[ExchangeType(header.exchange)]
        try:
            reply = handler(self, message, now)
        except IkePeerError as e:
            if e.notify is None:
                raise
            log.info("IKE SA %s: %s request refused: %s", self.id, header.exchange, e)
            reply = Reply(payloads=(error_notify(e),))
        self.expected_message_id += 1
        response = Message(
            header=IkeHeader(
                spi_i=self.spi_i,
                spi_r=self.spi_r,
                exchange=header.exchange,
                initiator=self.initiator,
                response=True,
                message_id=header.message_id,
            ),
            payloads=reply.payloads,
        )
        datagrams = self.protect(response)
        self.cached_response = CachedResponse(
            message_id=header.message_id, exchange=header.exchange, datagrams=datagrams
        )
        self.transmit(datagrams, now, local_port=local_port, remote=remote)
        if reply.after is not None:
            reply.after(now)
        self.pump(now)

    def _authentic_retransmission(self, data: bytes) -> bool:
        """A retransmitted request is answered from the cache only once it authenticates; of a
        fragmented one, only fragment 1 triggers the answer (RFC 7383 section 2.6.1)."""
        if self._aead_in is None:
            return False
        outer = decode_message(data)
        last = outer.payloads[-1] if outer.payloads else None
        if isinstance(last, EncryptedFragment):
            if last.fragment_number != 1:
                return False
            decrypt_fragment(data, aead=self._aead_in)
            return True
        decrypt_message(data, aead=self._aead_in)
        return True

    def _follow_peer(self, local_port: int, remote: Address, now: float) -> None:
        """Move to the port or address the peer now uses: the switch to the NAT-T port, or a NAT
        that rebound (RFC 7296 section 2.23); without a NAT, addresses stay put (no MOBIKE)."""
        if (local_port, remote) == (self.local_port, self.remote):
            return
        floated = local_port == self.settings.nat_t_port and not self.on_nat_t_port
        if not floated and not self.udp_encapsulation:
            return
        self.local_port, self.remote = local_port, remote
        if self.state == IkeState.ESTABLISHED and self.peer is not None:
            self.host.emit(
                PeerAddressChanged(
                    peer=self.peer.name,
                    ike_sa=self.id,
                    local_port=local_port,
                    remote=remote,
                    child_inbound_spis=tuple(self.children),
                )
            )

    # --- lifecycle -----------------------------------------------------------------------

    def establish(self, now: float, *, announce: bool = True) -> None:
        """IKE_AUTH is done (or a rekey made this SA): start its clocks and say so."""
        peer = self.require_peer()
        if self.state != IkeState.ESTABLISHED:
            self.machine.move(IkeState.ESTABLISHED)
        self.established_at = now
        self.cancel_timer(Timer.HALF_OPEN)
        lifetime = peer.ike_lifetime
        expire = now + lifetime.expire_after
        if self.auth_expires is not None:
            expire = min(expire, self.auth_expires)
        self.set_timer(Timer.IKE_EXPIRE, expire)
        rekey = now + lifetime.rekey_after - self.host.jitter(lifetime.jitter)
        if rekey < expire:
            self.set_timer(Timer.IKE_REKEY, rekey)
        if self.auth_expires is not None and self.reauth_allowed:
            margin = peer.reauth_margin
            self.set_timer(Timer.REAUTH, max(now, self.auth_expires - margin - self.host.jitter(margin / 5)))
        self._restart_dpd(now)
        self._keepalive_after(now)
        if announce:
            self.announced = True
            auth = self.peer_auth
            suite, _ = self.require_keys()
            self.host.emit(
                IkeSaUp(
                    peer=peer.name,
                    ike_sa=self.id,
                    initiator=self.initiator,
                    local=self.local_address,
                    remote=self.remote,
                    suite=str(suite),
                    local_id=self.local_id,
                    remote_id=auth.remote_id if auth else "",
                    peer_identity=auth.identity if auth else None,
                    peer_serial=auth.serial if auth else None,
                    auth_expires=self.auth_expires,
                    reauth_of=self.reauth_of.id if self.reauth_of is not None else None,
                )
            )

    def fail(self, reason: str, now: float) -> None:
        """Establishment failed (before IKE_AUTH completed)."""
        if self.state == IkeState.CLOSED:
            return
        self.host.emit(IkeSaFailed(peer=self.peer_name, remote=self.remote, reason=reason))
        self.close(DownReason.FAILED, now, detail=reason)

    def close(self, reason: DownReason, now: float, *, detail: str = "") -> None:
        """Forget the SA and everything on it, at once (no message is sent)."""
        if self.state == IkeState.CLOSED:
            return
        for child in list(self.children.values()):
            self.remove_child(child, reason, now)
        out, queued = self.outstanding, list(self.queue)
        self.outstanding = None
        self.queue.clear()
        self.timers.clear()
        self.machine.move(IkeState.CLOSED)
        for item in ([out.exchange] if out is not None else []) + queued:
            if not isinstance(item, Step):
                item.abandoned(self, now)
        if self.announced and self.peer is not None:
            self.host.emit(IkeSaDown(peer=self.peer.name, ike_sa=self.id, reason=reason, detail=detail))
        self.host.sa_closed(self, reason, now)

    def delete(self, reason: DownReason, now: float) -> None:
        """Delete the IKE SA with the peer (INFORMATIONAL with Delete, RFC 7296 section 1.4.1).
        Its CHILD SAs stop at once; the SA closes on the answer or when the peer is silent."""
        if not self.accepts(LocalAction.DELETE_IKE):
            self.close(reason, now)
            return
        from trellis.agent.ike.exchanges.informational import DeleteIke

        for child in list(self.children.values()):
            self.remove_child(child, reason, now)
        self.delete_reason = reason
        self.machine.move(IkeState.DELETING)
        dropped = list(self.queue)
        self.queue.clear()
        for item in dropped:
            if not isinstance(item, Step):
                item.abandoned(self, now)
        for timer in (Timer.IKE_REKEY, Timer.REAUTH, Timer.DPD, Timer.IKE_EXPIRE):
            self.cancel_timer(timer)
        self.start(DeleteIke(reason=reason), now)

    # --- CHILD SAs -----------------------------------------------------------------------

    def child_lifetimes(self, lifetime: Lifetime, now: float) -> tuple[float | None, float]:
        """(rekey time or None, expiry) of a new CHILD SA: never past the certificates' end."""
        expires = now + lifetime.expire_after
        if self.auth_expires is not None:
            expires = min(expires, self.auth_expires)
        rekey = now + lifetime.rekey_after - self.host.jitter(lifetime.jitter)
        # Past the expiry, the IKE SA's re-authentication replaces the CHILD SA first.
        return (rekey if rekey < expires else None), expires

    def add_child(self, child: ChildSa, now: float, *, replaces: ChildSa | None = None) -> None:
        self.children[child.inbound_spi] = child
        self.schedule_child(child)
        event: Event
        params = child.params(
            local=(self.host.local_address_for(self.remote[0]), self.local_port),
            remote=self.remote,
            udp_encapsulation=self.udp_encapsulation,
        )
        peer = self.require_peer().name
        if replaces is None:
            event = ChildSaInstalled(peer=peer, ike_sa=self.id, child=params)
        else:
            event = ChildSaRekeyed(
                peer=peer,
                ike_sa=self.id,
                child=params,
                old_inbound_spi=replaces.inbound_spi,
                old_outbound_spi=replaces.outbound_spi,
            )
        self.host.emit(event)

    def schedule_child(self, child: ChildSa) -> None:
        if child.rekey_at is not None and child.state == ChildState.INSTALLED:
            self.set_timer(Timer.CHILD_REKEY, child.rekey_at, child.inbound_spi)
        self.set_timer(Timer.CHILD_EXPIRE, child.expires_at, child.inbound_spi)

    def remove_child(self, child: ChildSa, reason: DownReason, now: float) -> None:
        """Forget a CHILD SA here or on the SA it moved to, and tell the data plane."""
        owner = self.owner_of(child)
        if owner is None:
            return
        del owner.children[child.inbound_spi]
        owner.cancel_timer(Timer.CHILD_REKEY, child.inbound_spi)
        owner.cancel_timer(Timer.CHILD_EXPIRE, child.inbound_spi)
        if child.state != ChildState.DELETED:
            child.machine.move(ChildState.DELETED)
        owner.host.emit(
            ChildSaDeleted(
                peer=owner.require_peer().name,
                ike_sa=owner.id,
                name=child.name,
                inbound_spi=child.inbound_spi,
                outbound_spi=child.outbound_spi,
                reason=reason,
            )
        )

    def child_by_outbound(self, spi: bytes) -> ChildSa | None:
        return next((c for c in self.children.values() if c.outbound_spi == spi), None)

    def owner_of(self, child: ChildSa) -> IkeSa | None:
        """This SA or the one its CHILD SAs moved to (after an IKE rekey), if it holds ``child``."""
        owner: IkeSa | None = self
        while owner is not None and owner.children.get(child.inbound_spi) is not child:
            owner = owner.successor
        return owner

    def find_child_by_outbound(self, spi: bytes) -> ChildSa | None:
        owner: IkeSa | None = self
        while owner is not None:
            child = owner.child_by_outbound(spi)
            if child is not None:
                return child
            owner = owner.successor
        return None

    def move_children_to(self, new: IkeSa) -> None:
        for spi, child in self.children.items():
            new.children[spi] = child
            new.schedule_child(child)
            self.cancel_timer(Timer.CHILD_REKEY, spi)
            self.cancel_timer(Timer.CHILD_EXPIRE, spi)
        self.children = {}
        self.successor = new

    # --- timers --------------------------------------------------------------------------

    def set_timer(self, kind: Timer, at: float, key: bytes = b"") -> None:
        self.timers[(kind, key)] = at

    def cancel_timer(self, kind: Timer, key: bytes = b"") -> None:
        self.timers.pop((kind, key), None)

    def _restart_dpd(self, now: float) -> None:
        peer = self.peer
        if peer is not None and peer.dpd_delay > 0 and self.state == IkeState.ESTABLISHED:
            self.set_timer(Timer.DPD, now + peer.dpd_delay)

    def next_timer(self) -> float | None:
        return min(self.timers.values(), default=None)

    def handle_timer(self, now: float) -> None:
        from trellis.agent.ike.exchanges.timers import TIMER_HANDLERS

        while self.state != IkeState.CLOSED:
            due = [(at, key) for key, at in self.timers.items() if at <= now]
            if not due:
                return
            _, key = min(due, key=lambda item: item[0])
            del self.timers[key]
            TIMER_HANDLERS[key[0]](self, key[1], now)

    def retransmit_or_give_up(self, now: float) -> None:
        out = self.outstanding
        if out is None:
            return
        policy = self.settings.retransmit
        if out.tries < policy.tries:
            out.tries += 1
            self.set_timer(Timer.RETRANSMIT, now + policy.wait(out.tries))
            self.transmit(out.datagrams, now)
            return
        self.outstanding = None
        if self.state in (IkeState.INIT_SENT, IkeState.AUTH_SENT):
            self.fail(f"no answer to {ExchangeType(out.exchange.exchange_type).name}", now)
        elif self.state == IkeState.DELETING:
            self.close(self.delete_reason, now)
        else:
            if self.peer is not None:
                self.host.emit(PeerDead(peer=self.peer.name, ike_sa=self.id, remote=self.remote))
            self.close(DownReason.DEAD, now, detail="no answer to retransmissions")

    def send_keepalive(self, now: float) -> None:
        self.host.send(Datagram(data=NAT_KEEPALIVE, local_port=self.local_port, remote=self.remote))
        self._keepalive_after(now)

    def __repr__(self) -> str:
        return f"IkeSa({self.id}, {self.state.value}, peer={self.peer_name}, initiator={self.initiator})"


def error_notify(error: IkePeerError) -> Notify:
    """The Notify answering a refused request (RFC 7296 section 3.10.1 data where defined)."""
    if error.notify is None:
        raise IkeLocalError("an error without a Notify type is dropped, not answered")
    data = b""
    if isinstance(error, InvalidKePayload):
        data = int(error.wanted).to_bytes(2, "big")
    elif isinstance(error, UnsupportedCriticalPayload):
        data = bytes((error.payload_type & 0xFF,))
    return Notify(notify_type=error.notify, data=data)


ERROR_NOTIFY_LIMIT = 16384  # Notify types below are errors (RFC 7296 section 3.10.1)


def error_notifies(message: Message) -> tuple[Notify, ...]:
    return tuple(n for n in message.find_all(Notify) if n.notify_type < ERROR_NOTIFY_LIMIT)


def find_notify(message: Message, notify_type: NotifyType) -> Notify | None:
    return next((n for n in message.find_all(Notify) if n.notify_type == notify_type), None)
