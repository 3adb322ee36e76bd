"""Negotiating one CHILD SA, shared by IKE_AUTH and CREATE_CHILD_SA (RFC 7296 sections 1.3,
2.9, 2.17): the responder's choice of configuration, selectors and suite, and the initiator's
check of the answer."""

from __future__ import annotations

from collections.abc import Sequence

from trellis.agent.ike.child import ChildSa
from trellis.agent.ike.config import ChildConfig, PeerConfig
from trellis.agent.ike.crypto.dh import KeyExchange
from trellis.agent.ike.crypto.keys import derive_child_sa_keys
from trellis.agent.ike.errors import MalformedMessage, NoProposalChosen, TsUnacceptable
from trellis.agent.ike.message import Message
from trellis.agent.ike.payloads import (
    KeyExchange as KePayload,
)
from trellis.agent.ike.payloads import (
    Payload,
    SecurityAssociation,
    TrafficSelector,
    TsInitiator,
    TsResponder,
)
from trellis.agent.ike.proposals import check_esp_choice, choose_esp
from trellis.agent.ike.sa import IkeSa
from trellis.agent.ike.selectors import narrow, within


def select_child_config(
    peer: PeerConfig, tsi: TsInitiator, tsr: TsResponder
) -> tuple[ChildConfig, tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]]:
    """(configuration, our selectors, the peer's selectors): the first of our CHILD SAs whose
    policy leaves something of what the initiator proposed. TSi is the initiator's side, which
    is the peer's side here."""
    for config in peer.children:
        remote = narrow(tsi.selectors, config.remote_ts)
        local = narrow(tsr.selectors, config.local_ts)
        if remote and local:
            return config, local, remote
    raise TsUnacceptable("the proposed traffic selectors match none of our CHILD SAs")


def answer_child(
    sa: IkeSa,
    *,
    config: ChildConfig,
    sa_payload: SecurityAssociation,
    local_ts: tuple[TrafficSelector, ...],
    remote_ts: tuple[TrafficSelector, ...],
    nonce_i: bytes,
    nonce_r: bytes,
    ke: KePayload | None,
    with_dh: bool,
    now: float,
) -> tuple[ChildSa, tuple[Payload, ...]]:
    """The responder's CHILD SA and the payloads describing it: SA, [KE], TSi, TSr (the caller
    adds the Nonce of a CREATE_CHILD_SA)."""
    _, ike_keys = sa.require_keys()
    spi = sa.host.new_child_spi()
    choice = choose_esp(
        config.proposals, sa_payload, spi=spi, ke_group=int(ke.group) if ke else None, with_dh=with_dh
    )
    shared: bytes | None = None
    payloads: list[Payload] = [SecurityAssociation(proposals=(choice.proposal,))]
    if choice.suite.pfs_group is not None and ke is not None:
        exchange = KeyExchange.generate(choice.suite.pfs_group)
        shared = exchange.shared_secret(ke.data)
        payloads.append(KePayload(group=choice.suite.pfs_group, data=exchange.public_data))
    keys = derive_child_sa_keys(ike_keys, choice.suite, ni=nonce_i, nr=nonce_r, shared_secret=shared)
    rekey_at, expires_at = sa.child_lifetimes(config.lifetime, now)
    child = ChildSa(
        config=config,
        inbound_spi=spi,
        outbound_spi=choice.peer_spi,
        suite=choice.suite,
        keys=keys,
        initiated_by_us=False,
        local_ts=local_ts,
        remote_ts=remote_ts,
        created_at=now,
        rekey_at=rekey_at,
        expires_at=expires_at,
    )
    payloads += [TsInitiator(selectors=remote_ts), TsResponder(selectors=local_ts)]
    return child, tuple(payloads)


def accept_child(
    sa: IkeSa,
    response: Message,
    *,
    config: ChildConfig,
    our_spi: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    ke: KeyExchange | None,
    with_dh: bool,
    proposed_local: Sequence[TrafficSelector],
    proposed_remote: Sequence[TrafficSelector],
    now: float,
) -> ChildSa:
    """The initiator's CHILD SA from a successful answer; NoProposalChosen or TsUnacceptable if
    the answer is not within what we proposed."""
    _, ike_keys = sa.require_keys()
    sa_payload = response.find(SecurityAssociation)
    tsi = response.find(TsInitiator)
    tsr = response.find(TsResponder)
    if sa_payload is None or tsi is None or tsr is None:
        raise MalformedMessage("CHILD SA answer without SA, TSi or TSr")
    suite, peer_spi = check_esp_choice(config.proposals, sa_payload, with_dh=with_dh)
    shared: bytes | None = None
    if suite.pfs_group is not None:
        peer_ke = response.find(KePayload)
        if ke is None or peer_ke is None or ke.group != suite.pfs_group or peer_ke.group != ke.group:
            raise NoProposalChosen(f"PFS group {suite.pfs_group.name} without matching KE payloads")
        shared = ke.shared_secret(peer_ke.data)
    if not within(tsi.selectors, proposed_local) or not within(tsr.selectors, proposed_remote):
        raise TsUnacceptable("the answer's traffic selectors are wider than our proposal")
    keys = derive_child_sa_keys(ike_keys, suite, ni=nonce_i, nr=nonce_r, shared_secret=shared)
    rekey_at, expires_at = sa.child_lifetimes(config.lifetime, now)
    return ChildSa(
        config=config,
        inbound_spi=our_spi,
        outbound_spi=peer_spi,
        suite=suite,
        keys=keys,
        initiated_by_us=True,
        local_ts=tsi.selectors,
        remote_ts=tsr.selectors,
        created_at=now,
        rekey_at=rekey_at,
        expires_at=expires_at,
    )
