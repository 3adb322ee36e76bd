"""The IKE engine, sans-IO: every IKE SA of this agent, found by SPI, plus the responder's front
door (IKE_SA_INIT, COOKIEs) and the will to keep configured peers up.

Use::

    engine = IkeEngine(settings=..., peers=[...], credentials={"default": creds},
                       local_address_for=route_lookup)
    engine.start(now)
    esp = engine.datagram_received(data, local_port=4500, remote=("192.0.2.1", 4500), now=now)
    for datagram in engine.datagrams(): ...   # send them
    for event in engine.events(): ...         # act on them
    engine.handle_timer(now) whenever now >= engine.next_timer()

Nothing here reads a clock, opens a socket or sleeps. Randomness: SPIs and nonces come from
``secrets``; lifetime jitter from the ``rng`` given (seed it in tests).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
import secrets
from collections.abc import Callable, Mapping, Sequence

from trellis.agent.ike.child import ESP_SPI_LENGTH, MIN_ESP_SPI, ChildSa
from trellis.agent.ike.config import (
    Address,
    CertificateCredentials,
    DeadPeerAction,
    EngineSettings,
    PeerConfig,
)
from trellis.agent.ike.constants import ExchangeType
from trellis.agent.ike.cookies import CookieJar
from trellis.agent.ike.crypto.certs import RevocationCheck
from trellis.agent.ike.errors import IkeLocalError, IkePeerError, InvalidIkeSpi, MalformedMessage
from trellis.agent.ike.events import ChildSaDeleted, DownReason, Event, IkeSaId
from trellis.agent.ike.exchanges.authn import credential_expiry
from trellis.agent.ike.exchanges.create_child import CreateChild
from trellis.agent.ike.exchanges.informational import DeleteChildren
from trellis.agent.ike.exchanges.init import IkeSaInit, answer_ike_sa_init, cookie_response, request_cookie
from trellis.agent.ike.exchanges.rekey_ike import RekeyIke
from trellis.agent.ike.message import decode_header, decode_message
from trellis.agent.ike.payloads import Nonce
from trellis.agent.ike.proposals import first_ike_group
from trellis.agent.ike.sa import ZERO_SPI, IkeSa, Timer
from trellis.agent.ike.states import ChildInput, ChildState, IkeState, LocalAction
from trellis.agent.ike.status import IkeSaStatus, describe_sa
from trellis.agent.ike.udp import EspDatagram, IkeDatagram, classify_nat_t_datagram, frame_ike_for_nat_t
from trellis.agent.ike.window import Datagram, Step

log = logging.getLogger("trellis.agent.ike")

_NO_RECONNECT = frozenset(
    {
        DownReason.DELETED,
        DownReason.PEER_DELETED,
        DownReason.REKEYED,
        DownReason.REAUTHENTICATED,
        DownReason.REPLACED,
    }
)
_LIVE = frozenset({IkeState.INIT_SENT, IkeState.AUTH_SENT, IkeState.HALF_OPEN, IkeState.ESTABLISHED})


def _never_revoked(identity: str | None, serial: str) -> bool:
    return False


def _same_host(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


# How to reach a peer and who starts: these may change without renegotiating anything.
_REACH_FIELDS = ("remote_host", "remote_port", "remote_nat_t_port", "initiate", "dpd_action")


def _same_terms(old: PeerConfig, new: PeerConfig) -> bool:
    """True if ``new`` differs from ``old`` only in how the peer is reached or who initiates."""
    return dataclasses.replace(old, **{f: getattr(new, f) for f in _REACH_FIELDS}) == new


class IkeEngine:
    def __init__(
        self,
        *,
        local_address_for: Callable[[str], str],
        settings: EngineSettings | None = None,
        peers: Sequence[PeerConfig] = (),
        credentials: Mapping[str, CertificateCredentials] | None = None,
        is_revoked: RevocationCheck = _never_revoked,
        rng: random.Random | None = None,
        keylog: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or EngineSettings()
        self._local_address_for = local_address_for
        self._peers: dict[str, PeerConfig] = {}
        for peer in peers:
            if peer.name in self._peers:
                raise IkeLocalError(f"two peers named {peer.name!r}")
            self._peers[peer.name] = peer
        self._credentials: dict[str, CertificateCredentials] = dict(credentials or {})
        self._is_revoked = is_revoked
        self._rng = rng or random.Random()
        self._keylog = keylog
        self._sas: dict[bytes, IkeSa] = {}  # by our SPI
        self._half_open: dict[tuple[Address, bytes], IkeSa] = {}  # (peer address, SPIi)
        self._half_open_keys: dict[bytes, tuple[Address, bytes]] = {}
        self._child_spis: set[bytes] = set()
        self._cookies = CookieJar(lifetime=self.settings.cookie_secret_lifetime)
        self._out: list[Datagram] = []
        self._events: list[Event] = []
        self._wanted: set[str] = set()
        self._reconnect_at: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self.dropped = 0  # messages refused as the peer's fault (logged at debug level)

    # --- configuration -------------------------------------------------------------------

    @property
    def peers(self) -> Mapping[str, PeerConfig]:
        return dict(self._peers)

    def set_credentials(
        self, name: str, credentials: CertificateCredentials, now: float | None = None
    ) -> None:
        """Install or replace a certificate credential. New exchanges use it at once; live IKE SAs
        re-authenticate with it before the old certificate expires, or right away (given ``now``)
        if their re-authentication was already due and put off for want of a new certificate."""
        self._credentials[name] = credentials
        if now is None:
            return
        for sa in list(self._sas.values()):
            if sa.reauth_deferred and sa.state == IkeState.ESTABLISHED:
                sa.reauth_deferred = False
                self.reauthenticate(sa, now)

    def set_revocation_check(self, check: RevocationCheck) -> None:
        self._is_revoked = check

    def set_peers(self, peers: Sequence[PeerConfig], now: float) -> None:
        """Reconcile to a new peer list: removed peers and peers whose negotiated terms changed lose
        their SAs; a peer whose address or role (who initiates) alone changed keeps its SAs, as a
        mesh learns endpoints while sites come and go; new and changed peers are initiated if they
        say so."""
        new = {p.name: p for p in peers}
        for name, old in list(self._peers.items()):
            peer = new.get(name)
            if peer == old:
                continue
            if peer is not None and _same_terms(old, peer):
                self._reach_changed(old, peer, now)
                continue
            self.terminate(name, now)
            del self._peers[name]
        for name, peer in new.items():
            if name not in self._peers:
                self._peers[name] = peer
                if peer.initiate:
                    self.initiate(name, now)

    def _reach_changed(self, old: PeerConfig, new: PeerConfig, now: float) -> None:
        self._peers[new.name] = new
        sas = [sa for sa in self._sas.values() if sa.peer_name == new.name]
        for sa in sas:
            sa.peer = new
        if new.initiate and not old.initiate and not sas:
            self.initiate(new.name, now)
        elif new.initiate:
            self._wanted.add(new.name)
        else:  # the peer starts now; we answer
            self._wanted.discard(new.name)
            self._reconnect_at.pop(new.name, None)

    def recheck_peers(self, now: float) -> None:
        """Delete every IKE SA whose peer is now revoked (call after the revocation list changed)."""
        for sa in list(self._sas.values()):
            auth = sa.peer_auth
            if (
                sa.state == IkeState.ESTABLISHED
                and auth is not None
                and auth.serial is not None
                and self._is_revoked(auth.identity, auth.serial)
            ):
                sa.delete(DownReason.REVOKED, now)

    # --- commands --------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Initiate every peer configured to be initiated."""
        for peer in self._peers.values():
            if peer.initiate:
                self.initiate(peer.name, now)

    def initiate(self, name: str, now: float) -> IkeSaId:
        peer = self._peer(name)
        if peer.remote_host is None:
            raise IkeLocalError(f"peer {name!r} has no address to initiate to")
        self._wanted.add(name)
        self._reconnect_at.pop(name, None)
        return self._initiate(peer, now).id

    def terminate(self, name: str, now: float) -> None:
        """Stop keeping ``name`` up and delete its IKE SAs."""
        self._wanted.discard(name)
        self._reconnect_at.pop(name, None)
        for sa in list(self._sas.values()):
            if sa.peer_name == name:
                sa.delete(DownReason.DELETED, now)

    def rekey(self, ike_sa: IkeSaId, now: float) -> None:
        sa = self._established(ike_sa)
        if not sa.accepts(LocalAction.REKEY_IKE):
            raise IkeLocalError(f"IKE SA {ike_sa} cannot be rekeyed in state {sa.state.value}")
        sa.start(RekeyIke(), now)

    def reauthenticate(self, sa: IkeSa, now: float) -> None:
        """Make-before-break re-authentication: a new IKE SA (with the current certificate) and
        its CHILD SAs; the old one is deleted once the new one is up."""
        peer = sa.peer
        if peer is None or peer.remote_host is None or sa.state != IkeState.ESTABLISHED:
            return
        if any(other.reauth_of is sa and other.state in _LIVE for other in self._sas.values()):
            return
        if self._own_certificate_limits(sa, peer):
            sa.reauth_deferred = True  # until set_credentials brings a renewed certificate
            return
        self._initiate(peer, now, reauth_of=sa)

    def _own_certificate_limits(self, sa: IkeSa, peer: PeerConfig) -> bool:
        """Our certificate bounds the SA and has not been renewed: re-authenticating would buy
        nothing."""
        current = credential_expiry(self, peer)
        mine, theirs = sa.credential_not_after, sa.peer_auth.not_after if sa.peer_auth else None
        return (
            current is not None
            and mine is not None
            and current <= mine
            and (theirs is None or mine <= theirs)
        )

    def reauth(self, ike_sa: IkeSaId, now: float) -> None:
        self.reauthenticate(self._established(ike_sa), now)

    def delete(self, ike_sa: IkeSaId, now: float) -> None:
        self._established(ike_sa).delete(DownReason.DELETED, now)

    def rekey_child(self, inbound_spi: bytes, now: float) -> None:
        sa, child = self._child(inbound_spi)
        if not child.accepts(ChildInput.START_REKEY) or not sa.accepts(LocalAction.REKEY_CHILD):
            raise IkeLocalError(f"CHILD SA {inbound_spi.hex()} cannot be rekeyed now")
        child.machine.move(ChildState.REKEYING)
        sa.start(CreateChild(child.config, rekey=child), now)

    def delete_child(self, inbound_spi: bytes, now: float) -> None:
        sa, child = self._child(inbound_spi)
        if not child.accepts(ChildInput.START_DELETE) or not sa.accepts(LocalAction.DELETE_CHILD):
            raise IkeLocalError(f"CHILD SA {inbound_spi.hex()} cannot be deleted now")
        child.machine.move(ChildState.DELETING)
        sa.start(DeleteChildren(children=(child,), reason=DownReason.DELETED), now)

    def create_child(self, ike_sa: IkeSaId, child_name: str, now: float) -> None:
        sa = self._established(ike_sa)
        peer = sa.require_peer()
        config = next((c for c in peer.children if c.name == child_name), None)
        if config is None or not sa.accepts(LocalAction.CREATE_CHILD):
            raise IkeLocalError(f"cannot create CHILD SA {child_name!r} on {ike_sa}")
        sa.start(CreateChild(config), now)

    def note_esp_traffic(self, inbound_spi: bytes, now: float) -> None:
        """Authenticated ESP arrived: the peer is alive, no liveness check needed yet (RFC 7296
        section 2.4)."""
        for sa in self._sas.values():
            if inbound_spi in sa.children and sa.peer is not None and sa.peer.dpd_delay > 0:
                sa.set_timer(Timer.DPD, now + sa.peer.dpd_delay)
                return

    # --- input and output ------------------------------------------------------------------

    def datagram_received(self, data: bytes, *, local_port: int, remote: Address, now: float) -> bytes | None:
        """A UDP payload that arrived on ``local_port`` from ``remote``. On the NAT-T port it may
        be ESP, which is returned for the data plane; anything else returns None. Peer faults are
        dropped here (counted in ``dropped``); only our own bugs raise."""
        message = data
        try:
            if local_port == self.settings.nat_t_port:
                kind = classify_nat_t_datagram(data)
                if isinstance(kind, EspDatagram):
                    return kind.packet
                if not isinstance(kind, IkeDatagram):
                    return None  # NAT keepalive
                message = kind.message
            self._receive(message, local_port=local_port, remote=remote, now=now)
        except IkePeerError as e:
            self.dropped += 1
            log.debug("dropped a datagram from %s:%d: %s", remote[0], remote[1], e)
        return None

    def datagrams(self) -> list[Datagram]:
        """Everything to send since the last call, in order."""
        out, self._out = self._out, []
        return out

    def events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_timer(self) -> float | None:
        times = [t for t in (sa.next_timer() for sa in self._sas.values()) if t is not None]
        times += self._reconnect_at.values()
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        for name, at in list(self._reconnect_at.items()):
            if at <= now:
                del self._reconnect_at[name]
                peer = self._peers.get(name)
                if peer is not None and name in self._wanted and not self._live(name):
                    self._initiate(peer, now)
        for sa in list(self._sas.values()):
            sa.handle_timer(now)

    def status(self) -> list[IkeSaStatus]:
        return [describe_sa(sa) for sa in self._sas.values()]

    def sa(self, ike_sa: IkeSaId) -> IkeSa | None:
        """The IKE SA object (for status and tests; drive it through the engine's commands)."""
        return next((s for s in self._sas.values() if s.id == ike_sa), None)

    # --- SaHost ----------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        if isinstance(event, ChildSaDeleted):
            self._child_spis.discard(event.inbound_spi)
        self._events.append(event)

    def send(self, datagram: Datagram) -> None:
        self._out.append(datagram)

    def credentials(self, name: str) -> CertificateCredentials:
        try:
            return self._credentials[name]
        except KeyError:
            raise IkeLocalError(f"no credential named {name!r}") from None

    def is_revoked(self, identity: str | None, serial: str) -> bool:
        return self._is_revoked(identity, serial)

    def jitter(self, amount: float) -> float:
        return self._rng.uniform(0.0, amount) if amount > 0 else 0.0

    def new_ike_spi(self) -> bytes:
        while True:
            spi = secrets.token_bytes(8)
            if spi != ZERO_SPI and spi not in self._sas:
                return spi

    def new_child_spi(self) -> bytes:
        while True:
            spi = secrets.token_bytes(ESP_SPI_LENGTH)
            if int.from_bytes(spi, "big") >= MIN_ESP_SPI and spi not in self._child_spis:
                self._child_spis.add(spi)
                return spi

    def keylog(self, line: str) -> None:
        if self._keylog is not None:
            self._keylog(line)

    def local_address_for(self, remote_host: str) -> str:
        return self._local_address_for(remote_host)

    def adopt(self, sa: IkeSa) -> None:
        self._sas[sa.our_spi] = sa

    def sa_established(self, sa: IkeSa, now: float) -> None:
        self._forget_half_open(sa)
        peer = sa.require_peer()
        self._attempts.pop(peer.name, None)
        if sa.initiator:
            for config in peer.children[1:]:
                sa.start(CreateChild(config), now)
        old = sa.reauth_of
        if old is not None:

            def retire(t: float, old: IkeSa = old) -> None:
                while old.successor is not None:
                    old = old.successor
                if old.state in (IkeState.ESTABLISHED, IkeState.REKEYED):
                    old.delete(DownReason.REAUTHENTICATED, t)

            sa.start(Step(retire), now)

    def sa_closed(self, sa: IkeSa, reason: DownReason, now: float) -> None:
        self._forget_half_open(sa)
        if self._sas.get(sa.our_spi) is sa:
            del self._sas[sa.our_spi]
        peer = sa.peer
        if peer is None or peer.name not in self._wanted or self._live(peer.name):
            return
        if reason == DownReason.PEER_DELETED:
            self._wanted.discard(peer.name)  # the peer closed it on purpose (close_action none)
            return
        if reason in _NO_RECONNECT or (reason == DownReason.DEAD and peer.dpd_action == DeadPeerAction.CLEAR):
            return
        attempts = self._attempts.get(peer.name, 0)
        self._attempts[peer.name] = attempts + 1
        delay = min(self.settings.reconnect_delay * 2**attempts, self.settings.reconnect_max_delay)
        self._reconnect_at[peer.name] = now + delay

    def has_established_sa(self, peer: str, *, besides: IkeSa) -> bool:
        return any(
            sa is not besides and sa.peer_name == peer and sa.state == IkeState.ESTABLISHED
            for sa in self._sas.values()
        )

    def replace_older_sas(self, sa: IkeSa, now: float) -> None:
        """INITIAL_CONTACT (RFC 7296 section 2.4): the peer has no other IKE SA with us, so ours
        are stale; they are dropped without a message."""
        remote_id = sa.peer_auth.remote_id if sa.peer_auth is not None else None
        for other in list(self._sas.values()):
            if (
                other is not sa
                and other.peer_name == sa.peer_name
                and other.state == IkeState.ESTABLISHED
                and other.created_at < sa.created_at
                and other.peer_auth is not None
                and other.peer_auth.remote_id == remote_id
            ):
                other.close(DownReason.REPLACED, now, detail="the peer sent INITIAL_CONTACT")

    # --- internals -------------------------------------------------------------------------

    def _peer(self, name: str) -> PeerConfig:
        try:
            return self._peers[name]
        except KeyError:
            raise IkeLocalError(f"no peer named {name!r}") from None

    def _live(self, name: str) -> bool:
        return any(sa.peer_name == name and sa.state in _LIVE for sa in self._sas.values())

    def _established(self, ike_sa: IkeSaId) -> IkeSa:
        sa = self.sa(ike_sa)
        if sa is None:
            raise IkeLocalError(f"no IKE SA {ike_sa}")
        return sa

    def _child(self, inbound_spi: bytes) -> tuple[IkeSa, ChildSa]:
        for sa in self._sas.values():
            child = sa.children.get(inbound_spi)
            if child is not None:
                return sa, child
        raise IkeLocalError(f"no CHILD SA with inbound SPI {inbound_spi.hex()}")

    def _initiate(self, peer: PeerConfig, now: float, *, reauth_of: IkeSa | None = None) -> IkeSa:
        if peer.remote_host is None:
            raise IkeLocalError(f"peer {peer.name!r} has no address")
        remote = (peer.remote_host, peer.remote_port)
        local_port = self.settings.ike_port
        if reauth_of is not None:
            remote, local_port = reauth_of.remote, reauth_of.local_port
        sa = IkeSa(
            self,
            initiator=True,
            spi_i=self.new_ike_spi(),
            spi_r=ZERO_SPI,
            local_port=local_port,
            remote=remote,
            peer=peer,
            candidates=(peer,),
            state=IkeState.INIT_SENT,
            now=now,
        )
        sa.reauth_of = reauth_of
        self._sas[sa.our_spi] = sa
        sa.start(IkeSaInit(group=first_ike_group(peer.ike_proposals)), now)
        return sa

    def _candidates(self, host: str) -> list[PeerConfig]:
        exact = [
            p for p in self._peers.values() if p.remote_host is not None and _same_host(p.remote_host, host)
        ]
        anywhere = [p for p in self._peers.values() if p.remote_host is None]
        return exact + anywhere

    def _forget_half_open(self, sa: IkeSa) -> None:
        key = self._half_open_keys.pop(sa.our_spi, None)
        if key is not None and self._half_open.get(key) is sa:
            del self._half_open[key]

    def _send_raw(self, message: bytes, local_port: int, remote: Address) -> None:
        data = frame_ike_for_nat_t(message) if local_port == self.settings.nat_t_port else message
        self._out.append(Datagram(data=data, local_port=local_port, remote=remote))

    def _receive(self, message: bytes, *, local_port: int, remote: Address, now: float) -> None:
        header = decode_header(message)
        if header.exchange == ExchangeType.IKE_SA_INIT and not header.response:
            if not header.initiator or header.spi_r != ZERO_SPI:
                raise MalformedMessage("an IKE_SA_INIT request must come from the initiator with SPIr 0")
            self._init_request(message, local_port=local_port, remote=remote, now=now)
            return
        our_spi = header.spi_r if header.initiator else header.spi_i
        sa = self._sas.get(our_spi)
        if sa is None:
            raise InvalidIkeSpi(f"no IKE SA with SPI {our_spi.hex()}")
        sa.receive(message, header, local_port=local_port, remote=remote, now=now)

    def _init_request(self, message: bytes, *, local_port: int, remote: Address, now: float) -> None:
        header = decode_header(message)
        existing = self._half_open.get((remote, header.spi_i))
        if existing is not None:
            # A retransmission is answered from the cache; a different message with the same
            # SPI is not ours to judge (section 2.1): drop it.
            cached = existing.cached_response
            if (
                existing.state == IkeState.HALF_OPEN
                and message == existing.init_request
                and cached is not None
            ):
                existing.transmit(cached.datagrams, now, local_port=local_port, remote=remote)
            return
        request = decode_message(message)
        candidates = self._candidates(remote[0])
        if not candidates:
            raise InvalidIkeSpi(f"no peer configured for {remote[0]}")
        if len(self._half_open) >= self.settings.cookie_threshold:
            nonce = request.find(Nonce)
            if nonce is None:
                raise MalformedMessage("IKE_SA_INIT without a Nonce")
            cookie = request_cookie(request)
            if cookie is None or not self._cookies.check(
                cookie, nonce=nonce.data, host=remote[0], spi_i=header.spi_i, now=now
            ):
                made = self._cookies.make(nonce=nonce.data, host=remote[0], spi_i=header.spi_i, now=now)
                self._send_raw(cookie_response(request, made), local_port, remote)
                return
        sa, response = answer_ike_sa_init(
            self, request, message, local_port=local_port, remote=remote, candidates=candidates, now=now
        )
        if sa is not None:
            self._sas[sa.our_spi] = sa
            key = (remote, header.spi_i)
            self._half_open[key] = sa
            self._half_open_keys[sa.our_spi] = key
        self._send_raw(response, local_port, remote)
