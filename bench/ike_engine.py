"""IKE engine benchmark: complete handshakes and CHILD SA rekeys per second, in memory.

    python bench/ike_engine.py [--seconds 5]

Two engines exchange datagrams through a list (no sockets). A handshake is IKE_SA_INIT +
IKE_AUTH with the first CHILD SA, both sides verifying real ECDSA P-256 certificates from the
Trellis CA (or a PSK). The anchor, measured in the same run, is the bare public-key work one
certificate handshake cannot avoid: two X25519 key pairs and agreements, two ECDSA signatures and
four verifications (two AUTH payloads, two certificate chains). The ratio says how much of that
ceiling the protocol engine keeps.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from trellis.agent.ike.config import (
    CertificateAuth,
    CertificateCredentials,
    PeerConfig,
    PskAuth,
)
from trellis.agent.ike.engine import IkeEngine
from trellis.agent.ike.events import ChildSaInstalled, ChildSaRekeyed
from trellis.agent.ike.ids import parse_ike_id
from trellis.agent.ike.selectors import parse_selector
from trellis.controller.ca import CertificateAuthority, make_csr
from trellis.v1.identity import Identity

A, B = "192.0.2.1", "198.51.100.1"


def anchor_rate(seconds: float) -> float:
    """Bundles of the unavoidable public-key work of one handshake, per second."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    message = os.urandom(600)
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(2):
            mine, theirs = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
            mine.exchange(theirs.public_key())
            key.sign(message, ec.ECDSA(hashes.SHA256()))
        for _ in range(4):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        count += 1
    return count / seconds


def _engines(psk: bool) -> tuple[IkeEngine, IkeEngine]:
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create("example.org", now=now)
    engines = []
    for me, other, local, remote in (
        ("a", "b", "10.1.0.0/24", "10.2.0.0/24"),
        ("b", "a", "10.2.0.0/24", "10.1.0.0/24"),
    ):
        from trellis.agent.ike.config import ChildConfig

        children = (
            ChildConfig(name="lan", local_ts=(parse_selector(local),), remote_ts=(parse_selector(remote),)),
        )
        address = A if me == "a" else B
        if psk:
            peer = PeerConfig(
                name=other,
                remote_host=B if me == "a" else A,
                auth=PskAuth(secret=b"benchmark pre-shared key, long enough"),
                local_id=parse_ike_id(f"{me}.example.org"),
                remote_id=f"{other}.example.org",
                children=children,
                initiate=me == "a",
            )
            credentials = {}
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            certificate = ca.issue(
                make_csr(key, None), Identity.site("example.org", me), now=now, ttl=dt.timedelta(hours=1)
            )
            credentials = {"default": CertificateCredentials(chain=(certificate,), key=key)}
            peer = PeerConfig(
                name=other,
                remote_host=B if me == "a" else A,
                auth=CertificateAuth(trust_anchors=(ca.certificate,)),
                remote_id=Identity.site("example.org", other).uri,
                children=children,
                initiate=me == "a",
            )

        def route(_remote: str, address: str = address) -> str:
            return address

        engines.append(
            IkeEngine(local_address_for=route, peers=[peer], credentials=credentials, rng=random.Random(1))
        )
    return engines[0], engines[1]


def _pump(a: IkeEngine, b: IkeEngine, now: float) -> None:
    moving = True
    while moving:
        moving = False
        for source, target, address in ((a, b, A), (b, a, B)):
            for datagram in source.datagrams():
                moving = True
                target.datagram_received(
                    datagram.data,
                    local_port=datagram.remote[1],
                    remote=(address, datagram.local_port),
                    now=now,
                )


def measure(seconds: float, action: Callable[[], None]) -> float:
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        action()
        count += 1
    return count / seconds


def handshakes(seconds: float, *, psk: bool) -> float:
    a, b = _engines(psk)
    now = time.time()

    def one() -> None:
        a.initiate("b", now)
        _pump(a, b, now)
        installed = [e for e in a.events() if isinstance(e, ChildSaInstalled)]
        b.events()
        if not installed:
            raise RuntimeError("handshake did not complete")
        a.delete(installed[0].ike_sa, now)
        _pump(a, b, now)
        a.events()
        b.events()

    return measure(seconds, one)


def rekeys(seconds: float) -> float:
    a, b = _engines(psk=True)
    now = time.time()
    a.start(now)
    _pump(a, b, now)
    spi = next(e for e in a.events() if isinstance(e, ChildSaInstalled)).child.inbound_spi

    def one() -> None:
        nonlocal spi
        a.rekey_child(spi, now)
        _pump(a, b, now)
        spi = next(e for e in a.events() if isinstance(e, ChildSaRekeyed)).child.inbound_spi
        b.events()

    return measure(seconds, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    anchor = anchor_rate(args.seconds)
    cert = handshakes(args.seconds, psk=False)
    psk = handshakes(args.seconds, psk=True)
    child = rekeys(args.seconds)
    print(f"anchor (public-key work of one handshake): {anchor:8.1f} /s")
    print(f"handshakes, ECDSA certificates:            {cert:8.1f} /s  ratio {cert / anchor:.2f}")
    print(f"handshakes, PSK:                           {psk:8.1f} /s")
    print(f"CHILD SA rekeys (no PFS):                  {child:8.1f} /s")


if __name__ == "__main__":
    main()
