"""Deleting CHILD SAs and IKE SAs from either side, INITIAL_CONTACT, several CHILD SAs, and the
certificate bound: re-authentication (make-before-break) or expiry, never past a certificate."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.unit.ike.sa_support import (
    ADDRESS_A,
    CA_TIME,
    CERT_TTL,
    LAN_A,
    LAN_B,
    T0,
    Network,
    Node,
    assert_consistent,
    child,
    issue,
    pair,
)
from trellis.agent.ike.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    DownReason,
    IkeSaDown,
    IkeSaUp,
)


def _up(**kwargs: object) -> tuple[Network, Node, Node]:
    net, a, b = pair(**kwargs)  # type: ignore[arg-type]
    a.engine.start(net.now)
    net.settle()
    return net, a, b


def _child_spi(node: Node) -> bytes:
    return bytes.fromhex(node.engine.status()[0].children[0].inbound_spi)


@pytest.mark.parametrize("side", ["a", "b"])
def test_delete_child_from_either_side(side: str) -> None:
    net, a, b = _up()
    deleter, other = (a, b) if side == "a" else (b, a)
    deleter.engine.delete_child(_child_spi(deleter), net.now)
    net.settle()
    assert [e.reason for e in deleter.of(ChildSaDeleted)] == [DownReason.DELETED]
    assert [e.reason for e in other.of(ChildSaDeleted)] == [DownReason.PEER_DELETED]
    assert_consistent(a, b, children=0)


@pytest.mark.parametrize("side", ["a", "b"])
def test_delete_ike_sa_from_either_side(side: str) -> None:
    net, a, b = _up()
    deleter, other = (a, b) if side == "a" else (b, a)
    deleter.engine.delete(deleter.of(IkeSaUp)[0].ike_sa, net.now)
    net.run(60.0)
    assert [e.reason for e in deleter.of(IkeSaDown)] == [DownReason.DELETED]
    assert [e.reason for e in other.of(IkeSaDown)] == [DownReason.PEER_DELETED]
    assert len(other.of(ChildSaDeleted)) == len(deleter.of(ChildSaDeleted)) == 1
    assert not a.engine.status() and not b.engine.status()  # and nobody reconnected


def test_simultaneous_deletes() -> None:
    net, a, b = _up()
    a.engine.delete_child(_child_spi(a), net.now)
    b.engine.delete_child(_child_spi(b), net.now)
    net.settle()
    assert_consistent(a, b, children=0)
    sa_id = a.of(IkeSaUp)[0].ike_sa
    a.engine.delete(sa_id, net.now)
    b.engine.delete(sa_id, net.now)
    net.run(30.0)
    assert not a.engine.status() and not b.engine.status()


def test_several_child_sas() -> None:
    voice = child("voice", local=("10.1.9.0/24",), remote=("10.2.9.0/24",))
    net, a, b = pair(
        peer_a={"children": (child(), voice)},
        peer_b={
            "children": (
                child(local=(LAN_B,), remote=(LAN_A,)),
                child("voice", local=("10.2.0.0/16",), remote=("10.1.0.0/16",)),
            )
        },
    )
    a.engine.start(net.now)
    net.settle()
    assert_consistent(a, b, children=2)
    assert sorted(e.child.name for e in b.of(ChildSaInstalled)) == ["lan", "voice"]


def test_initial_contact_replaces_stale_sas() -> None:
    net, a, b = _up()
    first = b.of(IkeSaUp)[0].ike_sa
    net.run(10.0)
    # a restarts: a new engine, same configuration and identity, no memory of the old SA
    credentials = a.engine.credentials("default")
    reborn = net.add("a2", ADDRESS_A, peers=list(a.engine.peers.values()), credentials=credentials)
    del net.nodes["a"]
    reborn.engine.start(net.now)
    net.settle()
    assert [(e.ike_sa, e.reason) for e in b.of(IkeSaDown)] == [(first, DownReason.REPLACED)]
    assert_consistent(reborn, b)


def test_reauthentication_with_a_renewed_certificate_is_make_before_break() -> None:
    net, a, b = _up()
    first = a.of(IkeSaUp)[0]
    assert first.auth_expires == pytest.approx(T0 + CERT_TTL.total_seconds())
    net.run(1800.0)  # half-life: both sites renew, as the control plane does
    for node in (a, b):
        node.engine.set_credentials(
            "default", issue(node.name, now=CA_TIME + dt.timedelta(minutes=30)), net.now
        )
    net.run(1800.0)  # past the first certificates' end
    assert_consistent(a, b)
    # one side re-authenticated (the other just answered a new IKE_SA_INIT)
    (second,) = [e for node in (a, b) for e in node.of(IkeSaUp) if e.reauth_of is not None]
    assert second.reauth_of == first.ike_sa and len(a.of(IkeSaUp)) == len(b.of(IkeSaUp)) == 2
    assert second.auth_expires == pytest.approx(T0 + 1800 + CERT_TTL.total_seconds())
    for node in (a, b):
        events = node.events
        new_child = next(
            i for i, e in enumerate(events) if isinstance(e, ChildSaInstalled) and e.ike_sa != first.ike_sa
        )
        old_child_gone = next(i for i, e in enumerate(events) if isinstance(e, ChildSaDeleted))
        assert new_child < old_child_gone  # make before break
        assert len(node.of(IkeSaDown)) == 1
        assert all(
            e.child.expires_at <= T0 + 1800 + CERT_TTL.total_seconds() for e in node.of(ChildSaInstalled)
        )
    reasons = sorted(e.reason for node in (a, b) for e in node.of(IkeSaDown))
    assert reasons == [DownReason.PEER_DELETED, DownReason.REAUTHENTICATED]


def test_sa_never_outlives_a_certificate() -> None:
    net, a, b = _up()
    expiry = T0 + CERT_TTL.total_seconds()
    net.run(CERT_TTL.total_seconds() - 1)
    assert_consistent(a, b)  # nothing renewed: no pointless re-authentication either
    net.run(2.0)
    for node in (a, b):
        assert [e.reason for e in node.of(IkeSaDown)][:1] in ([DownReason.EXPIRED], [DownReason.PEER_DELETED])
        down_times = [t for t, who, _ in net.log if who == node.name and t >= expiry]
        assert down_times and min(down_times) == pytest.approx(expiry)
        assert len(node.of(IkeSaUp)) == 1
    assert not [s for s in a.engine.status() if s.state == "established"]
