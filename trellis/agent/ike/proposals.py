"""SA payload negotiation (RFC 7296 sections 2.7 and 3.3): our proposals as transforms, the
responder's choice, and the initiator's check of that choice.

A responder answers with exactly one transform of each type present in the proposal it accepts.
We prefer our own order (as strongSwan does by default): for each of our proposals in turn, the
first of the peer's proposals that shares every transform type wins, with our preferred algorithm
of each type. Proposals or transforms we do not understand are skipped (section 3.3.6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trellis.agent.ike.config import EspProposal, IkeProposal
from trellis.agent.ike.constants import DhId, EncrId, EsnId, IntegId, PrfId, ProtocolId, TransformType
from trellis.agent.ike.crypto.suites import EspSuite, IkeSuite
from trellis.agent.ike.errors import InvalidKePayload, NoProposalChosen
from trellis.agent.ike.payloads import Proposal, SecurityAssociation, Transform

FIXED_KEY_SIZE = frozenset({EncrId.CHACHA20_POLY1305})  # no Key Length attribute (RFC 7634)


def _encr_transform(encr: EncrId, bits: int) -> Transform:
    key_length = None if encr in FIXED_KEY_SIZE else bits
    return Transform(type=TransformType.ENCR, id=encr, key_length=key_length)


def _transform_encr(transform: Transform) -> tuple[EncrId, int] | None:
    if not isinstance(transform.id, EncrId):
        return None
    if transform.id in FIXED_KEY_SIZE:
        return (transform.id, 256) if transform.key_length in (None, 256) else None
    if transform.key_length is None:
        return None
    return transform.id, transform.key_length


# --- building our offers ----------------------------------------------------------------------


def ike_sa_payload(proposals: Sequence[IkeProposal], *, spi: bytes = b"") -> SecurityAssociation:
    """Our IKE proposals; ``spi`` is empty in IKE_SA_INIT and our new SPI in an IKE rekey."""
    return SecurityAssociation(
        proposals=tuple(
            Proposal(
                number=number,
                protocol=ProtocolId.IKE,
                spi=spi,
                transforms=(
                    *(_encr_transform(e, b) for e, b in p.encryption),
                    *(Transform(type=TransformType.PRF, id=prf) for prf in p.prf),
                    *(Transform(type=TransformType.DH, id=g) for g in p.dh),
                ),
            )
            for number, p in enumerate(proposals, start=1)
        )
    )


def esp_sa_payload(proposals: Sequence[EspProposal], *, spi: bytes, with_dh: bool) -> SecurityAssociation:
    """Our ESP proposals. DH transforms only when the exchange carries a KE (``with_dh``): the
    CHILD SA of IKE_AUTH takes its keys from the IKE SA's exchange."""
    return SecurityAssociation(
        proposals=tuple(
            Proposal(
                number=number,
                protocol=ProtocolId.ESP,
                spi=spi,
                transforms=(
                    *(_encr_transform(e, b) for e, b in p.encryption),
                    *((Transform(type=TransformType.DH, id=g) for g in p.dh) if with_dh else ()),
                    *(
                        Transform(type=TransformType.ESN, id=EsnId.ESN if esn else EsnId.NO_ESN)
                        for esn in p.esn
                    ),
                ),
            )
            for number, p in enumerate(proposals, start=1)
        )
    )


def first_ike_group(proposals: Sequence[IkeProposal]) -> DhId:
    return proposals[0].dh[0]


def pfs_group(proposals: Sequence[EspProposal]) -> DhId | None:
    """The group we send a KE for in CREATE_CHILD_SA (None: no PFS)."""
    return proposals[0].dh[0] if proposals[0].dh else None


def offered_groups(proposals: Sequence[IkeProposal] | Sequence[EspProposal]) -> frozenset[DhId]:
    return frozenset(g for p in proposals for g in p.dh)


# --- the responder's choice -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Types:
    encr: tuple[tuple[EncrId, int], ...]
    prf: tuple[int, ...]
    integ: tuple[int, ...]
    dh: tuple[int, ...]
    esn: tuple[int, ...]


def _offered(proposal: Proposal) -> _Types | None:
    """The transforms of a peer's proposal by type, or None if we must skip it."""
    if not proposal.understood or any(not t.understood for t in proposal.transforms):
        return None
    encr: list[tuple[EncrId, int]] = []
    by_type: dict[int, list[int]] = {t: [] for t in TransformType}
    for transform in proposal.transforms:
        if transform.type == TransformType.ENCR:
            chosen = _transform_encr(transform)
            if chosen is not None:
                encr.append(chosen)
            by_type[TransformType.ENCR].append(transform.id)
        else:
            by_type[transform.type].append(transform.id)
    if by_type[TransformType.ENCR] and not encr:
        return None
    return _Types(
        encr=tuple(encr),
        prf=tuple(by_type[TransformType.PRF]),
        integ=tuple(by_type[TransformType.INTEG]),
        dh=tuple(by_type[TransformType.DH]),
        esn=tuple(by_type[TransformType.ESN]),
    )


