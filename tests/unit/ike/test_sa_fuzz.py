"""Fuzzing the state machine: whatever a peer sends, at any stage, the engine either acts on it
or drops it, and an IKE SA fed directly only raises IkePeerError. The strongest inputs are
authenticated: random payload chains encrypted with the live SA's real keys, so they get past
the ICV and reach every exchange handler."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.ike.ike_codec_strategies import clear_payloads, security_associations, selector_tuples
from tests.unit.ike.sa_support import ADDRESS_A, ADDRESS_B, LAN_A, LAN_B, Network, Node, child, psk_peer
from trellis.agent.ike.config import DEFAULT_ESP_PROPOSALS, DEFAULT_IKE_PROPOSALS
from trellis.agent.ike.constants import (
    DhId,
    EncrId,
    ExchangeType,
    NotifyType,
    PrfId,
    ProtocolId,
    TransformType,
)
from trellis.agent.ike.crypto.aead import SkAead
from trellis.agent.ike.encrypted import encrypt_message
from trellis.agent.ike.errors import IkePeerError
from trellis.agent.ike.events import IkeSaUp
from trellis.agent.ike.fragments import encrypt_message_fragments
from trellis.agent.ike.message import IkeHeader, Message, decode_header
from trellis.agent.ike.payloads import (
    Delete,
    KeyExchange,
    Nonce,
    Notify,
    Payload,
    SecurityAssociation,
    Transform,
    TsInitiator,
    TsResponder,
)
from trellis.agent.ike.proposal_text import parse_esp_proposal
from trellis.agent.ike.proposals import esp_sa_payload, ike_sa_payload
from trellis.agent.ike.sa import IkeSa
from trellis.agent.ike.selectors import parse_selector

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
IV_BASE = 1 << 40  # our forged messages use IVs the real sender never reaches


def _established() -> tuple[Network, Node, Node, IkeSa, IkeSa]:
    net = Network()
    a = net.add(
        "a",
        ADDRESS_A,
        peers=[
            psk_peer("b", ADDRESS_B, local_id="a.example.org", remote_id="b.example.org", children=(child(),))
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
                children=(child(local=(LAN_B,), remote=(LAN_A,)),),
                initiate=False,
            )
        ],
    )
    a.engine.start(net.now)
    net.settle()
    sa_id = a.of(IkeSaUp)[0].ike_sa
    sa_a, sa_b = a.engine.sa(sa_id), b.engine.sa(sa_id)
    assert sa_a is not None and sa_b is not None
    return net, a, b, sa_a, sa_b


plausible_sa = st.one_of(
    security_associations,
    st.builds(
        lambda spi, dh: esp_sa_payload(
            (*DEFAULT_ESP_PROPOSALS, parse_esp_proposal("aes128gcm16-x25519")), spi=spi, with_dh=dh
        ),
        st.binary(min_size=3, max_size=5),
        st.booleans(),
    ),
    st.builds(lambda spi: ike_sa_payload(DEFAULT_IKE_PROPOSALS, spi=spi), st.binary(min_size=7, max_size=9)),
)
plausible_ts = st.one_of(
    selector_tuples, st.just((parse_selector(LAN_A),)), st.just((parse_selector(LAN_B),))
)

x25519_ke = st.builds(KeyExchange, group=st.just(DhId.CURVE25519), data=st.binary(min_size=32, max_size=32))
good_child_request = st.tuples(
    st.builds(
        lambda spi: esp_sa_payload(DEFAULT_ESP_PROPOSALS, spi=spi, with_dh=False),
        st.binary(min_size=4, max_size=4),
    ),
    st.binary(min_size=16, max_size=64).map(lambda d: Nonce(data=d)),
    st.lists(x25519_ke, max_size=1),
).map(
    lambda t: [
        t[0],
        t[1],
        *t[2],
        TsInitiator(selectors=(parse_selector(LAN_A),)),
        TsResponder(selectors=(parse_selector(LAN_B),)),
    ]
)
good_ike_rekey = st.tuples(
    st.builds(lambda spi: ike_sa_payload(DEFAULT_IKE_PROPOSALS, spi=spi), st.binary(min_size=8, max_size=8)),
    st.binary(min_size=16, max_size=64).map(lambda d: Nonce(data=d)),
    x25519_ke,
).map(list)
# answers to our own requests: one chosen proposal, as a responder would send
good_child_answer = st.tuples(
    st.builds(
        lambda spi: SecurityAssociation(
            proposals=(
                replace(
                    esp_sa_payload(DEFAULT_ESP_PROPOSALS, spi=spi, with_dh=False).proposals[0],
                    transforms=(
                        Transform(type=TransformType.ENCR, id=EncrId.AES_GCM_16, key_length=256),
                        Transform(type=TransformType.ESN, id=0),
                    ),
                ),
            )
        ),
        st.binary(min_size=4, max_size=4),
    ),
    st.binary(min_size=16, max_size=64).map(lambda d: Nonce(data=d)),
    plausible_ts.map(lambda s: TsInitiator(selectors=s)),
    plausible_ts.map(lambda s: TsResponder(selectors=s)),
).map(list)
good_ike_answer = st.tuples(
    st.builds(
        lambda spi: SecurityAssociation(
            proposals=(
                replace(
                    ike_sa_payload(DEFAULT_IKE_PROPOSALS, spi=spi).proposals[0],
                    transforms=(
                        Transform(type=TransformType.ENCR, id=EncrId.AES_GCM_16, key_length=256),
                        Transform(type=TransformType.PRF, id=PrfId.HMAC_SHA2_256),
                        Transform(type=TransformType.DH, id=DhId.CURVE25519),
                    ),
                ),
            )
        ),
        st.binary(min_size=7, max_size=9),
    ),
    st.binary(min_size=16, max_size=64).map(lambda d: Nonce(data=d)),
    x25519_ke,
).map(list)
refusals = st.builds(
    lambda kind, data: [Notify(notify_type=kind, data=data)],
    st.sampled_from(
        [
            NotifyType.INVALID_KE_PAYLOAD,
            NotifyType.TEMPORARY_FAILURE,
            NotifyType.CHILD_SA_NOT_FOUND,
            NotifyType.NO_PROPOSAL_CHOSEN,
            NotifyType.TS_UNACCEPTABLE,
        ]
    ),
    st.sampled_from([b"", b"\x00\x13", b"\x00\x1f", b"\x00"]),
)

shaped_payloads: st.SearchStrategy[list[Payload]] = st.one_of(
    good_child_request,
    good_ike_rekey,
    good_child_answer,
    good_ike_answer,
    refusals,
    st.lists(clear_payloads, max_size=8),
    # CREATE_CHILD_SA-like: SA, Nonce, KE, TSi, TSr, perhaps REKEY_SA
    st.tuples(
        plausible_sa,
        st.binary(min_size=16, max_size=64).map(lambda d: Nonce(data=d)),
        st.builds(
            KeyExchange,
            group=st.sampled_from([DhId.CURVE25519, DhId.CURVE25519, DhId.ECP_256, 0, 999]),
            data=st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=100)),
        ),
        plausible_ts.map(lambda s: TsInitiator(selectors=s)),
        plausible_ts.map(lambda s: TsResponder(selectors=s)),
        st.lists(
            st.builds(
                Notify,
                notify_type=st.sampled_from(list(NotifyType)),
                protocol_id=st.sampled_from([0, *ProtocolId]),
                spi=st.binary(max_size=8),
                data=st.binary(max_size=8),
            ),
            max_size=2,
        ),
    ).map(lambda t: [*t[:5], *t[5]]),
    # INFORMATIONAL-like: Deletes and notifies
    st.lists(
        st.one_of(
            st.builds(
                Delete,
                protocol_id=st.sampled_from([*ProtocolId, 9]),
                spis=st.lists(st.binary(min_size=4, max_size=4), max_size=3).map(tuple),
            ),
            st.builds(Notify, notify_type=st.sampled_from(list(NotifyType)), data=st.binary(max_size=4)),
        ),
        max_size=3,
    ),
)


@st.composite
def forged(draw: st.DrawFn, sa_b: IkeSa) -> tuple[bytes, int]:
    """An authenticated message from a's side of the SA to b (request or response)."""
    exchange = draw(
        st.sampled_from(
            [
                *ExchangeType,
                ExchangeType.CREATE_CHILD_SA,
                ExchangeType.CREATE_CHILD_SA,
                ExchangeType.INFORMATIONAL,
                0,
                99,
            ]
        )
    )
    response = draw(st.sampled_from([False, False, False, True]))
    if response:
        message_id = draw(st.sampled_from([max(0, sa_b.next_message_id - 1)] * 4 + [0, 2**32 - 1]))
    else:
        message_id = draw(st.sampled_from([sa_b.expected_message_id] * 4 + [0, 2**32 - 1]))
    payloads = draw(shaped_payloads)
    if draw(st.booleans()) and sa_b.children:
        real = next(iter(sa_b.children.values()))
        extra: list[Payload] = [
            Delete(protocol_id=ProtocolId.ESP, spis=(real.outbound_spi,)),
            Notify(notify_type=NotifyType.REKEY_SA, protocol_id=ProtocolId.ESP, spi=real.outbound_spi),
        ]
        payloads.append(draw(st.sampled_from(extra)))
    header = IkeHeader(
        spi_i=sa_b.spi_i,
        spi_r=sa_b.spi_r,
        exchange=exchange,
        initiator=True,
        response=response,
        message_id=message_id,
    )
    keys = sa_b.keys
    assert keys is not None
    aead = SkAead(keys.suite.encr, keys.sk_ei)
    counter = iter(range(IV_BASE + draw(st.integers(0, 1 << 20)), IV_BASE + (1 << 22)))
    message = Message(header=header, payloads=tuple(payloads))
    if draw(st.booleans()):
        data = encrypt_message(message, aead=aead, iv=next(counter).to_bytes(8, "big"))
    else:
        fragments = encrypt_message_fragments(
            message,
            aead=aead,
            next_iv=lambda: next(counter).to_bytes(8, "big"),
            max_message_size=draw(st.integers(120, 400)),
        )
        data = draw(st.sampled_from(fragments))
    return data, draw(st.sampled_from([500, 4500]))


