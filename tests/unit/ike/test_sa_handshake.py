"""IKE_SA_INIT + IKE_AUTH between two engines in memory: certificates (ECDSA, Ed25519), PSK,
the CHILD SA both sides install, and the move to the NAT-T port."""

from __future__ import annotations

import pytest

from tests.unit.ike.sa_support import (
    ADDRESS_A,
    ADDRESS_B,
    CERT_TTL,
    FAST_RETRANSMIT,
    LAN_A,
    LAN_B,
    T0,
    Network,
    child,
    identity,
    pair,
    psk_peer,
)
from trellis.agent.ike.config import DEFAULT_IKE_PROPOSALS, EngineSettings, IkeProposal
from trellis.agent.ike.constants import DhId, EncrId, ExchangeType, NotifyType, PrfId
from trellis.agent.ike.events import ChildSaFailed, ChildSaInstalled, IkeSaFailed, IkeSaUp
from trellis.agent.ike.message import IkeHeader, Message, decode_message, encode_message
from trellis.agent.ike.payloads import KeyExchange, Nonce, Notify, SecurityAssociation
from trellis.agent.ike.proposal_text import parse_esp_proposal, parse_ike_proposal
from trellis.agent.ike.proposals import ike_sa_payload
from trellis.agent.ike.selectors import format_selector


@pytest.mark.parametrize(
    ("key_a", "key_b"), [("ecdsa", "ecdsa"), ("ed25519", "ed25519"), ("ecdsa", "ed25519")]
)
def test_certificate_handshake_installs_matching_child_sas(key_a: str, key_b: str) -> None:
    net, a, b = pair(key_a=key_a, key_b=key_b)
    a.engine.start(net.now)
    net.settle()
    up_a, up_b = a.of(IkeSaUp)[0], b.of(IkeSaUp)[0]
    assert up_a.ike_sa == up_b.ike_sa
    assert up_a.initiator and not up_b.initiator
    assert up_a.peer_identity == identity("b") and up_b.peer_identity == identity("a")
    assert up_a.remote_id == "O=example.org, OU=site, CN=b"
    expiry = T0 + CERT_TTL.total_seconds()
    assert up_a.auth_expires == pytest.approx(expiry) and up_b.auth_expires == pytest.approx(expiry)
    # strongSwan-style float to 4500 after NAT detection, and forced encapsulation both ways
    assert up_a.remote == (ADDRESS_B, 4500) and up_b.remote == (ADDRESS_A, 4500)
    (child_a,) = (e.child for e in a.of(ChildSaInstalled))
    (child_b,) = (e.child for e in b.of(ChildSaInstalled))
    assert child_a.inbound_spi == child_b.outbound_spi and child_a.outbound_spi == child_b.inbound_spi
    assert child_a.outbound_key == child_b.inbound_key and child_a.inbound_key == child_b.outbound_key
    assert child_a.inbound_key != child_a.outbound_key and len(child_a.inbound_key) == 36
    assert [format_selector(t) for t in child_a.local_ts] == [LAN_A]
    assert [format_selector(t) for t in child_a.remote_ts] == [LAN_B]
    assert child_a.udp_encapsulation and child_b.udp_encapsulation
    assert child_a.expires_at <= expiry
    # IKE_SA_INIT on 500, everything after on 4500 with the non-ESP marker
    ports = [d.local_port for _, _, d in net.log]
    assert ports[:2] == [500, 500] and set(ports[2:]) == {4500}
    assert all(d.data.startswith(bytes(4)) for _, _, d in net.log[2:])


def test_psk_handshake() -> None:
    net = Network()
    a = net.add(
        "a",
        ADDRESS_A,
        peers=[
            psk_peer(
                "gw", ADDRESS_B, local_id="a.example.org", remote_id="gw.example.org", children=(child(),)
            )
        ],
    )
    b = net.add(
        "b",
        ADDRESS_B,
        peers=[
            psk_peer(
                "a",
                None,
                local_id="gw.example.org",
                remote_id="a.example.org",
                children=(child(local=(LAN_B,), remote=(LAN_A,)),),
                initiate=False,
            )
        ],
    )
    a.engine.start(net.now)
    net.settle()
    (up_a,), (up_b,) = a.of(IkeSaUp), b.of(IkeSaUp)
    assert up_a.remote_id == "gw.example.org" and up_b.remote_id == "a.example.org"
    assert up_a.auth_expires is None and up_a.peer_identity is None
    assert len(a.of(ChildSaInstalled)) == len(b.of(ChildSaInstalled)) == 1


def test_cookie_round_trip_when_the_responder_is_busy() -> None:
    net, a, b = pair(settings=EngineSettings(retransmit=FAST_RETRANSMIT, cookie_threshold=0))
    a.engine.start(net.now)
    net.settle()
    assert len(a.of(IkeSaUp)) == 1 and len(b.of(IkeSaUp)) == 1
    inits = [decode_message(d.data) for _, _, d in net.log if d.local_port == 500]
    # request, COOKIE answer, the request again with the COOKIE first, the real answer
    assert [m.header.response for m in inits] == [False, True, False, True]
    cookie = inits[1].payloads[0]
    assert isinstance(cookie, Notify) and cookie.notify_type == NotifyType.COOKIE
    assert inits[2].payloads[0] == cookie
    assert inits[2].payloads[1:4] == inits[0].payloads[:3]  # SA, KE, Nonce unchanged
    assert inits[2].find(Nonce) == inits[0].find(Nonce)  # same Ni: the cookie is bound to it