def _first_common(ours: Sequence[int], theirs: Sequence[int]) -> int | None:
    return next((x for x in ours if x in theirs), None)


def _aead_integ(offered: _Types) -> bool:
    """With an AEAD, INTEG must be absent or NONE among the offer (RFC 5282 section 8)."""
    return not offered.integ or IntegId.NONE in offered.integ


@dataclass(frozen=True, slots=True)
class IkeChoice:
    suite: IkeSuite
    proposal: Proposal  # to put in our response (with our SPI where one is needed)
    peer_spi: bytes


def choose_ike(
    ours: Sequence[IkeProposal], sa: SecurityAssociation, *, ke_group: int | None, spi: bytes = b""
) -> IkeChoice:
    """Pick an IKE suite. A proposal agreeing with the peer's KE group is preferred (saves a round
    trip); if only other groups are common, InvalidKePayload names the one we want."""
    choice = _choose_ike(ours, sa, spi=spi, group=ke_group)
    if choice is not None:
        return choice
    fallback = _choose_ike(ours, sa, spi=spi, group=None)
    if fallback is None:
        raise NoProposalChosen("no common IKE proposal")
    raise InvalidKePayload(
        f"KE for group {ke_group}, but we chose {fallback.suite.dh.name}", wanted=fallback.suite.dh
    )


def _choose_ike(
    ours: Sequence[IkeProposal], sa: SecurityAssociation, *, spi: bytes, group: int | None
) -> IkeChoice | None:
    for mine in ours:
        for theirs in sa.proposals:
            if theirs.protocol != ProtocolId.IKE:
                continue
            offered = _offered(theirs)
            if offered is None or not _aead_integ(offered) or offered.esn:
                continue
            encr = next((e for e in mine.encryption if e in offered.encr), None)
            prf = _first_common(mine.prf, offered.prf)
            groups = [g for g in mine.dh if g in offered.dh and (group is None or g == group)]
            if encr is None or prf is None or not groups:
                continue
            suite = IkeSuite(encr=encr[0], key_bits=encr[1], prf=PrfId(prf), dh=DhId(groups[0]))
            transforms = [
                _encr_transform(*encr),
                Transform(type=TransformType.PRF, id=suite.prf),
                Transform(type=TransformType.DH, id=suite.dh),
            ]
            if offered.integ:
                transforms.append(Transform(type=TransformType.INTEG, id=IntegId.NONE))
            proposal = Proposal(
                number=theirs.number, protocol=ProtocolId.IKE, spi=spi, transforms=tuple(transforms)
            )
            return IkeChoice(suite=suite, proposal=proposal, peer_spi=theirs.spi)
    return None


@dataclass(frozen=True, slots=True)
class EspChoice:
    suite: EspSuite
    proposal: Proposal
    peer_spi: bytes


ESP_SPI_LENGTH = 4
IKE_SPI_LENGTH = 8


def choose_esp(
    ours: Sequence[EspProposal], sa: SecurityAssociation, *, spi: bytes, ke_group: int | None, with_dh: bool
) -> EspChoice:
    """Pick an ESP suite. ``with_dh`` (CREATE_CHILD_SA): a DH transform in the chosen proposal
    must match the KE payload (``ke_group``, None if none was sent); in IKE_AUTH DH transforms are
    ignored. Raises NoProposalChosen or InvalidKePayload."""
    wanted: DhId | None = None
    for mine in ours:
        for theirs in sa.proposals:
            if theirs.protocol != ProtocolId.ESP or len(theirs.spi) != ESP_SPI_LENGTH:
                continue
            offered = _offered(theirs)
            if offered is None or not _aead_integ(offered) or offered.prf:
                continue
            encr = next((e for e in mine.encryption if e in offered.encr), None)
            esn_ids = [EsnId.ESN if e else EsnId.NO_ESN for e in mine.esn]
            esn = _first_common(esn_ids, offered.esn) if offered.esn else EsnId.NO_ESN
            if encr is None or esn is None:
                continue
            group: DhId | None = None
            if with_dh:
                their_groups = [g for g in offered.dh if g != DhId.NONE]
                their_none = not offered.dh or DhId.NONE in offered.dh
                if not mine.dh:
                    if ke_group is not None or not their_none:
                        continue  # they want PFS, we are configured without it
                else:
                    common = [g for g in mine.dh if g in their_groups]
                    if not common:
                        continue
                    if ke_group not in common:
                        wanted = wanted or DhId(common[0])
                        continue
                    group = DhId(ke_group)
            suite = EspSuite(encr=encr[0], key_bits=encr[1], esn=esn == EsnId.ESN, pfs_group=group)
            transforms = [_encr_transform(*encr)]
            if offered.integ:
                transforms.append(Transform(type=TransformType.INTEG, id=IntegId.NONE))
            if with_dh and offered.dh:
                transforms.append(Transform(type=TransformType.DH, id=group or DhId.NONE))
            if offered.esn:
                transforms.append(Transform(type=TransformType.ESN, id=esn))
            proposal = Proposal(
                number=theirs.number, protocol=ProtocolId.ESP, spi=spi, transforms=tuple(transforms)
            )
            return EspChoice(suite=suite, proposal=proposal, peer_spi=theirs.spi)
    if wanted is not None:
        raise InvalidKePayload(f"KE for group {ke_group}, but we want {wanted.name}", wanted=wanted)
    raise NoProposalChosen("no common ESP proposal")


