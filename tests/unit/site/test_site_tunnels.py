"""The tunnel table between real IKE engines (in memory) and the ESP SAs it asks the data plane
for: keys and SPIs that interoperate, make-before-break rekeys, deletes, lifetimes, liveness."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from tests.unit.esp.esp_support import udp4
from tests.unit.ike.sa_support import LAN_A, LAN_B, Network, Node, child, pair
from trellis.agent.dataplane.counters import DataplaneCounters
from trellis.agent.esp.constants import Cipher, Direction, LifetimeTrigger
from trellis.agent.esp.errors import SelectorMismatch
from trellis.agent.esp.sa import InboundSa, LifetimeEvent, OutboundSa, SaCounters, SaParams
from trellis.agent.ike.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    ChildSaRekeyed,
    DownReason,
    IkeSaDown,
    IkeSaRekeyed,
    PeerAddressChanged,
)
from trellis.agent.site.tunnels import (
    AddRoute,
    Changes,
    DeleteChild,
    EspPolicy,
    InstallSa,
    RekeyChild,
    RemoveRoute,
    RemoveSa,
    SiteConfigError,
    TunnelTable,
)

NET_A, NET_B = ipaddress.ip_network(LAN_A), ipaddress.ip_network(LAN_B)


class Site:
    """One engine of the in-memory network with its table; feeds it every new event."""

    def __init__(self, net: Network, node: Node, table: TunnelTable) -> None:
        self.net, self.node, self.table = net, node, table
        self.seen = 0
        self.changes: list[Changes] = []

    def feed(self) -> list[Changes]:
        self.net.collect()
        new = self.node.events[self.seen :]
        self.seen = len(self.node.events)
        out = [self.table.ike_event(event, self.net.now) for event in new]
        self.changes += out
        return out

    def installed(self, changes: list[Changes]) -> list[SaParams]:
        return [c.params for cs in changes for c in cs.dataplane if isinstance(c, InstallSa)]


def up(**kwargs: object) -> tuple[Network, Site, Site]:
    net, a, b = pair(**kwargs)  # type: ignore[arg-type]
    net.nodes["a"].engine.start(net.now)
    net.settle()
    return net, Site(net, a, TunnelTable()), Site(net, b, TunnelTable())


def flat(changes: list[Changes]) -> list[object]:
    return [c for cs in changes for c in cs.dataplane]


def test_a_new_pair_installs_inbound_then_outbound_then_routes_and_the_keys_interoperate() -> None:
    net, a, b = up()
    changes_a, changes_b = flat(a.feed()), flat(b.feed())
    for changes, remote in ((changes_a, NET_B), (changes_b, NET_A)):
        assert [type(c) for c in changes] == [InstallSa, InstallSa, AddRoute]
        inbound, outbound = (c.params for c in changes[:2])  # type: ignore[attr-defined]
        assert (inbound.direction, outbound.direction) == (Direction.INBOUND, Direction.OUTBOUND)
        assert changes[2] == AddRoute(prefix=remote)
        assert inbound.cipher is Cipher.AES_GCM_16 and inbound.udp_encap and inbound.local_port == 4500
    out_a = next(p for p in a.installed(a.changes) if p.direction is Direction.OUTBOUND)
    in_b = next(p for p in b.installed(b.changes) if p.direction is Direction.INBOUND)
    assert out_a.spi == in_b.spi and str(out_a.remote_address) == b.node.address
    # what IKE negotiated, sealed by a's SA, opens with b's SA: same key, salt, SPI, selectors
    packet = udp4("10.1.0.10", "10.2.0.10")
    now = 0.0
    sealed = OutboundSa(out_a, now).seal_packet(packet, now)
    assert InboundSa(in_b, now).open_packet(sealed, now) == packet
    stray = OutboundSa(out_a, now).seal_packet(udp4("10.9.0.10", "10.2.0.10"), now)
    with pytest.raises(SelectorMismatch):
        InboundSa(in_b, now).open_packet(stray, now)
    # the data plane keeps each SA a little past IKE's expiry, never longer
    expires = next(e for e in a.node.events if isinstance(e, ChildSaInstalled)).child.expires_at
    assert out_a.lifetime.hard_seconds == pytest.approx(expires - net.now + EspPolicy().expiry_grace)
    assert a.table.routes == (NET_B,)


def test_a_rekey_is_make_before_break_on_both_sides() -> None:
    net, a, b = up()
    a.feed(), b.feed()
    old_in_a = next(p.spi for p in a.installed(a.changes) if p.direction is Direction.INBOUND)
    a.node.engine.rekey_child(old_in_a.to_bytes(4, "big"), net.now)
    # one datagram at a time: the responder's events come before the initiator has the answer
    net.step()
    (rekeyed_b,) = [cs for cs in b.feed() if cs.dataplane]
    new_in_b = rekeyed_b.dataplane[0]
    assert [type(c) for c in rekeyed_b.dataplane] == [InstallSa]  # outbound waits for the old pair
    assert isinstance(new_in_b, InstallSa) and new_in_b.params.direction is Direction.INBOUND
    net.settle()
    changes_a = flat(a.feed())
    changes_b = flat(b.feed())
    old_out_b = next(p.spi for p in b.installed(b.changes) if p.direction is Direction.OUTBOUND)
    # the initiator: new inbound, then (its DELETE of the old pair done) new outbound, then the old
    # pair goes; the route stays all along
    assert [(type(c), getattr(c, "direction", None)) for c in changes_a] == [
        (InstallSa, None),
        (InstallSa, None),
        (RemoveSa, Direction.OUTBOUND),
        (RemoveSa, Direction.INBOUND),
    ]
    assert isinstance(changes_a[2], RemoveSa) and changes_a[3] == RemoveSa(
        spi=old_in_a, direction=Direction.INBOUND
    )
    assert [type(c) for c in changes_b] == [InstallSa, RemoveSa, RemoveSa]
    assert changes_b[1] == RemoveSa(spi=old_out_b, direction=Direction.OUTBOUND)
    assert a.table.routes == (NET_B,) and b.table.routes == (NET_A,)
    assert len(a.table.tunnels) == len(b.table.tunnels) == 1
    assert a.table.next_timer() is None


def test_a_rekeys_outbound_sa_takes_over_after_the_delay_if_the_old_pair_lingers() -> None:
    net, a, b = up()
    a.feed(), b.feed()
    spi = next(p.spi for p in a.installed(a.changes) if p.direction is Direction.INBOUND)
    a.node.engine.rekey_child(spi.to_bytes(4, "big"), net.now)
    net.step()
    b.feed()
    due = b.table.next_timer()
    assert due is not None and due == pytest.approx(net.now + EspPolicy().outbound_delay)
    assert b.table.poll(due - 0.01) == Changes()
    (install,) = b.table.poll(due).dataplane
    assert isinstance(install, InstallSa) and install.params.direction is Direction.OUTBOUND
    assert b.table.poll(due + 1) == Changes() and b.table.next_timer() is None


def test_deleting_the_ike_sa_removes_sas_and_routes_but_not_pinned_ones() -> None:
    net, a, b = up()
    pinned = TunnelTable(pinned=(NET_B,))
    a.table = pinned
    assert pinned.start() == Changes(dataplane=(AddRoute(prefix=NET_B),))
    assert [type(c) for c in flat(a.feed())] == [InstallSa, InstallSa]  # the route exists already
    b.feed()
    a.node.engine.delete(next(e for e in a.node.events if isinstance(e, ChildSaInstalled)).ike_sa, net.now)
    net.settle()
    assert [type(c) for c in flat(a.feed())] == [RemoveSa, RemoveSa]
    assert pinned.routes == (NET_B,)
    removed_b = flat(b.feed())
    assert [type(c) for c in removed_b] == [RemoveSa, RemoveSa, RemoveRoute]
    assert removed_b[2] == RemoveRoute(prefix=NET_A) and b.table.routes == ()


def test_lifetimes_of_the_data_plane_become_one_rekey_and_then_a_delete() -> None:
    net, a, _ = up()
    a.feed()
    inbound, outbound = a.installed(a.changes)
    spi = inbound.spi.to_bytes(4, "big")

    def event(params: SaParams, *, hard: bool) -> LifetimeEvent:
        return LifetimeEvent(
            spi=params.spi,
            direction=params.direction,
            tag=params.tag,
            trigger=LifetimeTrigger.PACKETS,
            hard=hard,
        )

    assert a.table.lifetime_event(event(outbound, hard=False)) == Changes(
        engine=(RekeyChild(inbound_spi=spi),)
    )
    assert a.table.lifetime_event(event(inbound, hard=False)) == Changes()  # asked once per pair
    assert a.table.lifetime_event(event(inbound, hard=True)) == Changes(
        engine=(DeleteChild(inbound_spi=spi),)
    )
    stranger = replace(outbound, spi=0x1234)
    assert a.table.lifetime_event(event(stranger, hard=True)) == Changes()
    # and the engine accepts what the table asked for
    a.node.engine.rekey_child(spi, net.now)
    net.settle()
    assert any(isinstance(e, ChildSaRekeyed) for e in a.node.events)


def test_inbound_packets_count_as_signs_of_life_once_each() -> None:
    _, a, _ = up()
    a.feed()
    inbound, outbound = a.installed(a.changes)

    def counters(packets_in: int, packets_out: int) -> DataplaneCounters:
        def sa(params: SaParams, packets: int) -> SaCounters:
            return SaCounters(
                spi=params.spi,
                direction=params.direction,
                tag=params.tag,
                cipher=params.cipher,
                remote_address=str(params.remote_address),
                remote_port=params.remote_port,
                packets=packets,
                bytes=packets * 100,
                age_seconds=1.0,
                drops={},
                rekey_requested=False,
                expired=False,
            )

        return DataplaneCounters(sas=(sa(inbound, packets_in), sa(outbound, packets_out)), drops={})

    assert a.table.inbound_traffic(counters(0, 5)) == []  # sending proves nothing of the peer
    assert a.table.inbound_traffic(counters(3, 5)) == [inbound.spi.to_bytes(4, "big")]
    assert a.table.inbound_traffic(counters(3, 9)) == []
    assert a.table.inbound_traffic(counters(4, 9)) == [inbound.spi.to_bytes(4, "big")]


def test_plain_esp_is_refused_by_deleting_the_child() -> None:
    _, a, _ = up(peer_a={"force_encapsulation": False}, peer_b={"force_encapsulation": False})
    (changes, *_) = [cs for cs in a.feed() if cs != Changes()]
    installed = next(e for e in a.node.events if isinstance(e, ChildSaInstalled))
    assert not installed.child.udp_encapsulation
    assert changes == Changes(engine=(DeleteChild(inbound_spi=installed.child.inbound_spi),))
    assert a.table.tunnels == ()


def test_a_route_that_would_carry_the_tunnel_itself_is_left_out() -> None:
    everything = child(remote=("0.0.0.0/0",))
    _, a, _ = up(child_a=everything, child_b=child(local=("0.0.0.0/0",), remote=(LAN_A,)))
    changes = flat(a.feed())
    assert [type(c) for c in changes] == [InstallSa, InstallSa]  # 0.0.0.0/0 holds the peer
    assert a.table.routes == ()


def test_ike_rekey_keeps_the_pairs_and_a_moved_peer_gets_new_pairs() -> None:
    net, a, b = up()
    a.feed(), b.feed()
    ike_sa = next(e for e in a.node.events if isinstance(e, ChildSaInstalled)).ike_sa
    a.node.engine.rekey(ike_sa, net.now)
    net.settle()
    changes = a.feed()
    assert any(isinstance(e, IkeSaRekeyed) for e in a.node.events)
    assert any(isinstance(e, IkeSaDown) and e.ike_sa == ike_sa for e in a.node.events)
    assert flat(changes) == [] and len(a.table.tunnels) == 1  # the old IKE SA went, the pair stays
    tunnel = a.table.tunnels[0]
    moved = PeerAddressChanged(
        peer="b",
        ike_sa=tunnel.ike_sa,
        local_port=4500,
        remote=("203.0.113.9", 4500),
        child_inbound_spis=(tunnel.inbound_spi,),
    )
    assert a.table.ike_event(moved, net.now) == Changes(engine=(RekeyChild(inbound_spi=tunnel.inbound_spi),))
    deleted = ChildSaDeleted(
        peer="b",
        ike_sa=tunnel.ike_sa,
        name="lan",
        inbound_spi=tunnel.inbound_spi,
        outbound_spi=b"\0\0\0\1",
        reason=DownReason.DELETED,
    )
    assert [type(c) for c in a.table.ike_event(deleted, net.now).dataplane] == [
        RemoveSa,
        RemoveSa,
        RemoveRoute,
    ]


def test_policy_settings_are_checked() -> None:
    with pytest.raises(SiteConfigError, match="replay_window"):
        EspPolicy(replay_window=8)
    with pytest.raises(SiteConfigError, match="soft"):
        EspPolicy(rekey_packets=10, life_packets=5)
