"""The policy engine's values as trellis.v1 protobuf messages."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TypeVar, cast

from google.protobuf.timestamp_pb2 import Timestamp

from trellis.controller.policy.compiler import gc_paused
from trellis.controller.policy.decide import Decision, PolicyTestResult
from trellis.controller.policy.diff import AccessChange, ChangeKind
from trellis.controller.policy.errors import Issue
from trellis.controller.policy.model import IPNetwork
from trellis.controller.policy.review import Review
from trellis.controller.policy.view import FlowRule, PeerView, TrafficSelector, View
from trellis.v1 import common_pb2, policy_pb2


def timestamp(at: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at.astimezone(dt.UTC))
    return stamp


_T = TypeVar("_T")
_M = TypeVar("_M")


class ProtoWriter:
    """Writes views as protobuf, remembering the text of each prefix tuple it has written.

    Views share prefix tuples (every rule towards a site carries the same tuple of its subnets),
    and formatting an address is the slow part of the conversion; use one writer for a batch.
    """

    def __init__(self) -> None:
        self._texts: dict[int, tuple[tuple[IPNetwork, ...], list[str]]] = {}
        self._text_of: dict[int, tuple[IPNetwork, str]] = {}
        self._rules: dict[int, tuple[FlowRule, common_pb2.FilterRule]] = {}
        self._lists: dict[int, tuple[tuple[object, ...], list[object]]] = {}

    def _strings(self, prefixes: tuple[IPNetwork, ...]) -> list[str]:
        cached = self._texts.get(id(prefixes))
        if cached is not None and cached[0] is prefixes:  # the entry keeps the tuple alive
            return cached[1]
        texts = [str(p) for p in prefixes]
        self._texts[id(prefixes)] = (prefixes, texts)
        return texts

    def _text(self, prefix: IPNetwork) -> str:
        cached = self._text_of.get(id(prefix))
        if cached is not None and cached[0] is prefix:
            return cached[1]
        text = str(prefix)
        self._text_of[id(prefix)] = (prefix, text)
        return text

    def _selector(self, selector: TrafficSelector) -> common_pb2.TrafficSelector:
        return common_pb2.TrafficSelector(
            prefix=self._text(selector.prefix),
            protocol=selector.protocol,
            port_start=selector.port_start,
            port_end=selector.port_end,
        )

    def _filter_rule(self, rule: FlowRule) -> common_pb2.FilterRule:
        # Both ends of a pair carry the same FlowRule objects: build each message once.
        cached = self._rules.get(id(rule))
        if cached is not None and cached[0] is rule:
            return cached[1]
        message = common_pb2.FilterRule(
            rule=rule.rule,
            src_prefixes=self._strings(rule.src_prefixes),
            dst_prefixes=self._strings(rule.dst_prefixes),
            protocol=rule.protocol,
            port_start=rule.port_start,
            port_end=rule.port_end,
        )
        if rule.expires_at is not None:
            message.expires_at.CopyFrom(timestamp(rule.expires_at))
        self._rules[id(rule)] = (rule, message)
        return message

    def _list(self, items: tuple[_T, ...], convert: Callable[[_T], _M]) -> list[_M]:
        """Messages for a tuple of values; both ends of a pair (and a site towards similar peers)
        share these tuples, so each list is built once per batch."""
        cached = self._lists.get(id(items))
        if cached is not None and cached[0] is items:
            return cached[1]  # type: ignore[return-value]
        messages = [convert(item) for item in items]
        self._lists[id(items)] = (items, cast(list[object], messages))
        return messages

    def peer_policy(self, peer: PeerView) -> common_pb2.PeerPolicy:
        return common_pb2.PeerPolicy(
            identity=peer.identity,
            local_selectors=self._list(peer.local_selectors, self._selector),
            remote_selectors=self._list(peer.remote_selectors, self._selector),
            outbound=self._list(peer.outbound, self._filter_rule),
            inbound=self._list(peer.inbound, self._filter_rule),
            selectors_exact=peer.selectors_exact,
        )

    def view(self, view: View, *, policy_version: int) -> common_pb2.PolicyView:
        message = common_pb2.PolicyView(
            policy_version=policy_version, peers=[self.peer_policy(p) for p in view.peers]
        )
        if view.next_change is not None:
            message.next_change.CopyFrom(timestamp(view.next_change))
        return message


def peer_policy_to_proto(peer: PeerView) -> common_pb2.PeerPolicy:
    return ProtoWriter().peer_policy(peer)


def view_to_proto(view: View, *, policy_version: int) -> common_pb2.PolicyView:
    """The PolicyView to put in the site's NetworkMap."""
    return ProtoWriter().view(view, policy_version=policy_version)


def views_to_proto(views: Mapping[str, View], *, policy_version: int) -> dict[str, common_pb2.PolicyView]:
    """Many sites' PolicyViews at once (faster than one by one: prefix texts are shared)."""
    writer = ProtoWriter()
    with gc_paused():
        return {
            identity: writer.view(view, policy_version=policy_version) for identity, view in views.items()
        }


def issue_to_proto(issue: Issue) -> policy_pb2.PolicyIssue:
    return policy_pb2.PolicyIssue(
        line=issue.line, column=issue.column, path=issue.path, message=issue.message, warning=issue.warning
    )


def policy_test_result_to_proto(result: PolicyTestResult) -> policy_pb2.PolicyTestResult:
    decision = result.decision
    return policy_pb2.PolicyTestResult(
        index=result.index,
        line=result.mark.line,
        column=result.mark.column,
        flow=result.flow,
        passed=result.passed,
        expected_allow=result.expected_allow,
        allowed=decision is not None and decision.allowed,
        rule=(decision.rule or "") if decision is not None else "",
        message=result.message,
    )


_KINDS = {
    ChangeKind.GAINED: policy_pb2.AccessChange.KIND_GAINED,
    ChangeKind.LOST: policy_pb2.AccessChange.KIND_LOST,
    ChangeKind.CHANGED: policy_pb2.AccessChange.KIND_CHANGED,
}


def change_to_proto(change: AccessChange) -> policy_pb2.AccessChange:
    return policy_pb2.AccessChange(
        from_identity=change.source,
        to_identity=change.destination,
        kind=_KINDS[change.kind],
        added=list(change.added),
        removed=list(change.removed),
    )


def review_to_proto(
    review: Review, *, applied: bool, version: int, affected_sites: int
) -> policy_pb2.ApplyPolicyResponse:
    """The ApplyPolicy/RollbackPolicy answer; the caller says whether it applied and the version."""
    return policy_pb2.ApplyPolicyResponse(
        applied=applied,
        version=version,
        issues=[issue_to_proto(i) for i in (*review.errors, *review.warnings)],
        tests=[policy_test_result_to_proto(t) for t in review.tests],
        changes=[change_to_proto(c) for c in review.changes],
        affected_sites=affected_sites,
    )


def decision_to_proto(decision: Decision, *, version: int) -> policy_pb2.CheckPolicyResponse:
    return policy_pb2.CheckPolicyResponse(
        allowed=decision.allowed,
        rule=decision.rule or "",
        rule_line=decision.rule_mark.line if decision.rule_mark is not None else 0,
        reason=decision.reason,
        dst_prefixes=[str(p) for p in decision.dst_prefixes],
        version=version,
    )