@given(st.data())
@FUZZ
def test_authenticated_garbage_is_handled_or_refused(data: st.DataObject) -> None:
    net, _a, b, _, sa_b = _established()
    started = data.draw(st.sampled_from(["nothing", "child-rekey", "ike-rekey", "delete-child"]))
    if started == "child-rekey":
        b.engine.rekey_child(next(iter(sa_b.children)), net.now)
    elif started == "ike-rekey":
        b.engine.rekey(sa_b.id, net.now)
    elif started == "delete-child":
        b.engine.delete_child(next(iter(sa_b.children)), net.now)
    b.engine.datagrams()  # b's request is lost; our forgeries answer it
    for _ in range(data.draw(st.integers(1, 3))):
        message, port = data.draw(forged(sa_b))
        framed = bytes(4) + message if port == 4500 else message
        b.engine.datagram_received(framed, local_port=port, remote=(ADDRESS_A, port), now=net.now)
        # the same bytes straight into the SA: a typed peer error or nothing
        with contextlib.suppress(IkePeerError):
            sa_b.receive(
                message, decode_header(message), local_port=port, remote=(ADDRESS_A, port), now=net.now
            )
    net.run(120.0)  # whatever state it left, the engines keep running their timers


@given(
    data=st.binary(max_size=300),
    port=st.sampled_from([500, 4500]),
    spi_source=st.sampled_from(["random", "real"]),
)
@FUZZ
def test_random_bytes_are_dropped(data: bytes, port: int, spi_source: str) -> None:
    net, _a, b, _, sa_b = _established()
    if spi_source == "real" and len(data) >= 28:
        data = sa_b.spi_i + sa_b.spi_r + data[16:]
    before = b.engine.dropped
    assert b.engine.datagram_received(data, local_port=port, remote=(ADDRESS_A, port), now=net.now) in (
        None,
        data,
    )
    assert b.engine.dropped in (before, before + 1)
    net.settle()
    assert len(b.engine.status()) == 1 and b.engine.status()[0].state == "established"


