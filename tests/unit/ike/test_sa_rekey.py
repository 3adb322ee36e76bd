"""CREATE_CHILD_SA rekeys: CHILD SAs with and without PFS, the IKE SA, from either side, the
simultaneous rekeys of RFC 7296 section 2.8.1/2.8.2, and rekeys driven by lifetimes."""

from __future__ import annotations

import pytest

from tests.unit.ike.sa_support import (
    ADDRESS_A,
    ADDRESS_B,
    LAN_A,
    LAN_B,
    Network,
    Node,
    assert_consistent,
    child,
    pair,
    psk_peer,
)
from trellis.agent.ike.config import Lifetime
from trellis.agent.ike.constants import DhId
from trellis.agent.ike.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    DownReason,
    IkeSaDown,
    IkeSaRekeyed,
    IkeSaUp,
)
from trellis.agent.ike.proposal_text import parse_esp_proposal


def _up(proposals_a: str = "aes256gcm16", proposals_b: str = "aes256gcm16") -> tuple[Network, Node, Node]:
    net, a, b = pair(
        child_a=child(proposals=(parse_esp_proposal(proposals_a),)),
        child_b=child(local=(LAN_B,), remote=(LAN_A,), proposals=(parse_esp_proposal(proposals_b),)),
    )
    a.engine.start(net.now)
    net.settle()
    assert_consistent(a, b)
    return net, a, b


def _child_spi(node: Node) -> bytes:
    (sa,) = node.engine.status()
    (c,) = sa.children
    return bytes.fromhex(c.inbound_spi)


@pytest.mark.parametrize("side", ["a", "b"])
def test_child_rekey_replaces_the_pair(side: str) -> None:
    net, a, b = _up()
    old_a = a.of(ChildSaInstalled)[0].child
    node = a if side == "a" else b
    node.engine.rekey_child(_child_spi(node), net.now)
    net.settle()
    assert_consistent(a, b)
    (rekeyed_a,), (rekeyed_b,) = a.of(ChildSaRekeyed), b.of(ChildSaRekeyed)
    assert rekeyed_a.old_inbound_spi == old_a.inbound_spi
    assert rekeyed_a.child.inbound_spi == rekeyed_b.child.outbound_spi
    assert rekeyed_a.child.outbound_key == rekeyed_b.child.inbound_key != old_a.outbound_key
    for node in (a, b):
        (deleted,) = node.of(ChildSaDeleted)
        assert deleted.reason == DownReason.REKEYED
    assert a.of(ChildSaDeleted)[0].inbound_spi == old_a.inbound_spi


def test_child_rekey_with_pfs() -> None:
    net, a, b = _up("aes256gcm16-x25519", "aes256gcm16-x25519-ecp256")
    assert a.of(ChildSaInstalled)[0].child.suite.pfs_group is None  # IKE_AUTH: no KE of its own
    a.engine.rekey_child(_child_spi(a), net.now)
    net.settle()
    assert_consistent(a, b)
    new_a, new_b = a.of(ChildSaRekeyed)[0].child, b.of(ChildSaRekeyed)[0].child
    assert new_a.suite.pfs_group == new_b.suite.pfs_group == DhId.CURVE25519
    assert new_a.outbound_key == new_b.inbound_key


def test_child_rekey_invalid_ke_retry() -> None:
    net, a, b = _up("aes256gcm16-x25519-ecp384", "aes256gcm16-ecp384")
    a.engine.rekey_child(_child_spi(a), net.now)
    net.settle()
    assert_consistent(a, b)
    assert a.of(ChildSaRekeyed)[0].child.suite.pfs_group == DhId.ECP_384


def test_pfs_mismatch_keeps_the_old_child() -> None:
    net, a, b = _up("aes256gcm16-x25519", "aes256gcm16")
    a.engine.rekey_child(_child_spi(a), net.now)
    net.settle()
    assert_consistent(a, b)
    assert not a.of(ChildSaRekeyed) and "NO_PROPOSAL_CHOSEN" in str(a.events[-1])


