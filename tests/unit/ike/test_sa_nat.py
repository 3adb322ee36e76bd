"""NAT traversal (RFC 7296 section 2.23, RFC 3948): detection, the move to the NAT-T port,
keepalives, a NAT that rebinds, and ESP on the NAT-T port handed to the data plane."""

from __future__ import annotations

from tests.unit.ike.sa_support import ADDRESS_A, ADDRESS_B, pair
from trellis.agent.ike.events import ChildSaInstalled, IkeSaUp, PeerAddressChanged

PUBLIC = "203.0.113.5"


def test_real_nat_is_detected_and_tunnelled_over_udp() -> None:
    net, a, b = pair(
        peer_a={"force_encapsulation": False}, peer_b={"force_encapsulation": False, "remote_host": None}
    )
    net.nat("a", PUBLIC, 30000)
    a.engine.start(net.now)
    net.settle()
    up_a, up_b = a.of(IkeSaUp)[0], b.of(IkeSaUp)[0]
    assert up_b.remote == (PUBLIC, 34500)  # b answers the NAT's mapping of a's NAT-T port
    assert up_a.remote == (ADDRESS_B, 4500)
    assert (
        a.of(ChildSaInstalled)[0].child.udp_encapsulation
        and b.of(ChildSaInstalled)[0].child.udp_encapsulation
    )
    (sa_a,), (sa_b,) = a.engine.status(), b.engine.status()
    assert sa_a.nat and sa_b.nat


def test_no_nat_no_forced_encapsulation() -> None:
    net, a, b = pair(peer_a={"force_encapsulation": False}, peer_b={"force_encapsulation": False})
    a.engine.start(net.now)
    net.settle()
    assert not a.of(ChildSaInstalled)[0].child.udp_encapsulation
    assert not b.of(ChildSaInstalled)[0].child.udp_encapsulation
    # like strongSwan, we still move to 4500 once both sides did NAT detection
    assert a.of(IkeSaUp)[0].remote == (ADDRESS_B, 4500)


def test_keepalives_from_behind_the_nat_only() -> None:
    net, a, b = pair(
        peer_a={"force_encapsulation": False, "dpd_delay": 0.0},
        peer_b={"force_encapsulation": False, "remote_host": None, "dpd_delay": 0.0},
    )
    net.nat("a", PUBLIC, 30000)
    a.engine.start(net.now)
    net.settle()
    start = len(net.log)
    net.run(61.0)
    keepalives = [(t, who, d) for t, who, d in net.log[start:] if d.data == b"\xff"]
    assert [who for _, who, _ in keepalives] == ["a", "a", "a"]  # every 20 s, only a is behind a NAT
    assert all(d.local_port == 4500 and d.remote == (ADDRESS_B, 4500) for _, _, d in keepalives)
    assert b.engine.dropped == 0  # keepalives are not "garbage"


def test_nat_rebinding_is_followed() -> None:
    net, a, b = pair(
        peer_a={"force_encapsulation": False, "dpd_delay": 5.0},
        peer_b={"force_encapsulation": False, "remote_host": None},
    )
    net.nat("a", PUBLIC, 30000)
    a.engine.start(net.now)
    net.settle()
    net.nat("a", PUBLIC, 31000)  # the NAT forgot the mapping and made a new one
    net.run(6.0)  # a's liveness check arrives from the new port
    (moved,) = b.of(PeerAddressChanged)
    assert moved.remote == (PUBLIC, 35500)
    assert moved.child_inbound_spis == (b.of(ChildSaInstalled)[0].child.inbound_spi,)
    assert b.engine.status()[0].remote == f"{PUBLIC}:35500"


def test_esp_on_the_nat_t_port_goes_to_the_data_plane() -> None:
    net, a, b = pair()
    a.engine.start(net.now)
    net.settle()
    esp = b.of(ChildSaInstalled)[0].child.inbound_spi + (1).to_bytes(4, "big") + bytes(40)
    assert b.engine.datagram_received(esp, local_port=4500, remote=(ADDRESS_A, 4500), now=net.now) == esp
    assert b.engine.datagram_received(b"\xff", local_port=4500, remote=(ADDRESS_A, 4500), now=net.now) is None
    assert b.engine.datagram_received(esp, local_port=500, remote=(ADDRESS_A, 500), now=net.now) is None
    assert b.engine.dropped == 1  # ESP is not IKE on port 500
