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
from trellis.controller.policy.wire import decision_to_proto, view_to_proto
from trellis.controller.store import MapInputs, PolicyRecord, SiteRecord
from trellis.v1 import common_pb2, policy_pb2
from trellis.v1.identity import Identity

log = logging.getLogger(__name__)

# Before anyone applies a policy, nothing is allowed (default deny).
NO_POLICY = parse_policy("apiVersion: trellis/v1\nkind: Policy\nrules: []\n")
MAX_COMMENT_CHARS = 500


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


def _inventory_key(
    sites: tuple[SiteRecord, ...],
) -> tuple[tuple[str, tuple[tuple[str, str], ...], tuple[str, ...]], ...]:
    return tuple((s.name, s.labels, s.subnets) for s in sites if not s.revoked)


class RunningPolicy:
    """The running policy compiled for every live site, updated incrementally.

    ``sync`` brings it to a store snapshot and the current time; ``view_for`` answers per site;
    ``next_change`` says when time alone will change some view.
    """

    def __init__(self, trust_domain: str) -> None:
        self.trust_domain = trust_domain
        self.version = 0
        self._compiler: PolicyCompiler | None = None
        self._inventory_key: object = None
        self._protos: dict[str, common_pb2.PolicyView] = {}

    @property
    def compiler(self) -> PolicyCompiler | None:
        return self._compiler

    def sync(self, inputs: MapInputs, now: dt.datetime) -> None:
        key = _inventory_key(inputs.sites)
        record = inputs.policy
        version = record.version if record else 0
        if self._compiler is None:
            self._compiler = PolicyCompiler(
                self._parse(record), inventory_of(inputs.sites, self.trust_domain), now
            )
            self._adopted(version, key)
            return
        changed: set[str] = set()
        if version != self.version:
            changed |= self._compiler.update_policy(self._parse(record))
        if key != self._inventory_key:
            changed |= self._compiler.update_inventory(inventory_of(inputs.sites, self.trust_domain))
        changed |= self._compiler.advance(now)
        if version != self.version or key != self._inventory_key:
            self._adopted(version, key)
        else:
            for identity in changed:
                self._protos.pop(identity, None)

    def adopt(self, compiler: PolicyCompiler, version: int, inputs: MapInputs) -> None:
        """Take over a compiler built while reviewing the policy that was just applied."""
        self._compiler = compiler
        self._adopted(version, _inventory_key(inputs.sites))

    def _adopted(self, version: int, key: object) -> None:
        self.version = version
        self._inventory_key = key
        self._protos.clear()

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

    def view_for(self, name: str) -> common_pb2.PolicyView:
        identity = Identity.site(self.trust_domain, name).uri
        cached = self._protos.get(identity)
        if cached is None:
            if self._compiler is None:
                return common_pb2.PolicyView(policy_version=self.version)
            try:
                view = self._compiler.view(identity)
            except UnknownSite:
                return common_pb2.PolicyView(policy_version=self.version)
            cached = self._protos[identity] = view_to_proto(view, policy_version=self.version)
        return cached

    def next_change(self) -> dt.datetime | None:
        return self._compiler.next_change() if self._compiler else None


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
