"""The administrator's policy operations: apply (with dry run), rollback, show, history, check.

Every version is stored and audited. A policy with errors or failing tests of its own is refused
and never replaces the running one; the answer then says why, line by line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

from trellis.controller.errors import FailedPrecondition, InvalidArgument, NotFound
from trellis.controller.policies import (
    check_comment,
    check_policy_text,
    decide,
    inventory_of,
    policy_sha256,
    version_info,
)
from trellis.controller.policy import (
    AccessChange,
    Inventory,
    Review,
    View,
    changed_identities,
    diff_views,
    review_policy,
)
from trellis.controller.policy.wire import review_to_proto
from trellis.controller.service import Caller, ControllerService
from trellis.controller.store import AuditEvent, PolicyConflict, Store
from trellis.v1 import policy_pb2

MAX_HISTORY_PAGE = 200
MAX_REPORTED_CHANGES = 1000  # access changes listed in an answer (see _review)


class PolicyAdministration:
    def __init__(self, service: ControllerService) -> None:
        self.service = service

    async def apply(
        self,
        caller: Caller,
        text: str,
        *,
        dry_run: bool,
        comment: str,
        expected_version: int | None,
        rolled_back_from: int | None = None,
    ) -> policy_pb2.ApplyPolicyResponse:
        service = self.service
        action = "policy.rollback" if rolled_back_from else "policy.apply"
        async with service.refusals_audited(caller, action, ""):
            check_policy_text(text)
            check_comment(comment)
            now = service.clock()
            inputs = await service.store.call(Store.map_inputs, now=now)
            running = service.policy
            current = (
                running.views()
                if running.version == (inputs.policy.version if inputs.policy else 0)
                else None
            )
            # Compiling a big mesh takes a while: off the event loop, so streams and calls go on.
            review, affected, not_listed = await asyncio.to_thread(
                _review, text, inventory_of(inputs.sites, service.trust_domain), now, current
            )
            version_now = inputs.policy.version if inputs.policy else 0
            if not review.accepted:
                errors, failed = len(review.errors), len(review.failed_tests)
                first = review.errors[0].message if review.errors else review.failed_tests[0].message
                await service.audit(
                    caller.actor, action, "", "refused", f"{errors} errors, {failed} failed tests: {first}"
                )
                return _answer(review, applied=False, version=version_now, affected_sites=0, not_listed=0)
            assert review.compiler is not None  # accepted reviews carry their compiler
            if dry_run:
                await service.audit(
                    caller.actor, "policy.dry-run", "", "ok", f"{affected} sites would change"
                )
                return _answer(
                    review, applied=False, version=version_now, affected_sites=affected, not_listed=not_listed
                )
            sha = policy_sha256(text)
            detail = f"sha256 {sha[:12]}; {affected} sites changed" + (f"; {comment}" if comment else "")
            if rolled_back_from:
                detail = f"re-applies version {rolled_back_from}; " + detail
            try:
                record = await service.store.call(
                    Store.add_policy,
                    yaml=text,
                    sha256=sha,
                    applied_by=caller.actor,
                    comment=comment,
                    rolled_back_from=rolled_back_from,
                    expected_version=expected_version,
                    now=now,
                    audit=AuditEvent(
                        actor=caller.actor, action=action, target="", outcome="ok", detail=detail
                    ),
                )
            except PolicyConflict as e:
                raise FailedPrecondition(str(e)) from None
        running.adopt(review.compiler, inputs, version=record.version)
        service.hub.invalidate()
        await service.hub.refresh()
        return _answer(
            review, applied=True, version=record.version, affected_sites=affected, not_listed=not_listed
        )

    async def rollback(
        self, caller: Caller, version: int, *, dry_run: bool, comment: str
    ) -> policy_pb2.ApplyPolicyResponse:
        async with self.service.refusals_audited(caller, "policy.rollback", f"version {version}"):
            if version <= 0:
                raise InvalidArgument("give the version to roll back to (see trellisctl policy history)")
            record = await self.service.store.call(Store.get_policy, version)
            if record is None:
                raise NotFound(f"no policy version {version}")
        return await self.apply(
            caller,
            record.yaml,
            dry_run=dry_run,
            comment=comment or f"rollback to version {version}",
            expected_version=None,
            rolled_back_from=version,
        )

    async def show(self, caller: Caller, version: int) -> policy_pb2.PolicyDocument:
        async with self.service.refusals_audited(caller, "policy.show", f"version {version or 'running'}"):
            record = await self.service.store.call(Store.get_policy, version or None)
            if record is None:
                raise NotFound(f"no policy version {version}" if version else "no policy applied yet")
        await self.service.audit(caller.actor, "policy.show", f"version {record.version}", "ok")
        return policy_pb2.PolicyDocument(info=version_info(record), yaml=record.yaml)

    async def history(
        self, caller: Caller, *, limit: int, before: int
    ) -> policy_pb2.ListPolicyVersionsResponse:
        await self.service.audit(caller.actor, "policy.history", "", "ok")
        records = await self.service.store.call(
            Store.list_policies, limit=min(limit or 50, MAX_HISTORY_PAGE), before_version=before
        )
        return policy_pb2.ListPolicyVersionsResponse(versions=[version_info(r) for r in records])

    async def check(
        self, caller: Caller, request: policy_pb2.CheckPolicyRequest
    ) -> policy_pb2.CheckPolicyResponse:
        service = self.service
        flow = f"{getattr(request, 'from')} -> {request.to} {request.protocol}/{request.port or '-'}"
        async with service.refusals_audited(caller, "policy.check", flow):
            now = service.clock()
            inputs = await service.store.call(Store.map_inputs, now=now)
            record = inputs.policy
            if request.version:
                record = await service.store.call(Store.get_policy, request.version)
                if record is None:
                    raise NotFound(f"no policy version {request.version}")
            if not request.protocol:
                raise InvalidArgument("give a protocol: tcp, udp, icmp or a number 0-255")
            answer = decide(record, inputs, service.trust_domain, request, now)
        await service.audit(caller.actor, "policy.check", flow, "ok", "allow" if answer.allowed else "deny")
        return answer


def _answer(
    review: Review, *, applied: bool, version: int, affected_sites: int, not_listed: int
) -> policy_pb2.ApplyPolicyResponse:
    answer = review_to_proto(review, applied=applied, version=version, affected_sites=affected_sites)
    answer.sites_not_listed = not_listed
    return answer


def _review(
    text: str, inventory: Inventory, now: dt.datetime, current: dict[str, View] | None
) -> tuple[Review, int, int]:
    """The review with every view of an accepted policy compiled; how many sites it changes; and
    how many of those the listed changes leave out (the list stops near MAX_REPORTED_CHANGES:
    a policy opening a 500-site mesh changes 250,000 pairs, too many to diff on every apply or
    to send back)."""
    review = review_policy(text, inventory, now, current=current, with_changes=False)
    if not review.accepted or review.compiler is None:
        return review, 0, 0
    old, new = current or {}, review.compiler.views()
    changed = sorted(changed_identities(old, new))
    changes: list[AccessChange] = []
    listed = 0
    for identity in changed:
        if len(changes) >= MAX_REPORTED_CHANGES:
            break
        before = {identity: old[identity]} if identity in old else {}
        after = {identity: new[identity]} if identity in new else {}
        changes += diff_views(before, after)
        listed += 1
    truncated = len(changes) > MAX_REPORTED_CHANGES
    review = dataclasses.replace(review, changes=tuple(changes[:MAX_REPORTED_CHANGES]))
    return review, len(changed), len(changed) - listed + (1 if truncated else 0)