@given(st.data())
@FUZZ
def test_mutated_handshake_messages(data: st.DataObject) -> None:
    """Replay a real handshake with one datagram mutated, into fresh engines."""
    net, _a, _b, _, _ = _established()
    log = [(who, d) for _, who, d in net.log]
    index = data.draw(st.integers(0, len(log) - 1))
    who, datagram = log[index]
    raw = bytearray(datagram.data)
    for _ in range(data.draw(st.integers(1, 4))):
        if raw:
            position = data.draw(st.integers(0, len(raw) - 1))
            raw[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    fresh, x, y, _, _ = _established()
    target = y if who == "a" else x
    source = ADDRESS_A if who == "a" else ADDRESS_B
    target.engine.datagram_received(
        bytes(raw), local_port=datagram.remote[1], remote=(source, datagram.local_port), now=fresh.now
    )
    fresh.run(60.0)


def test_fuzz_targets_reach_the_handlers() -> None:
    """The forged messages really are authentic: a well-formed liveness check forged this way is
    answered (so the fuzz above is not just failing ICVs)."""
    net, _a, b, _, sa_b = _established()
    keys = sa_b.keys
    assert keys is not None
    header = IkeHeader(
        spi_i=sa_b.spi_i,
        spi_r=sa_b.spi_r,
        exchange=ExchangeType.INFORMATIONAL,
        initiator=True,
        response=False,
        message_id=sa_b.expected_message_id,
    )
    message = encrypt_message(
        Message(header=header), aead=SkAead(keys.suite.encr, keys.sk_ei), iv=IV_BASE.to_bytes(8, "big")
    )
    b.engine.datagram_received(message, local_port=500, remote=(ADDRESS_A, 500), now=net.now)
    (answer,) = b.engine.datagrams()
    assert decode_header(answer.data).response
    assert ipaddress.ip_address(answer.remote[0]) == ipaddress.ip_address(ADDRESS_A)