@pytest.mark.parametrize("side", ["a", "b"])
def test_ike_rekey_moves_the_children(side: str) -> None:
    net, a, b = _up()
    old = a.of(IkeSaUp)[0].ike_sa
    node = a if side == "a" else b
    node.engine.rekey(old, net.now)
    net.settle()
    assert_consistent(a, b)
    (rekeyed_a,), (rekeyed_b,) = a.of(IkeSaRekeyed), b.of(IkeSaRekeyed)
    assert rekeyed_a.old == rekeyed_b.old == old and rekeyed_a.new == rekeyed_b.new != old
    assert [e.reason for e in a.of(IkeSaDown)] == [e.reason for e in b.of(IkeSaDown)] == [DownReason.REKEYED]
    assert not a.of(ChildSaDeleted) and not b.of(ChildSaDeleted)  # the children just moved
    # the new IKE SA works: rekey the child over it
    a.engine.rekey_child(_child_spi(a), net.now)
    net.settle()
    assert_consistent(a, b)
    assert a.of(ChildSaRekeyed)[0].ike_sa == rekeyed_a.new


@pytest.mark.parametrize("attempt", range(6))
def test_simultaneous_child_rekey(attempt: int) -> None:
    net, a, b = _up()
    a.engine.rekey_child(_child_spi(a), net.now)
    b.engine.rekey_child(_child_spi(b), net.now)
    net.run(60.0)
    assert_consistent(a, b)
    # two new pairs were made, one was redundant; old and redundant are gone on both sides
    assert len(a.of(ChildSaRekeyed)) == len(b.of(ChildSaRekeyed)) == 2
    assert len(a.of(ChildSaDeleted)) == len(b.of(ChildSaDeleted)) == 2


@pytest.mark.parametrize("attempt", range(6))
def test_simultaneous_ike_rekey(attempt: int) -> None:
    net, a, b = _up()
    old = a.of(IkeSaUp)[0].ike_sa
    a.engine.rekey(old, net.now)
    b.engine.rekey(old, net.now)
    net.run(60.0)
    assert_consistent(a, b)
    (rekeyed_a,), (rekeyed_b,) = a.of(IkeSaRekeyed), b.of(IkeSaRekeyed)
    assert rekeyed_a.new == rekeyed_b.new
    assert not a.of(ChildSaDeleted) and not b.of(ChildSaDeleted)
    a.engine.rekey_child(_child_spi(a), net.now)  # the survivor works
    net.settle()
    assert_consistent(a, b)


def test_ike_rekey_colliding_with_child_rekey() -> None:
    net, a, b = _up()
    a.engine.rekey(a.of(IkeSaUp)[0].ike_sa, net.now)
    b.engine.rekey_child(_child_spi(b), net.now)
    net.run(60.0)
    assert_consistent(a, b)
    assert len(a.of(IkeSaRekeyed)) == 1 and len(b.of(ChildSaRekeyed)) == 1


def test_lifetimes_drive_rekeys_for_hours() -> None:
    net = Network()
    child_life = Lifetime(rekey_after=600.0, expire_after=700.0, jitter=60.0)
    ike_life = Lifetime(rekey_after=1800.0, expire_after=2000.0, jitter=120.0)
    a = net.add(
        "a",
        ADDRESS_A,
        peers=[
            psk_peer(
                "b",
                ADDRESS_B,
                local_id="a.example.org",
                remote_id="b.example.org",
                children=(child(lifetime=child_life),),
                ike_lifetime=ike_life,
                dpd_delay=300.0,
            )
        ],
    )
    b = net.add(
        "b",
        ADDRESS_B,
        peers=[
            psk_peer(
                "a",
                ADDRESS_A,
                local_id="b.example.org",
                remote_id="a.example.org",
                children=(child(local=(LAN_B,), remote=(LAN_A,), lifetime=child_life),),
                ike_lifetime=ike_life,
                dpd_delay=300.0,
                initiate=False,
            )
        ],
    )
    a.engine.start(net.now)
    net.run(6 * 3600.0)
    assert_consistent(a, b)
    for node in (a, b):
        assert len(node.of(IkeSaUp)) == 1  # never re-established from scratch
        assert not [e for e in node.of(ChildSaDeleted) if e.reason != DownReason.REKEYED]
    rekeys = len(a.of(ChildSaRekeyed))
    assert 30 <= rekeys <= 45  # one per 540..600 s over 6 h (either side may start it)
    assert 10 <= len(a.of(IkeSaRekeyed)) <= 14
