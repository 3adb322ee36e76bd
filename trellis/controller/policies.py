"""Policy on the controller: the running policy compiled for every site, kept current as sites,
policy versions and time change; and the admin operations on it (apply, rollback, show, check).

The pure engine lives in trellis.controller.policy; this module holds its state between changes
and stores versions. A refused policy never replaces the running one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Callable

from trellis.controller import mapwire
from trellis.controller.errors import InvalidArgument, NotFound
from trellis.controller.maps import timestamp
from trellis.controller.policy import (
    Inventory,
    Policy,
    PolicyCompiler,
    PolicyInvalid,
    Site,
    UnknownSite,
    View,
    check,
    parse_policy,
)
from trellis.controller.policy.parser import MAX_POLICY_BYTES
from trellis.controller.policy.view import PeerView
from trellis.controller.policy.wire import ProtoWriter, decision_to_proto
from trellis.controller.store import MapInputs, PolicyRecord, SiteRecord
from trellis.v1 import policy_pb2
from trellis.v1.identity import Identity

log = logging.getLogger(__name__)

# Before anyone applies a policy, nothing is allowed (default deny).
NO_POLICY = parse_policy("apiVersion: trellis/v1\nkind: Policy\nrules: []\n")
MAX_COMMENT_CHARS = 500
MAX_CACHED_PEER_POLICIES = 2_000_000  # past this many the cache of encoded pairs starts afresh


def inventory_of(sites: tuple[SiteRecord, ...], trust_domain: str) -> Inventory:
    """The live (not revoked) sites, as the policy engine sees them."""
    return Inventory(
        Site.build(
            name=s.name,
            identity=Identity.site(trust_domain, s.name).uri,
            labels=dict(s.labels),
            subnets=s.subnets,
        )
        for s in sites
        if not s.revoked
    )


SiteTerms = tuple[tuple[tuple[str, str], ...], tuple[str, ...]]  # labels, subnets


def _site_terms(sites: tuple[SiteRecord, ...]) -> dict[str, SiteTerms]:
    """What the policy sees of each live site."""
    return {s.name: (s.labels, s.subnets) for s in sites if not s.revoked}


class RunningPolicy:
    """The running policy compiled for every live site.

    Building (``build``) is pure and may run on a worker thread; ``adopt`` swaps the result in.
    A revoked site needs no rebuild: ``mask`` takes it out of every view at once, which keeps
    revocation fan-out fast; new or changed sites and new policy versions make the compiled
    policy ``stale`` and call for a rebuild. ``advance`` opens and closes time windows.
    """

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self.version = 0
        self._compiler: PolicyCompiler | None = None
        self._terms: dict[str, SiteTerms] = {}  # of the sites compiled
        self._removed: frozenset[str] = frozenset()  # identities compiled but revoked since
        self._chunks: dict[str, list[tuple[str, bytes]]] = {}  # site -> (peer, its encoded policy)
        self._encoded: dict[str, bytes] = {}  # site -> view_bytes, as masked now
        self._writer = ProtoWriter()
        # Encoded (site, peer) policies by value, kept across rebuilds: an apply that changes a
        # few pairs re-encodes those few.
        self._peer_encodings: dict[PeerView, bytes] = {}

    @property
    def ready(self) -> bool:
        return self._compiler is not None

    def stale(self, inputs: MapInputs) -> bool:
        """Whether ``inputs`` hold another policy version, or a site the compiled policy has not
        seen as it is now (revocations alone are masked, not stale)."""
        if self._compiler is None or _version(inputs) != self.version:
            return True
        return any(self._terms.get(name) != terms for name, terms in _site_terms(inputs.sites).items())

    def mask(self, inputs: MapInputs) -> None:
        """Take sites revoked since the build out of every view."""
        live = _site_terms(inputs.sites)
        removed = frozenset(
            Identity.site(self.trust_domain, name).uri for name in self._terms if name not in live
        )
        if removed != self._removed:
            self._removed = removed
            self._encoded.clear()

    def build(self, inputs: MapInputs, now: dt.datetime) -> PolicyCompiler:
        """Compile the stored policy for the stored sites, with every view (no shared state)."""
        compiler = PolicyCompiler(
            self._parse(inputs.policy), inventory_of(inputs.sites, self.trust_domain), now
        )
        compiler.views()
        return compiler

    def adopt(self, compiler: PolicyCompiler, inputs: MapInputs, *, version: int | None = None) -> bool:
        """Take ``compiler`` (built from ``inputs``, or from them and policy ``version``) unless it
        holds an older policy than the running one; True if taken."""
        version = _version(inputs) if version is None else version
        if self._compiler is not None and version < self.version:
            return False
        self._compiler = compiler
        self.version = version
        self._terms = _site_terms(inputs.sites)
        self._removed = frozenset()
        self._chunks.clear()
        self._encoded.clear()
        self._writer = ProtoWriter()
        if len(self._peer_encodings) > MAX_CACHED_PEER_POLICIES:
            self._peer_encodings.clear()
        return True

    def advance(self, now: dt.datetime) -> None:
        """Windows that opened or closed by ``now`` take effect."""
        if self._compiler is not None:
            for identity in self._compiler.advance(now):
                name = Identity.parse(identity).name
                self._chunks.pop(name, None)
                self._encoded.pop(name, None)

    def _parse(self, record: PolicyRecord | None) -> Policy:
        if record is None:
            return NO_POLICY
        try:
            return parse_policy(record.yaml)
        except PolicyInvalid as e:  # stored by an older Trellis whose language differed
            log.error("stored policy version %d no longer parses (%s): denying everything", record.version, e)
            return NO_POLICY

    def views(self) -> dict[str, View]:
        return self._compiler.views() if self._compiler else {}

    def _view(self, name: str) -> View | None:
        if self._compiler is None:
            return None
        try:
            return self._compiler.view(Identity.site(self.trust_domain, name).uri)
        except UnknownSite:  # a site added since the last build: nothing allowed until the next one
            return None

    def peers_of(self, name: str) -> frozenset[str]:
        view = self._view(name)
        if view is None:
            return frozenset()
        return frozenset(p.identity for p in view.peers if p.identity not in self._removed)

    def view_bytes(self, name: str) -> bytes:
        """The site's PolicyView encoded without its policy_version (maps add it)."""
        cached = self._encoded.get(name)
        if cached is not None:
            return cached
        view = self._view(name)
        if view is None:
            return b""
        chunks = self._chunks.get(name)
        if chunks is None:
            chunks = self._chunks[name] = [(peer.identity, self._peer_bytes(peer)) for peer in view.peers]
        parts = [chunk for identity, chunk in chunks if identity not in self._removed]
        if view.next_change is not None:
            stamp = timestamp(view.next_change).SerializeToString()
            parts.append(mapwire.length_delimited(mapwire.NEXT_CHANGE, stamp))
        encoded = self._encoded[name] = b"".join(parts)
        return encoded

    def _peer_bytes(self, peer: PeerView) -> bytes:
        cached = self._peer_encodings.get(peer)
        if cached is None:
            encoded = self._writer.peer_policy(peer).SerializeToString()
            cached = self._peer_encodings[peer] = mapwire.length_delimited(mapwire.POLICY_PEERS, encoded)
        return cached

    def next_change(self) -> dt.datetime | None:
        return self._compiler.next_change() if self._compiler else None


