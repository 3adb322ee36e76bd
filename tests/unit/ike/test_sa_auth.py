"""Authentication failures of each kind, in both directions: the refusing side reports which
check failed, the refused side hears AUTHENTICATION_FAILED, and nothing stays up."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.unit.ike.sa_support import (
    ADDRESS_A,
    ADDRESS_B,
    CA_TIME,
    LAN_A,
    LAN_B,
    PSK,
    Network,
    Node,
    cert_peer,
    child,
    identity,
    issue,
    other_ca,
    pair,
    psk_peer,
)
from trellis.agent.ike.crypto.certs import (
    REASON_EXPIRED,
    REASON_ID_MISMATCH,
    REASON_NOT_YET_VALID,
    REASON_REVOKED,
    REASON_UNEXPECTED_IDENTITY,
    REASON_UNTRUSTED,
)
from trellis.agent.ike.events import AuthenticationFailed, DownReason, IkeSaDown, IkeSaUp
from trellis.agent.ike.exchanges.authn import REASON_NO_PEER, REASON_SUITE
from trellis.agent.ike.ids import parse_ike_id
from trellis.agent.ike.proposal_text import parse_ike_proposal


def _run(net: Network, a: Node) -> None:
    a.engine.start(net.now)
    net.settle()


def _refused_by_responder(net: Network, a: Node, b: Node, reason: str) -> None:
    _run(net, a)
    assert not a.of(IkeSaUp) and not b.of(IkeSaUp)
    (refusal,) = b.of(AuthenticationFailed)
    assert not refusal.by_peer and refusal.reason.startswith(reason), refusal.reason
    (heard,) = a.of(AuthenticationFailed)
    assert heard.by_peer and heard.peer == "b"
    assert not b.engine.status()
    assert not [s for s in a.engine.status() if s.state != "init-sent"]


def _replace_credentials(node: Node, **kwargs: object) -> None:
    node.engine.set_credentials("default", issue(node.name, **kwargs))  # type: ignore[arg-type]


def test_untrusted_ca() -> None:
    net, a, b = pair()
    _replace_credentials(a, authority=other_ca())
    _refused_by_responder(net, a, b, REASON_UNTRUSTED)


def test_expired_certificate() -> None:
    net, a, b = pair()
    _replace_credentials(a, now=CA_TIME - dt.timedelta(hours=3))
    _refused_by_responder(net, a, b, REASON_EXPIRED)


def test_certificate_not_yet_valid() -> None:
    net, a, b = pair()
    _replace_credentials(a, now=CA_TIME + dt.timedelta(hours=2))
    _refused_by_responder(net, a, b, REASON_NOT_YET_VALID)


def test_id_payload_not_in_certificate() -> None:
    net, a, b = pair(peer_a={"local_id": parse_ike_id("O=example.org, OU=site, CN=mallory")})
    _refused_by_responder(net, a, b, REASON_ID_MISMATCH)


def test_not_the_expected_identity() -> None:
    net, a, b = pair(peer_b={"remote_id": identity("c")})
    _refused_by_responder(net, a, b, REASON_UNEXPECTED_IDENTITY)


def test_revoked_peer() -> None:
    net, a, b = pair()
    serial = format(a.engine.credentials("default").chain[0].serial_number, "x")
    b.engine.set_revocation_check(lambda identity, s: s == serial)
    _refused_by_responder(net, a, b, REASON_REVOKED)


def _psk_pair(secret_b: bytes = PSK, remote_id_b: str = "a.example.org") -> tuple[Network, Node, Node]:
    net = Network()
    a = net.add(
        "a",
        ADDRESS_A,
        peers=[
            psk_peer(
                "b", ADDRESS_B, local_id="a.example.org", remote_id="gw.example.org", children=(child(),)
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
                local_id="gw.example.org",
                remote_id=remote_id_b,
                secret=secret_b,
                children=(child(local=(LAN_B,), remote=(LAN_A,)),),
                initiate=False,
            )
        ],
    )
    return net, a, b


def test_wrong_pre_shared_key() -> None:
    net, a, b = _psk_pair(secret_b=b"another secret of sufficient length")
    _refused_by_responder(net, a, b, "pre-shared key AUTH does not match")


def test_pre_shared_key_for_another_identity() -> None:
    net, a, b = _psk_pair(remote_id_b="someone-else.example.org")
    _refused_by_responder(net, a, b, REASON_NO_PEER)


def test_pre_shared_key_where_a_certificate_is_required() -> None:
    net = Network()
    a = net.add(
        "a",
        ADDRESS_A,
        peers=[
            psk_peer(
                "b", ADDRESS_B, local_id="a.example.org", remote_id="gw.example.org", children=(child(),)
            )
        ],
    )
    b = net.add(
        "b",
        ADDRESS_B,
        peers=[
            cert_peer(
                "a",
                ADDRESS_A,
                remote_id=None,
                children=(child(local=(LAN_B,), remote=(LAN_A,)),),
                initiate=False,
            )
        ],
        credentials=issue("b"),
    )
    _refused_by_responder(net, a, b, REASON_NO_PEER)


@pytest.mark.parametrize(
    ("change", "reason"),
    [("untrusted", REASON_UNTRUSTED), ("identity", REASON_UNEXPECTED_IDENTITY), ("revoked", REASON_REVOKED)],
)
def test_initiator_refuses_the_responder(change: str, reason: str) -> None:
    net, a, b = pair(peer_a={"remote_id": identity("c")} if change == "identity" else None)
    if change == "untrusted":
        _replace_credentials(b, authority=other_ca())
    if change == "revoked":
        serial = format(b.engine.credentials("default").chain[0].serial_number, "x")
        a.engine.set_revocation_check(lambda identity, s: s == serial)
    _run(net, a)
    (refusal,) = a.of(AuthenticationFailed)
    assert not refusal.by_peer and refusal.reason.startswith(reason), refusal.reason
    assert not a.of(IkeSaUp)
    # b had accepted a and was up; a's AUTHENTICATION_FAILED notice closes it
    (heard,) = b.of(AuthenticationFailed)
    assert heard.by_peer
    assert [e.reason for e in b.of(IkeSaDown)] == [DownReason.AUTHENTICATION_FAILED]
    assert not b.engine.status()


def test_revocation_after_establishment_closes_the_sa() -> None:
    net, a, b = pair()
    _run(net, a)
    assert a.of(IkeSaUp)
    serial = b.of(IkeSaUp)[0].peer_serial
    b.engine.set_revocation_check(lambda identity, s: s == serial)
    b.engine.recheck_peers(net.now)
    net.settle()
    assert [e.reason for e in b.of(IkeSaDown)] == [DownReason.REVOKED]
    assert [e.reason for e in a.of(IkeSaDown)] == [DownReason.PEER_DELETED]
    assert not a.engine.status() and not b.engine.status()


def test_unknown_peer_address_gets_no_answer() -> None:
    net, a, b = pair(peer_b={"remote_host": "203.0.113.9"})
    _run(net, a)
    assert not b.engine.status() and b.engine.dropped == 1


def test_suite_allowed_for_another_peer_only() -> None:
    """Two peers behind one address: the suite chosen at IKE_SA_INIT (from both configurations)
    must be allowed by the one IKE_AUTH selects."""
    chacha = (parse_ike_proposal("chacha20poly1305-prfsha256-x25519"),)
    aes = (parse_ike_proposal("aes128gcm16-prfsha256-x25519"),)
    net = Network()
    a = net.add(
        "a",
        ADDRESS_A,
        peers=[cert_peer("b", ADDRESS_B, remote_id=identity("b"), children=(child(),), ike_proposals=chacha)],
        credentials=issue("a"),
    )
    b = net.add(
        "b",
        ADDRESS_B,
        peers=[
            cert_peer(
                "a",
                ADDRESS_A,
                remote_id=identity("a"),
                children=(child(local=(LAN_B,), remote=(LAN_A,)),),
                initiate=False,
                ike_proposals=aes,
            ),
            cert_peer(
                "other",
                ADDRESS_A,
                remote_id=identity("z"),
                children=(child(local=(LAN_B,), remote=(LAN_A,)),),
                initiate=False,
                ike_proposals=chacha,
            ),
        ],
        credentials=issue("b"),
    )
    _refused_by_responder(net, a, b, REASON_SUITE)
