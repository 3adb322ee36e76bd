"""Network maps: what each agent is told, computed from one consistent read of the store.

Pure: a ``MapSnapshot`` is built once per store generation and then asked for each agent's map,
so a change fans out to hundreds of streams without hundreds of database reads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf.timestamp_pb2 import Timestamp

from trellis.controller import mapwire
from trellis.controller.store import MapInputs, SiteRecord
from trellis.v1 import common_pb2
from trellis.v1.identity import Identity


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


class PolicyViews(Protocol):
    """The compiled policy as maps need it (trellis.controller.policies.RunningPolicy)."""

    @property
    def version(self) -> int: ...

    def view_bytes(self, name: str) -> bytes:
        """The site's PolicyView, encoded, without its policy_version."""
        ...

    def peers_of(self, name: str) -> frozenset[str]:
        """The identities the site may exchange traffic with."""
        ...


@dataclass(frozen=True, slots=True)
class MapSnapshot:
    """Every site's map at one store generation; each part is encoded once (mapwire.py)."""

    inputs: MapInputs
    trust_domain: str
    ca_bundle_der: tuple[bytes, ...]
    policy: PolicyViews
    _peers: dict[str, bytes] = field(init=False, repr=False)  # name -> encoded Peer
    _identities: dict[str, str] = field(init=False, repr=False)
    _shared: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        live = [s for s in self.inputs.sites if not s.revoked]
        peers = {s.name: peer_message(s, self.trust_domain).SerializeToString() for s in live}
        identities = {s.name: site_identity(self.trust_domain, s.name) for s in live}
        revoked = [site_identity(self.trust_domain, s.name) for s in self.inputs.sites if s.revoked]
        shared = b"".join(
            [
                mapwire.text_field(mapwire.TRUST_DOMAIN, self.trust_domain),
                *(mapwire.text_field(mapwire.REVOKED_IDENTITIES, r) for r in revoked),
                *(mapwire.text_field(mapwire.REVOKED_SERIALS, r) for r in self.inputs.revoked_serials),
                *(mapwire.length_delimited(mapwire.CA_BUNDLE, der) for der in self.ca_bundle_der),
            ]
        )
        object.__setattr__(self, "_peers", peers)
        object.__setattr__(self, "_identities", identities)
        object.__setattr__(self, "_shared", shared)

    @property
    def generation(self) -> int:
        return self.inputs.generation

    @property
    def policy_version(self) -> int:
        return self.policy.version

    def has_live_site(self, name: str) -> bool:
        return name in self._peers

    def encoded_map_for(self, name: str) -> mapwire.EncodedMap:
        """The map of one live site: itself, the peers its policy view allows, the revocations,
        the CA bundle and the view."""
        allowed = self.policy.peers_of(name)
        peers = [
            mapwire.length_delimited(mapwire.PEERS, encoded)
            for peer, encoded in self._peers.items()
            if peer != name and self._identities[peer] in allowed
        ]
        head = b"".join([self._shared, mapwire.length_delimited(mapwire.SELF, self._peers[name]), *peers])
        return mapwire.EncodedMap(head=head, policy=self.policy.view_bytes(name))