def _version(inputs: MapInputs) -> int:
    return inputs.policy.version if inputs.policy else 0


class NextChangeTimer:
    """Wakes the maps when a time window opens or closes, so expiry reaches live tunnels without
    anyone touching the policy."""

    def __init__(self, clock: Callable[[], dt.datetime], wake: Callable[[], None]) -> None:
        self._clock = clock
        self._wake = wake
        self._handle: asyncio.TimerHandle | None = None
        self._at: dt.datetime | None = None

    def schedule(self, at: dt.datetime | None) -> None:
        if at == self._at and self._handle is not None:
            return
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = at
        if at is None:
            return
        delay = max(0.0, (at - self._clock()).total_seconds())
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._at = None
        self._wake()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None


def policy_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_policy_text(text: str) -> None:
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise InvalidArgument(f"policy larger than {MAX_POLICY_BYTES} bytes")
    if not text.strip():
        raise InvalidArgument("empty policy")


def check_comment(comment: str) -> None:
    if len(comment) > MAX_COMMENT_CHARS:
        raise InvalidArgument(f"comment longer than {MAX_COMMENT_CHARS} characters")


def version_info(record: PolicyRecord) -> policy_pb2.PolicyVersionInfo:
    return policy_pb2.PolicyVersionInfo(
        version=record.version,
        applied_at=timestamp(record.applied_at),
        applied_by=record.applied_by,
        comment=record.comment,
        sha256=record.sha256,
        rolled_back_from=record.rolled_back_from or 0,
    )


def decide(
    record: PolicyRecord | None,
    inputs: MapInputs,
    trust_domain: str,
    request: policy_pb2.CheckPolicyRequest,
    now: dt.datetime,
) -> policy_pb2.CheckPolicyResponse:
    """Answer one CheckPolicy request against a stored policy version (None: no policy)."""
    policy = parse_policy(record.yaml) if record else NO_POLICY
    at = request.at.ToDatetime(tzinfo=dt.UTC) if request.HasField("at") else now
    try:
        decision = check(
            policy,
            inventory_of(inputs.sites, trust_domain),
            source=getattr(request, "from"),  # a Python keyword as a field name
            destination=request.to,
            protocol=request.protocol,
            port=request.port or None,
            at=at,
            src_address=request.src_address or None,
            dst_address=request.dst_address or None,
        )
    except UnknownSite as e:
        raise NotFound(str(e)) from None
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    return decision_to_proto(decision, version=record.version if record else 0)