# --- the initiator's check ----------------------------------------------------------------------


def _single_choice(sa: SecurityAssociation, protocol: ProtocolId) -> tuple[Proposal, dict[int, Transform]]:
    if len(sa.proposals) != 1:
        raise NoProposalChosen(f"the response carries {len(sa.proposals)} proposals, not one")
    proposal = sa.proposals[0]
    if proposal.protocol != protocol or not proposal.understood:
        raise NoProposalChosen(f"the response chose protocol {proposal.protocol}, not {protocol.name}")
    chosen: dict[int, Transform] = {}
    for transform in proposal.transforms:
        if transform.type in chosen:
            raise NoProposalChosen(f"the response chose two transforms of type {transform.type}")
        chosen[transform.type] = transform
    return proposal, chosen


def check_ike_choice(ours: Sequence[IkeProposal], sa: SecurityAssociation) -> tuple[IkeSuite, bytes]:
    """The suite the responder chose from our offer, and its SPI; NoProposalChosen if the answer
    is not one of the combinations we offered."""
    proposal, chosen = _single_choice(sa, ProtocolId.IKE)
    if not 1 <= proposal.number <= len(ours):
        raise NoProposalChosen(f"the response names proposal {proposal.number}, we sent {len(ours)}")
    mine = ours[proposal.number - 1]
    encr = _transform_encr(chosen[TransformType.ENCR]) if TransformType.ENCR in chosen else None
    prf = chosen.get(TransformType.PRF)
    dh = chosen.get(TransformType.DH)
    integ = chosen.get(TransformType.INTEG)
    if (
        encr is None
        or encr not in mine.encryption
        or prf is None
        or prf.id not in mine.prf
        or dh is None
        or dh.id not in mine.dh
        or (integ is not None and integ.id != IntegId.NONE)
        or TransformType.ESN in chosen
    ):
        raise NoProposalChosen("the response chose transforms we did not offer")
    suite = IkeSuite(encr=encr[0], key_bits=encr[1], prf=PrfId(prf.id), dh=DhId(dh.id))
    return suite, proposal.spi


def check_esp_choice(
    ours: Sequence[EspProposal], sa: SecurityAssociation, *, with_dh: bool
) -> tuple[EspSuite, bytes]:
    """The ESP suite the responder chose and its inbound SPI (our outbound SPI)."""
    proposal, chosen = _single_choice(sa, ProtocolId.ESP)
    if len(proposal.spi) != ESP_SPI_LENGTH:
        raise NoProposalChosen(f"ESP SPI of {len(proposal.spi)} bytes")
    if not 1 <= proposal.number <= len(ours):
        raise NoProposalChosen(f"the response names proposal {proposal.number}, we sent {len(ours)}")
    mine = ours[proposal.number - 1]
    encr = _transform_encr(chosen[TransformType.ENCR]) if TransformType.ENCR in chosen else None
    integ = chosen.get(TransformType.INTEG)
    esn_transform = chosen.get(TransformType.ESN)
    esn = esn_transform is not None and esn_transform.id == EsnId.ESN
    dh = chosen.get(TransformType.DH)
    group: DhId | None = None
    if dh is not None and dh.id != DhId.NONE:
        if not with_dh or dh.id not in mine.dh:
            raise NoProposalChosen(f"the response chose DH group {dh.id} we did not offer")
        group = DhId(dh.id)
    elif with_dh and mine.dh:
        raise NoProposalChosen("the response dropped the PFS group we require")
    if (
        encr is None
        or encr not in mine.encryption
        or (integ is not None and integ.id != IntegId.NONE)
        or esn not in mine.esn
        or TransformType.PRF in chosen
    ):
        raise NoProposalChosen("the response chose transforms we did not offer")
    return EspSuite(encr=encr[0], key_bits=encr[1], esn=esn, pfs_group=group), proposal.spi
