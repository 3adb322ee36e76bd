"""What the network map asks of this site, as the IKE engine and the data plane understand it.

Pure: ``plan_mesh(network_map, me)`` gives the IKE peers (one CHILD SA per peer with exactly the
traffic selectors policy allows), the CA bundle peers must chain to, and the revocation lists.
Exactly one side of each pair initiates, chosen the same way on both sides, so a pair never
builds two IKE SAs for one tunnel.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cryptography import x509

from trellis.agent.ike.config import CertificateAuth, ChildConfig, DeadPeerAction, PeerConfig
from trellis.agent.ike.errors import IkeLocalError
from trellis.agent.ike.payloads import TrafficSelector
from trellis.v1 import common_pb2
from trellis.v1.identity import Identity

MESH_CHILD = "mesh"
MESH_DPD_DELAY = 10.0  # a dead peer is noticed in about a minute (strongSwan's retransmits)


class MapError(ValueError):
    """A network map this agent cannot use (it keeps the previous one)."""


@dataclass(frozen=True, slots=True)
class MeshPlan:
    peers: tuple[PeerConfig, ...]
    trust_anchors: tuple[x509.Certificate, ...]
    revoked_identities: frozenset[str]
    revoked_serials: frozenset[str]
    skipped: tuple[str, ...]  # peers the policy allows but that cannot be built, with the reason

    def is_revoked(self, identity: str | None, serial: str) -> bool:
        return serial in self.revoked_serials or (
            identity is not None and identity in self.revoked_identities
        )


def traffic_selector(selector: common_pb2.TrafficSelector) -> TrafficSelector:
    try:
        network = ipaddress.ip_network(selector.prefix)
    except ValueError:
        raise MapError(f"invalid traffic selector prefix {selector.prefix!r}") from None
    if selector.protocol > 255 or selector.port_start > selector.port_end or selector.port_end > 65535:
        raise MapError(f"invalid traffic selector {selector.prefix} {selector.protocol}")
    return TrafficSelector(
        start_address=network.network_address,
        end_address=network.broadcast_address,
        ip_protocol=selector.protocol,
        start_port=selector.port_start,
        end_port=selector.port_end,
    )


def initiator_of(a: common_pb2.Peer, b: common_pb2.Peer) -> str | None:
    """The identity that initiates between ``a`` and ``b``: the lower one if it knows where the
    higher one is, else the higher one if it knows where the lower one is. Both sides read the
    same map, so both reach the same answer."""
    low, high = (a, b) if a.identity < b.identity else (b, a)
    if high.endpoints:
        return low.identity
    if low.endpoints:
        return high.identity
    return None


def plan_mesh(network_map: common_pb2.NetworkMap, me: Identity) -> MeshPlan:
    if network_map.self.identity != me.uri:
        raise MapError(f"map is for {network_map.self.identity or 'nobody'}, not {me}")
    try:
        anchors = tuple(x509.load_der_x509_certificate(der) for der in network_map.ca_bundle_der)
    except ValueError:
        raise MapError("map carries a malformed CA certificate") from None
    if not anchors:
        raise MapError("map carries no CA bundle")
    revoked = frozenset(network_map.revoked_identities)
    by_identity = {p.identity: p for p in network_map.peers}
    peers: list[PeerConfig] = []
    skipped: list[str] = []
    for policy in network_map.policy.peers:
        peer = by_identity.get(policy.identity)
        if peer is None or policy.identity in revoked:
            continue  # policy allows it, but it is not a live site (e.g. revoked a moment ago)
        if not policy.local_selectors or not policy.remote_selectors:
            skipped.append(f"{peer.name}: no traffic selectors")
            continue
        endpoint = peer.endpoints[0] if peer.endpoints else None
        initiate = initiator_of(network_map.self, peer) == me.uri
        try:
            peers.append(
                PeerConfig(
                    name=peer.name,
                    remote_host=endpoint.address if endpoint else None,
                    remote_port=endpoint.port if endpoint else 500,
                    auth=CertificateAuth(trust_anchors=anchors),
                    remote_id=peer.identity,
                    children=(
                        ChildConfig(
                            name=MESH_CHILD,
                            local_ts=tuple(traffic_selector(s) for s in policy.local_selectors),
                            remote_ts=tuple(traffic_selector(s) for s in policy.remote_selectors),
                        ),
                    ),
                    initiate=initiate and endpoint is not None,
                    dpd_delay=MESH_DPD_DELAY,
                    dpd_action=DeadPeerAction.RESTART if initiate else DeadPeerAction.CLEAR,
                )
            )
        except (IkeLocalError, MapError) as e:
            skipped.append(f"{peer.name}: {e}")
    return MeshPlan(
        peers=tuple(peers),
        trust_anchors=anchors,
        revoked_identities=revoked,
        revoked_serials=frozenset(network_map.revoked_serials),
        skipped=tuple(skipped),
    )
