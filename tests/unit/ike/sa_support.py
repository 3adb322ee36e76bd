"""An in-memory network of IKE engines with an injected clock, and real certificates from the
controller's CA, for the state machine tests."""

from __future__ import annotations

import datetime as dt
import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from trellis.agent.ike.config import (
    CertificateAuth,
    CertificateCredentials,
    ChildConfig,
    EngineSettings,
    Lifetime,
    PeerConfig,
    PskAuth,
    RetransmitPolicy,
)
from trellis.agent.ike.engine import IkeEngine
from trellis.agent.ike.events import Event
from trellis.agent.ike.ids import parse_ike_id
from trellis.agent.ike.selectors import parse_selector
from trellis.agent.ike.window import Datagram
from trellis.controller.ca import CertificateAuthority, make_csr
from trellis.v1.identity import Identity

CA_TIME = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
T0 = CA_TIME.timestamp()
DOMAIN = "example.org"
ADDRESS_A = "192.0.2.1"
ADDRESS_B = "198.51.100.1"
LAN_A = "10.1.0.0/24"
LAN_B = "10.2.0.0/24"
CERT_TTL = dt.timedelta(hours=1)
# Fast retransmission for tests: 1, 2, 4 s; dead after 7 s of silence plus the last wait.
FAST_RETRANSMIT = RetransmitPolicy(timeout=1.0, base=2.0, tries=3)
PSK = b"correct horse battery staple, long enough"

E = TypeVar("E")
Key = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@functools.cache
def ca() -> CertificateAuthority:
    return CertificateAuthority.create(DOMAIN, now=CA_TIME)


@functools.cache
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.create(DOMAIN, now=CA_TIME)


def new_key(kind: str) -> Key:
    return (
        ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else ec.generate_private_key(ec.SECP256R1())
    )


def issue(
    name: str,
    *,
    key: Key | None = None,
    authority: CertificateAuthority | None = None,
    now: dt.datetime = CA_TIME,
    ttl: dt.timedelta = CERT_TTL,
    key_kind: str = "ecdsa",
) -> CertificateCredentials:
    authority = authority or ca()
    key = key or new_key(key_kind)
    certificate = authority.issue(make_csr(key, None), Identity.site(DOMAIN, name), now=now, ttl=ttl)
    return CertificateCredentials(chain=(certificate,), key=key)


def identity(name: str) -> str:
    return Identity.site(DOMAIN, name).uri


