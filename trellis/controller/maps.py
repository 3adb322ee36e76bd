"""Network maps: what each agent is told, computed from one consistent read of the store.

Pure: a ``MapSnapshot`` is built once per store generation and then asked for each agent's map,
so a change fans out to hundreds of streams without hundreds of database reads.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from trellis.controller.store import MapInputs, SiteRecord
from trellis.v1 import common_pb2
from trellis.v1.identity import Identity

# Given a site name, the policy part of its map (None: no policy engine involved yet).
PolicyViewFor = Callable[[str], common_pb2.PolicyView | None]


def timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value.astimezone(dt.UTC))
    return stamp


def site_identity(trust_domain: str, name: str) -> str:
    return Identity.site(trust_domain, name).uri


def peer_message(site: SiteRecord, trust_domain: str) -> common_pb2.Peer:
    return common_pb2.Peer(
        identity=site_identity(trust_domain, site.name),
        name=site.name,
        labels=dict(site.labels),
        endpoints=[common_pb2.Endpoint(address=e.address, port=e.port) for e in site.endpoints],
        subnets=list(site.subnets),
    )


@dataclass(frozen=True, slots=True)
class MapSnapshot:
    inputs: MapInputs
    trust_domain: str
    ca_bundle_der: tuple[bytes, ...]
    policy_view_for: PolicyViewFor | None = None
    _peers: dict[str, common_pb2.Peer] = field(init=False, repr=False)
    _revoked_identities: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        live = {s.name: peer_message(s, self.trust_domain) for s in self.inputs.sites if not s.revoked}
        revoked = tuple(site_identity(self.trust_domain, s.name) for s in self.inputs.sites if s.revoked)
        object.__setattr__(self, "_peers", live)
        object.__setattr__(self, "_revoked_identities", revoked)

    @property
    def generation(self) -> int:
        return self.inputs.generation

    def has_live_site(self, name: str) -> bool:
        return name in self._peers

    def map_for(self, name: str) -> common_pb2.NetworkMap:
        """The map of one live site, without version and timestamp (so that two maps compare equal
        exactly when the agent would learn nothing new)."""
        policy = self.policy_view_for(name) if self.policy_view_for else None
        if policy is not None:
            allowed = {p.identity for p in policy.peers}
            peers = [p for n, p in self._peers.items() if n != name and p.identity in allowed]
        else:
            peers = [p for n, p in self._peers.items() if n != name]
        network_map = common_pb2.NetworkMap(
            trust_domain=self.trust_domain,
            self=self._peers[name],
            peers=peers,
            revoked_identities=self._revoked_identities,
            revoked_serials=self.inputs.revoked_serials,
            ca_bundle_der=self.ca_bundle_der,
        )
        if policy is not None:
            network_map.policy.CopyFrom(policy)
        return network_map
