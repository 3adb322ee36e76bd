"""Loss, retransmission with back-off, the responder's replay cache, liveness checks and dead
peers, with time injected by the in-memory network."""

from __future__ import annotations

from tests.unit.ike.sa_support import ADDRESS_B, Network, Node, pair
from trellis.agent.ike.constants import ExchangeType
from trellis.agent.ike.events import (
    ChildSaDeleted,
    ChildSaInstalled,
    DownReason,
    IkeSaDown,
    IkeSaFailed,
    IkeSaUp,
    PeerDead,
)
from trellis.agent.ike.exchanges.informational import Liveness
from trellis.agent.ike.message import decode_header
from trellis.agent.ike.window import Datagram


def _header(datagram: Datagram):  # type: ignore[no-untyped-def]
    data = datagram.data[4:] if datagram.local_port == 4500 else datagram.data
    return decode_header(data)


def _drop_first(net: Network, sender: str, exchange: ExchangeType, *, response: bool) -> list[Datagram]:
    dropped: list[Datagram] = []

    def keep(who: str, datagram: Datagram) -> bool:
        if dropped or who != sender or len(datagram.data) < 28:
            return True
        header = _header(datagram)
        if header.exchange == exchange and header.response == response:
            dropped.append(datagram)
            return False
        return True

    net.filter = keep
    return dropped


def _established(net: Network, a: Node, b: Node) -> None:
    a.engine.start(net.now)
    net.settle()
    assert a.of(IkeSaUp) and b.of(IkeSaUp)


def test_lost_ike_auth_request_is_retransmitted() -> None:
    net, a, b = pair()
    dropped = _drop_first(net, "a", ExchangeType.IKE_AUTH, response=False)
    a.engine.start(net.now)
    net.run(0.5)
    assert dropped and not a.of(IkeSaUp)
    net.run(1.0)  # the first retransmission is due 1 s after the request
    assert a.of(IkeSaUp) and b.of(IkeSaUp)
    requests = [
        d
        for who, d in ((w, d) for _, w, d in net.log)
        if who == "a" and _header(d).exchange == ExchangeType.IKE_AUTH
    ]
    assert len(requests) == 2 and requests[0].data == requests[1].data


def test_lost_response_is_replayed_from_the_cache() -> None:
    net, a, b = pair()
    dropped = _drop_first(net, "b", ExchangeType.IKE_AUTH, response=True)
    a.engine.start(net.now)
    net.run(2.0)
    responses = [d for _, who, d in net.log if who == "b" and _header(d).exchange == ExchangeType.IKE_AUTH]
    assert len(responses) == 2 and responses[0].data == responses[1].data == dropped[0].data
    assert len(b.of(IkeSaUp)) == 1 and len(b.of(ChildSaInstalled)) == 1  # processed once
    assert len(a.of(IkeSaUp)) == 1


def test_lost_ike_sa_init_response_is_replayed() -> None:
    net, a, b = pair()
    dropped = _drop_first(net, "b", ExchangeType.IKE_SA_INIT, response=True)
    a.engine.start(net.now)
    net.run(2.0)
    replies = [d for _, who, d in net.log if who == "b" and _header(d).exchange == ExchangeType.IKE_SA_INIT]
    assert len(replies) == 2 and replies[1].data == dropped[0].data
    assert len(b.engine.status()) == 1 and a.of(IkeSaUp)


def test_backoff_schedule_then_failure() -> None:
    net, a, _b = pair()
    net.filter = lambda who, datagram: False  # nothing arrives anywhere
    a.engine.start(net.now)
    start = net.now
    net.run(20.0)
    sent = [t - start for t, who, _ in net.log if who == "a"]
    # 1 s, then 2 s, then 4 s of waiting (FAST_RETRANSMIT); given up at 7 s; a new attempt
    # 5 s later (the reconnect delay)
    assert sent[:4] == [0.0, 1.0, 3.0, 12.0]
    failed = a.of(IkeSaFailed)[0]
    assert "no answer to IKE_SA_INIT" in failed.reason


def test_dead_peer_detected_by_liveness_checks() -> None:
    net, a, b = pair(peer_a={"dpd_delay": 10.0})
    _established(net, a, b)
    up = a.of(IkeSaUp)[0]
    net.filter = lambda who, datagram: datagram.remote[0] != ADDRESS_B  # b vanishes
    start = net.now
    net.run(9.0)
    assert not a.of(PeerDead)
    net.run(10.0)  # check at 10 s, retransmissions at 11 and 13 s, dead at 17 s
    (dead,) = a.of(PeerDead)
    assert dead.ike_sa == up.ike_sa
    down = [e for e in a.of(IkeSaDown) if e.ike_sa == up.ike_sa]
    assert down and down[0].reason == DownReason.DEAD
    assert [e.reason for e in a.of(ChildSaDeleted)] == [DownReason.DEAD]
    liveness = [t - start for t, who, d in net.log if who == "a" and t > start]
    assert liveness[:3] == [10.0, 11.0, 13.0]


def test_no_liveness_check_while_traffic_flows() -> None:
    net, a, b = pair(peer_a={"dpd_delay": 10.0})
    _established(net, a, b)
    spi = a.of(ChildSaInstalled)[0].child.inbound_spi
    before = len(net.log)
    for _ in range(5):
        net.run(5.0)
        a.engine.note_esp_traffic(spi, net.now)
    assert len(net.log) == before + sum(1 for _, who, d in net.log[before:] if d.data == b"\xff")


def test_dead_peer_is_restarted_with_backoff() -> None:
    net, a, b = pair(peer_a={"dpd_delay": 10.0})
    _established(net, a, b)
    net.filter = lambda who, datagram: datagram.remote[0] != ADDRESS_B
    net.run(18.0)
    assert a.of(PeerDead)
    net.filter = None
    net.run(10.0)  # reconnect 5 s after death
    assert len(a.of(IkeSaUp)) == 2


def test_half_open_responder_sa_expires() -> None:
    net, a, b = pair()
    _drop_first(net, "a", ExchangeType.IKE_AUTH, response=False)
    net.filter = lambda who, datagram: not (who == "a" and datagram.local_port == 4500)
    a.engine.start(net.now)
    net.run(5.0)
    (half_open,) = b.engine.status()
    net.run(30.0)
    assert half_open.spi_r not in {s.spi_r for s in b.engine.status()}
    assert b.of(IkeSaFailed)[0].reason == "IKE_AUTH did not complete in time"


def test_message_id_counters_are_separate_per_direction() -> None:
    net, a, b = pair()
    _established(net, a, b)
    for node in (a, b):  # both start a liveness check before either sees the other's
        ike = node.engine.sa(node.of(IkeSaUp)[0].ike_sa)
        assert ike is not None
        ike.start(Liveness(), net.now)
    start = len(net.log)
    net.settle()
    seen = [(who, _header(d).response, _header(d).message_id) for _, who, d in net.log[start:]]
    # a already used 0 and 1 (IKE_SA_INIT, IKE_AUTH); b never sent a request before
    assert sorted(seen) == [("a", False, 2), ("a", True, 0), ("b", False, 0), ("b", True, 2)]
