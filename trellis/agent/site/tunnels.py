"""The CHILD SAs of the IKE engine as data-plane state, sans-IO.

``TunnelTable`` turns what the IKE engine says (its events) and what the data plane says (SA
lifetime events, counters) into two lists: changes for the data plane (install or remove one
direction of an SA, add or remove a route into the tunnel device) and commands for the engine
(rekey or delete a CHILD SA). It owns no socket and reads no clock; the site runtime applies
what it returns, in order.

The rules, in RFC terms:

* a new CHILD SA pair: inbound first, then outbound (RFC 4301 section 4.5: never send on an SA
  the peer cannot open yet), then the routes for its remote selectors;
* a rekeyed pair (RFC 7296 section 2.8): the new inbound at once; the new outbound once the old
  pair is deleted (by the rekey's initiator, after it installed the new pair) or after
  ``EspPolicy.outbound_delay``, whichever comes first: until then the old outbound SA carries the
  traffic and the peer still accepts it. strongSwan does the same as a rekey responder;
* a deleted pair: outbound, then inbound, then the routes no other pair (nor the pinned
  configuration) needs. While a route stays without SA, its traffic is dropped (counted as
  "no SA"), never sent in clear;
* a soft lifetime of the data plane (bytes, packets, sequence numbers) asks the engine for a
  rekey, once per pair; a hard one asks it to delete the pair (the data plane already refuses to
  use an expired SA, so this fails closed even if IKE cannot act);
* the peer moved (NAT rebinding): the data plane's SAs cannot change their endpoints without
  resetting their sequence numbers (which would reuse AES-GCM nonces), so the pairs are rekeyed:
  the new pairs carry the new endpoints;
* inbound packets counted on a pair since the last look: the peer is alive (RFC 7296 section 2.4),
  so the engine can put off its liveness check.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from trellis.agent.dataplane.counters import DataplaneCounters
from trellis.agent.esp.constants import (
    DEFAULT_REPLAY_WINDOW,
    MAX_REPLAY_WINDOW,
    MIN_REPLAY_WINDOW,
    Cipher,
    Direction,
)
from trellis.agent.esp.errors import EspLocalError
from trellis.agent.esp.sa import Lifetime, LifetimeEvent, SaParams
from trellis.agent.esp.selectors import IPNetwork
from trellis.agent.esp.selectors import TrafficSelector as EspSelector
from trellis.agent.ike.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaParams,
    ChildSaRekeyed,
    Event,
    IkeSaDown,
    IkeSaId,
    IkeSaRekeyed,
    PeerAddressChanged,
)
from trellis.agent.ike.payloads import TrafficSelector as IkeSelector

log = logging.getLogger("trellis.agent.site")

# Seconds a rekey's new outbound SA waits for the old pair's deletion before it takes over anyway.
REKEY_OUTBOUND_DELAY = 1.0
# Seconds the data plane keeps an SA past the expiry IKE negotiated: IKE deletes it first; this
# only bounds an SA whose deletion IKE could not carry out.
EXPIRY_GRACE = 5.0


class SiteConfigError(ValueError):
    """A site setting that cannot work (local misuse, never a peer's fault)."""


# --- what the table asks for ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSa:
    params: SaParams


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveSa:
    spi: int
    direction: Direction


@dataclass(frozen=True, slots=True, kw_only=True)
class AddRoute:
    prefix: IPNetwork


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveRoute:
    prefix: IPNetwork


DataplaneChange = InstallSa | RemoveSa | AddRoute | RemoveRoute


@dataclass(frozen=True, slots=True, kw_only=True)
class RekeyChild:
    inbound_spi: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteChild:
    inbound_spi: bytes


EngineCommand = RekeyChild | DeleteChild


@dataclass(frozen=True, slots=True, kw_only=True)
class Changes:
    dataplane: tuple[DataplaneChange, ...] = ()
    engine: tuple[EngineCommand, ...] = ()


NO_CHANGES = Changes()


# --- how a CHILD SA becomes data-plane SAs --------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EspPolicy:
    """Data-plane settings for every CHILD SA: the replay window, and byte/packet lifetimes
    (strongSwan's rekey_/life_ bytes and packets; time lifetimes are IKE's)."""

    replay_window: int = DEFAULT_REPLAY_WINDOW
    rekey_bytes: int | None = None
    life_bytes: int | None = None
    rekey_packets: int | None = None
    life_packets: int | None = None
    expiry_grace: float = EXPIRY_GRACE
    outbound_delay: float = REKEY_OUTBOUND_DELAY

    def __post_init__(self) -> None:
        if not MIN_REPLAY_WINDOW <= self.replay_window <= MAX_REPLAY_WINDOW:
            raise SiteConfigError(
                f"replay_window must be from {MIN_REPLAY_WINDOW} to {MAX_REPLAY_WINDOW}, "
                f"not {self.replay_window}"
            )
        try:
            self.lifetime(expires_in=1.0)
        except EspLocalError as e:
            raise SiteConfigError(str(e)) from None

    def lifetime(self, *, expires_in: float) -> Lifetime:
        return Lifetime(
            soft_bytes=self.rekey_bytes,
            hard_bytes=self.life_bytes,
            soft_packets=self.rekey_packets,
            hard_packets=self.life_packets,
            hard_seconds=max(expires_in, 0.0) + self.expiry_grace,
        )


def esp_selector(selector: IkeSelector) -> EspSelector:
    return EspSelector(
        start=selector.start_address,
        end=selector.end_address,
        protocol=selector.ip_protocol,
        start_port=selector.start_port,
        end_port=selector.end_port,
    )


def esp_sa_params(
    peer: str, child: ChildSaParams, direction: Direction, policy: EspPolicy, *, now: float
) -> SaParams:
    """One direction of a negotiated CHILD SA as the data plane installs it (tunnel mode, ESP in
    UDP between the IKE endpoints). Raises SiteConfigError for a pair the data plane cannot
    carry (plain ESP)."""
    if not child.udp_encapsulation:
        raise SiteConfigError(
            f"CHILD SA {child.name} with {peer} is plain ESP: the userspace data plane needs ESP in UDP "
            "(set 'encapsulation: forced')"
        )
    inbound = direction is Direction.INBOUND
    return SaParams(
        spi=int.from_bytes(child.inbound_spi if inbound else child.outbound_spi, "big"),
        direction=direction,
        cipher=Cipher(int(child.suite.encr)),
        key=child.inbound_key if inbound else child.outbound_key,
        local_ts=tuple(esp_selector(ts) for ts in child.local_ts),
        remote_ts=tuple(esp_selector(ts) for ts in child.remote_ts),
        local_address=ipaddress.ip_address(child.local[0]),
        remote_address=ipaddress.ip_address(child.remote[0]),
        local_port=child.local[1],
        remote_port=child.remote[1],
        esn=child.suite.esn,
        replay_window=policy.replay_window,
        lifetime=policy.lifetime(expires_in=child.expires_at - now),
        tag=f"{peer}/{child.name}",
    )


def selector_networks(selectors: Iterable[IkeSelector]) -> list[IPNetwork]:
    """The prefixes that cover ``selectors`` (ports and protocols aside: routes see addresses)."""
    networks: list[IPNetwork] = []
    for selector in selectors:
        for network in ipaddress.summarize_address_range(selector.start_address, selector.end_address):
            if network not in networks:
                networks.append(network)
    return networks


# --- the table ------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Tunnel:
    """One CHILD SA pair as installed in the data plane."""

    peer: str
    ike_sa: IkeSaId
    name: str
    inbound: SaParams
    outbound: SaParams
    routes: tuple[IPNetwork, ...]
    outbound_installed: bool = False
    outbound_due: float | None = None  # a rekey's outbound SA, waiting for the old pair to go
    replaces: int | None = None  # inbound SPI of the pair this one rekeyed
    rekey_requested: bool = False
    inbound_packets_seen: int = 0

    @property
    def inbound_spi(self) -> bytes:
        return self.inbound.spi.to_bytes(4, "big")


class TunnelTable:
    """The CHILD SA pairs installed in one data plane, and the routes they (and ``pinned``)
    need. See the module docstring for the rules."""

    def __init__(self, policy: EspPolicy | None = None, pinned: Sequence[IPNetwork] = ()) -> None:
        self.policy = policy or EspPolicy()
        self.pinned = tuple(pinned)
        self._tunnels: dict[int, Tunnel] = {}  # by inbound SPI
        self._by_outbound: dict[int, int] = {}  # outbound SPI -> inbound SPI
        self._route_users: Counter[IPNetwork] = Counter()

    # --- reading -------------------------------------------------------------------------

    @property
    def tunnels(self) -> tuple[Tunnel, ...]:
        return tuple(self._tunnels.values())

    @property
    def routes(self) -> tuple[IPNetwork, ...]:
        return tuple(prefix for prefix, users in self._route_users.items() if users > 0)

    def tunnel(self, inbound_spi: int) -> Tunnel | None:
        return self._tunnels.get(inbound_spi)

    def next_timer(self) -> float | None:
        return min(
            (t.outbound_due for t in self._tunnels.values() if t.outbound_due is not None), default=None
        )

    # --- input ---------------------------------------------------------------------------

    def start(self) -> Changes:
        """The routes that stay while the site runs (traffic for configured peers is dropped
        while their tunnel is down, never leaked)."""
        return Changes(dataplane=tuple(self._use_routes(self.pinned)))

    def ike_event(self, event: Event, now: float) -> Changes:
        if isinstance(event, ChildSaInstalled):
            return self._add(event.peer, event.ike_sa, event.child, now, replaces=None)
        if isinstance(event, ChildSaRekeyed):
            old = int.from_bytes(event.old_inbound_spi, "big")
            return self._add(event.peer, event.ike_sa, event.child, now, replaces=old)
        if isinstance(event, ChildSaDeleted):
            return Changes(dataplane=tuple(self._remove(int.from_bytes(event.inbound_spi, "big"))))
        if isinstance(event, IkeSaRekeyed):
            for tunnel in self._tunnels.values():
                if tunnel.ike_sa == event.old:
                    tunnel.ike_sa = event.new
            return NO_CHANGES
        if isinstance(event, IkeSaDown):
            # The engine deletes the CHILD SAs first; this only catches a pair it did not.
            left = [spi for spi, t in self._tunnels.items() if t.ike_sa == event.ike_sa]
            if left:
                log.warning("IKE SA %s went down with %d CHILD SAs still installed", event.ike_sa, len(left))
            return Changes(dataplane=tuple(change for spi in left for change in self._remove(spi)))
        if isinstance(event, PeerAddressChanged):
            moved = [int.from_bytes(spi, "big") for spi in event.child_inbound_spis]
            return Changes(
                engine=tuple(self._request_rekey(spi, force=True) for spi in moved if spi in self._tunnels)
            )
        return NO_CHANGES

    def lifetime_event(self, event: LifetimeEvent) -> Changes:
        inbound = event.spi if event.direction is Direction.INBOUND else self._by_outbound.get(event.spi)
        tunnel = self._tunnels.get(inbound) if inbound is not None else None
        if tunnel is None:
            return NO_CHANGES
        if event.hard:
            return Changes(engine=(DeleteChild(inbound_spi=tunnel.inbound_spi),))
        if tunnel.rekey_requested:
            return NO_CHANGES
        return Changes(engine=(self._request_rekey(tunnel.inbound.spi, force=False),))

    def poll(self, now: float) -> Changes:
        """Install the outbound SAs of rekeys whose wait is over."""
        changes: list[DataplaneChange] = []
        for tunnel in self._tunnels.values():
            if tunnel.outbound_due is not None and tunnel.outbound_due <= now:
                changes += self._install_outbound(tunnel)
        return Changes(dataplane=tuple(changes))

    def inbound_traffic(self, counters: DataplaneCounters) -> list[bytes]:
        """Inbound SPIs (as the engine names CHILD SAs) that received packets since the last call."""
        alive: list[bytes] = []
        for sa in counters.sas:
            tunnel = self._tunnels.get(sa.spi) if sa.direction is Direction.INBOUND else None
            if tunnel is not None and sa.packets > tunnel.inbound_packets_seen:
                tunnel.inbound_packets_seen = sa.packets
                alive.append(tunnel.inbound_spi)
        return alive

    # --- internals -----------------------------------------------------------------------

    def _add(
        self, peer: str, ike_sa: IkeSaId, child: ChildSaParams, now: float, *, replaces: int | None
    ) -> Changes:
        try:
            inbound = esp_sa_params(peer, child, Direction.INBOUND, self.policy, now=now)
            outbound = esp_sa_params(peer, child, Direction.OUTBOUND, self.policy, now=now)
        except (SiteConfigError, EspLocalError) as e:
            # Not a pair this data plane can carry: better no CHILD SA than one that drops all.
            log.error("deleting CHILD SA %s with %s: %s", child.name, peer, e)
            return Changes(engine=(DeleteChild(inbound_spi=child.inbound_spi),))
        if inbound.spi in self._tunnels:
            log.warning("CHILD SA %08x is installed already; ignoring the repeat", inbound.spi)
            return NO_CHANGES
        peer_host = ipaddress.ip_address(child.remote[0])
        routes = []
        for prefix in selector_networks(child.remote_ts):
            if peer_host in prefix:
                # Routing the peer's own address into the tunnel would send the tunnel into itself.
                log.warning("not routing %s into the tunnel: it holds the peer %s", prefix, peer_host)
                continue
            routes.append(prefix)
        waits = replaces is not None and replaces in self._tunnels
        tunnel = Tunnel(
            peer=peer,
            ike_sa=ike_sa,
            name=child.name,
            inbound=inbound,
            outbound=outbound,
            routes=tuple(routes),
            outbound_due=now + self.policy.outbound_delay if waits else None,
            replaces=replaces if waits else None,
        )
        self._tunnels[inbound.spi] = tunnel
        self._by_outbound[outbound.spi] = inbound.spi
        changes: list[DataplaneChange] = [InstallSa(params=inbound)]
        if not waits:
            changes += self._install_outbound(tunnel)
        changes += self._use_routes(tunnel.routes)
        return Changes(dataplane=tuple(changes))

    def _install_outbound(self, tunnel: Tunnel) -> list[DataplaneChange]:
        tunnel.outbound_due = None
        if tunnel.outbound_installed:
            return []
        tunnel.outbound_installed = True
        return [InstallSa(params=tunnel.outbound)]

    def _remove(self, inbound_spi: int) -> list[DataplaneChange]:
        tunnel = self._tunnels.pop(inbound_spi, None)
        if tunnel is None:
            return []
        self._by_outbound.pop(tunnel.outbound.spi, None)
        changes: list[DataplaneChange] = []
        for successor in self._tunnels.values():
            if successor.replaces == inbound_spi:
                successor.replaces = None
                changes += self._install_outbound(successor)  # before the old one goes
        if tunnel.outbound_installed:
            changes.append(RemoveSa(spi=tunnel.outbound.spi, direction=Direction.OUTBOUND))
        changes.append(RemoveSa(spi=tunnel.inbound.spi, direction=Direction.INBOUND))
        changes += self._release_routes(tunnel.routes)
        return changes

    def _request_rekey(self, inbound_spi: int, *, force: bool) -> RekeyChild:
        tunnel = self._tunnels[inbound_spi]
        if not force:
            tunnel.rekey_requested = True
        return RekeyChild(inbound_spi=tunnel.inbound_spi)

    def _use_routes(self, prefixes: Sequence[IPNetwork]) -> list[DataplaneChange]:
        changes: list[DataplaneChange] = []
        for prefix in prefixes:
            if self._route_users[prefix] == 0:
                changes.append(AddRoute(prefix=prefix))
            self._route_users[prefix] += 1
        return changes

    def _release_routes(self, prefixes: Sequence[IPNetwork]) -> list[DataplaneChange]:
        changes: list[DataplaneChange] = []
        for prefix in prefixes:
            self._route_users[prefix] -= 1
            if self._route_users[prefix] <= 0:
                del self._route_users[prefix]
                changes.append(RemoveRoute(prefix=prefix))
        return changes