def child(
    name: str = "lan",
    *,
    local: Sequence[str] = (LAN_A,),
    remote: Sequence[str] = (LAN_B,),
    lifetime: Lifetime | None = None,
    **kwargs: object,
) -> ChildConfig:
    extra = {"lifetime": lifetime} if lifetime is not None else {}
    return ChildConfig(
        name=name,
        local_ts=tuple(parse_selector(s) for s in local),
        remote_ts=tuple(parse_selector(s) for s in remote),
        **extra,  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


def cert_peer(
    name: str,
    remote_host: str | None,
    *,
    remote_id: str | None,
    children: Sequence[ChildConfig] = (),
    anchors: Sequence[x509.Certificate] | None = None,
    initiate: bool = True,
    **kwargs: object,
) -> PeerConfig:
    return PeerConfig(
        name=name,
        remote_host=remote_host,
        auth=CertificateAuth(trust_anchors=tuple(anchors or (ca().certificate,))),
        children=tuple(children),
        remote_id=remote_id,
        initiate=initiate,
        **kwargs,  # type: ignore[arg-type]
    )


def psk_peer(
    name: str,
    remote_host: str | None,
    *,
    local_id: str,
    remote_id: str,
    secret: bytes = PSK,
    children: Sequence[ChildConfig] = (),
    initiate: bool = True,
    **kwargs: object,
) -> PeerConfig:
    return PeerConfig(
        name=name,
        remote_host=remote_host,
        auth=PskAuth(secret=secret),
        children=tuple(children),
        local_id=parse_ike_id(local_id),
        remote_id=remote_id,
        initiate=initiate,
        **kwargs,  # type: ignore[arg-type]
    )


@dataclass
class Node:
    name: str
    address: str
    engine: IkeEngine
    events: list[Event] = field(default_factory=list)
    received_esp: list[bytes] = field(default_factory=list)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


Filter = Callable[[str, Datagram], bool]
"""(sender node name, datagram) -> deliver it?"""


class Network:
    """Engines joined by a perfect (or filtered) wire. Datagrams are delivered in order; time
    moves only to the next timer."""

    def __init__(self, now: float = T0) -> None:
        self.now = now
        self.nodes: dict[str, Node] = {}
        self.wire: list[tuple[str, Datagram]] = []
        self.filter: Filter | None = None
        self.delivered = 0
        self.log: list[tuple[float, str, Datagram]] = []
        self.nats: dict[str, tuple[str, int]] = {}  # node -> (public address, port offset)

    def nat(self, node: str, public: str, offset: int) -> None:
        """Put ``node`` behind a NAT that maps its port p to ``public``:p+``offset`` (changing
        ``offset`` later is a NAT rebinding)."""
        self.nats[node] = (public, offset)

    def add(
        self,
        name: str,
        address: str,
        *,
        peers: Sequence[PeerConfig],
        credentials: CertificateCredentials | None = None,
        settings: EngineSettings | None = None,
        **kwargs: object,
    ) -> Node:
        def route(_remote: str) -> str:
            return address

        engine = IkeEngine(
            local_address_for=route,
            settings=settings or EngineSettings(retransmit=FAST_RETRANSMIT),
            peers=peers,
            credentials={"default": credentials} if credentials else {},
            rng=random.Random(len(self.nodes)),
            **kwargs,  # type: ignore[arg-type]
        )
        node = Node(name=name, address=address, engine=engine)
        self.nodes[name] = node
        return node

    def _by_address(self, address: str) -> Node | None:
        return next((n for n in self.nodes.values() if n.address == address), None)

    def collect(self) -> None:
        for node in self.nodes.values():
            for datagram in node.engine.datagrams():
                self.wire.append((node.name, datagram))
            node.events += node.engine.events()

    def step(self) -> bool:
        """Deliver one datagram; False if the wire is empty."""
        self.collect()
        if not self.wire:
            return False
        sender, datagram = self.wire.pop(0)
        self.log.append((self.now, sender, datagram))
        if self.filter is not None and not self.filter(sender, datagram):
            return True
        source = (self.nodes[sender].address, datagram.local_port)
        if sender in self.nats:  # leaving through the sender's NAT
            public, offset = self.nats[sender]
            source = (public, datagram.local_port + offset)
        destination = datagram.remote
        behind = next((name for name, (public, _) in self.nats.items() if public == destination[0]), None)
        if behind is not None:  # arriving at a NAT: back to the node behind it, if mapped
            offset = self.nats[behind][1]
            destination = (self.nodes[behind].address, destination[1] - offset)
            target: Node | None = self.nodes[behind]
        else:
            target = self._by_address(destination[0])
        if target is None:
            return True
        esp = target.engine.datagram_received(
            datagram.data, local_port=destination[1], remote=source, now=self.now
        )
        if esp is not None:
            target.received_esp.append(esp)
        self.delivered += 1
        self.collect()
        return True

    def settle(self, max_steps: int = 1000) -> None:
        """Deliver until the wire is quiet (no time passes)."""
        for _ in range(max_steps):
            if not self.step():
                return
        raise AssertionError("the network did not settle")

    def next_timer(self) -> float | None:
        times = [t for t in (n.engine.next_timer() for n in self.nodes.values()) if t is not None]
        return min(times, default=None)

    def run(self, seconds: float, max_steps: int = 100_000) -> None:
        """Let ``seconds`` pass: deliver, fire timers in order, deliver again."""
        until = self.now + seconds
        for _ in range(max_steps):
            self.settle()
            due = self.next_timer()
            if due is None or due > until:
                self.now = until
                return
            self.now = max(self.now, due)
            for node in self.nodes.values():
                node.engine.handle_timer(self.now)
        raise AssertionError("too many steps")


def pair(
    *,
    key_a: str = "ecdsa",
    key_b: str = "ecdsa",
    peer_a: dict[str, Any] | None = None,
    peer_b: dict[str, Any] | None = None,
    child_a: ChildConfig | None = None,
    child_b: ChildConfig | None = None,
    settings: EngineSettings | None = None,
) -> tuple[Network, Node, Node]:
    """Site a (initiator, 192.0.2.1, LAN 10.1/24) and site b (responder, 198.51.100.1, 10.2/24),
    certificates from one CA; ``peer_a``/``peer_b`` override fields of each side's PeerConfig."""
    net = Network()
    config_a = cert_peer("b", ADDRESS_B, remote_id=identity("b"), children=(child_a or child(),))
    config_b = cert_peer(
        "a",
        ADDRESS_A,
        remote_id=identity("a"),
        children=(child_b or child(local=(LAN_B,), remote=(LAN_A,)),),
        initiate=False,
    )
    config_a = replace(config_a, **(peer_a or {}))
    config_b = replace(config_b, **(peer_b or {}))
    a = net.add("a", ADDRESS_A, peers=[config_a], credentials=issue("a", key_kind=key_a), settings=settings)
    b = net.add("b", ADDRESS_B, peers=[config_b], credentials=issue("b", key_kind=key_b), settings=settings)
    return net, a, b


def with_changes(peer: PeerConfig, **changes: object) -> PeerConfig:
    return replace(peer, **changes)  # type: ignore[arg-type]


def assert_consistent(a: Node, b: Node, *, children: int = 1) -> None:
    """Each side holds exactly one established IKE SA, the same one, with ``children`` CHILD SAs
    whose SPIs mirror each other."""
    sas_a = [s for s in a.engine.status() if s.state == "established"]
    sas_b = [s for s in b.engine.status() if s.state == "established"]
    assert len(sas_a) == 1 and len(sas_b) == 1, (a.engine.status(), b.engine.status())
    (sa_a,), (sa_b,) = sas_a, sas_b
    assert (sa_a.spi_i, sa_a.spi_r) == (sa_b.spi_i, sa_b.spi_r)
    assert len(a.engine.status()) == len(b.engine.status()) == 1, "leftover IKE SAs"
    pairs_a = sorted((c.inbound_spi, c.outbound_spi) for c in sa_a.children)
    pairs_b = sorted((c.outbound_spi, c.inbound_spi) for c in sa_b.children)
    assert len(pairs_a) == children and pairs_a == pairs_b
    assert all(c.state == "installed" for c in (*sa_a.children, *sa_b.children))