def test_cookie_refused_when_forged() -> None:
    net, _a, b = pair(settings=EngineSettings(retransmit=FAST_RETRANSMIT, cookie_threshold=0))
    request = Message(
        header=IkeHeader(
            spi_i=bytes(range(1, 9)),
            exchange=ExchangeType.IKE_SA_INIT,
            initiator=True,
            response=False,
            message_id=0,
        ),
        payloads=(
            Notify(notify_type=NotifyType.COOKIE, data=bytes(36)),
            SecurityAssociation(proposals=ike_sa_payload(DEFAULT_IKE_PROPOSALS).proposals),
            KeyExchange(group=DhId.CURVE25519, data=bytes(range(1, 33))),
            Nonce(data=bytes(32)),
        ),
    )
    b.engine.datagram_received(encode_message(request), local_port=500, remote=(ADDRESS_A, 500), now=net.now)
    (answer,) = b.engine.datagrams()
    reply = decode_message(answer.data)
    assert [type(p) for p in reply.payloads] == [Notify]
    assert reply.payloads[0].notify_type == NotifyType.COOKIE  # type: ignore[union-attr]
    assert not b.engine.status()  # nothing kept


def test_invalid_ke_payload_retry_with_the_group_the_responder_wants() -> None:
    ecp_only = (
        IkeProposal(encryption=((EncrId.AES_GCM_16, 256),), prf=(PrfId.HMAC_SHA2_256,), dh=(DhId.ECP_256,)),
    )
    net, a, _b = pair(peer_b={"ike_proposals": ecp_only})
    a.engine.start(net.now)
    net.settle()
    (up_a,) = a.of(IkeSaUp)
    assert up_a.suite == "aes256gcm16-prfsha256-ecp256"
    inits = [decode_message(d.data) for _, _, d in net.log if d.local_port == 500]
    assert [m.header.response for m in inits] == [False, True, False, True]
    refusal = inits[1].payloads[0]
    assert isinstance(refusal, Notify) and refusal.notify_type == NotifyType.INVALID_KE_PAYLOAD
    assert refusal.data == DhId.ECP_256.to_bytes(2, "big")
    assert inits[0].find(KeyExchange).group == DhId.CURVE25519  # type: ignore[union-attr]
    assert inits[2].find(KeyExchange).group == DhId.ECP_256  # type: ignore[union-attr]
    assert all(m.header.message_id == 0 for m in inits)


def test_no_common_proposal_fails_both_sides_cleanly() -> None:
    chacha = (
        IkeProposal(
            encryption=((EncrId.CHACHA20_POLY1305, 256),), prf=(PrfId.HMAC_SHA2_384,), dh=(DhId.ECP_384,)
        ),
    )
    aes = (
        IkeProposal(
            encryption=((EncrId.AES_GCM_16, 128),), prf=(PrfId.HMAC_SHA2_256,), dh=(DhId.CURVE25519,)
        ),
    )
    net, a, b = pair(peer_a={"ike_proposals": aes}, peer_b={"ike_proposals": chacha})
    a.engine.start(net.now)
    net.settle()
    (failed,) = a.of(IkeSaFailed)
    assert "NO_PROPOSAL_CHOSEN" in failed.reason
    assert not a.engine.status() and not b.engine.status()


@pytest.mark.parametrize(
    ("ike", "esp"),
    [
        ("aes128gcm16-prfsha384-ecp384", "aes128gcm16"),
        ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
        ("aes256gcm16-prfsha256-ecp256", "aes256gmac"),
    ],
)
def test_each_suite_negotiates(ike: str, esp: str) -> None:
    ike_proposal = (parse_ike_proposal(ike),)
    esp_proposals = (parse_esp_proposal(esp),)
    net, a, b = pair(
        peer_a={"ike_proposals": ike_proposal},
        child_a=child(proposals=esp_proposals),
        child_b=child(local=(LAN_B,), remote=(LAN_A,), proposals=esp_proposals),
    )
    a.engine.start(net.now)
    net.settle()
    assert a.of(IkeSaUp)[0].suite == b.of(IkeSaUp)[0].suite == ike
    assert str(a.of(ChildSaInstalled)[0].child.suite) == str(b.of(ChildSaInstalled)[0].child.suite) == esp


def test_child_sa_refused_but_ike_sa_stays_up() -> None:
    """RFC 7296 section 2.21.2: a CHILD SA error in IKE_AUTH leaves the IKE SA established."""
    net, a, b = pair(child_a=child(proposals=(parse_esp_proposal("aes128gmac"),)))
    a.engine.start(net.now)
    net.settle()
    assert a.of(IkeSaUp) and b.of(IkeSaUp)
    assert not a.of(ChildSaInstalled) and not b.of(ChildSaInstalled)
    (failed,) = a.of(ChildSaFailed)
    assert "NO_PROPOSAL_CHOSEN" in failed.reason


def test_traffic_selectors_are_narrowed_by_the_responder() -> None:
    net, a, _b = pair(
        child_a=child(local=("10.1.0.0/16",), remote=("10.2.0.0/16",)),
        child_b=child(local=("10.2.3.0/24",), remote=("10.1.0.0/24", "10.9.0.0/24")),
    )
    a.engine.start(net.now)
    net.settle()
    (installed,) = a.of(ChildSaInstalled)
    assert [format_selector(t) for t in installed.child.local_ts] == ["10.1.0.0/24"]
    assert [format_selector(t) for t in installed.child.remote_ts] == ["10.2.3.0/24"]


def test_disjoint_traffic_selectors_are_refused() -> None:
    net, a, _b = pair(child_b=child(local=("10.7.0.0/24",), remote=("10.8.0.0/24",)))
    a.engine.start(net.now)
    net.settle()
    assert "TS_UNACCEPTABLE" in a.of(ChildSaFailed)[0].reason
