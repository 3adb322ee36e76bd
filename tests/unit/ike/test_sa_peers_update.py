"""set_peers as the mesh uses it: a peer whose address or role alone changes keeps its SAs; a peer
whose negotiated terms change is renegotiated."""

from __future__ import annotations

from tests.unit.ike.sa_support import LAN_A, LAN_B, assert_consistent, child, pair, with_changes
from trellis.agent.ike.events import IkeSaDown, IkeSaUp


def test_learning_a_peers_address_or_swapping_roles_keeps_the_tunnel() -> None:
    net, a, b = pair()
    a.engine.start(net.now)
    net.settle()
    assert_consistent(a, b)
    (peer_at_b,) = b.engine.peers.values()
    (peer_at_a,) = a.engine.peers.values()
    # b learns nothing new but becomes the initiator while a becomes a responder: nothing drops.
    b.engine.set_peers([with_changes(peer_at_b, initiate=True)], net.now)
    a.engine.set_peers([with_changes(peer_at_a, initiate=False, remote_host=None)], net.now)
    net.run(60)
    assert_consistent(a, b)
    assert not a.of(IkeSaDown) and not b.of(IkeSaDown)
    assert len(a.of(IkeSaUp)) == 1


def test_changed_selectors_renegotiate() -> None:
    net, a, b = pair()
    a.engine.start(net.now)
    net.settle()
    (peer_at_a,) = a.engine.peers.values()
    renamed = child("other", local=(LAN_A,), remote=(LAN_B,))
    a.engine.set_peers([with_changes(peer_at_a, children=(renamed,))], net.now)
    net.settle()
    assert [e.reason for e in a.of(IkeSaDown)] == ["deleted"]
    assert len(a.of(IkeSaUp)) == 2  # torn down and built again with the new terms
    assert_consistent(a, b)
