"""From a network map (with a policy view the real policy engine compiled) to IKE peers."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import serialization

from trellis.agent.mesh.plan import MESH_CHILD, MapError, initiator_of, plan_mesh
from trellis.controller.ca import CertificateAuthority
from trellis.controller.policy import Inventory, Site, compile_view, parse_policy
from trellis.controller.policy.wire import view_to_proto
from trellis.v1 import common_pb2
from trellis.v1.identity import Identity

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
CA = CertificateAuthority.create("example.org", now=NOW)
SUBNETS = {"a": "10.1.0.0/24", "b": "10.2.0.0/24", "c": "10.3.0.0/24"}
POLICY = """\
apiVersion: trellis/v1
kind: Policy
rules:
  - name: a-to-b
    from: a
    to: b
    ports: [tcp/443]
  - name: c-to-a
    from: c
    to: a
"""


def uri(name: str) -> str:
    return Identity.site("example.org", name).uri


def network_map(me: str, endpoints: dict[str, list[tuple[str, int]]]) -> common_pb2.NetworkMap:
    inventory = Inventory(Site.build(name=n, identity=uri(n), subnets=[s]) for n, s in SUBNETS.items())
    view = compile_view(parse_policy(POLICY), inventory, uri(me), NOW)

    def peer(name: str) -> common_pb2.Peer:
        return common_pb2.Peer(
            identity=uri(name),
            name=name,
            subnets=[SUBNETS[name]],
            endpoints=[common_pb2.Endpoint(address=a, port=p) for a, p in endpoints.get(name, [])],
        )

    return common_pb2.NetworkMap(
        version=1,
        trust_domain="example.org",
        self=peer(me),
        peers=[peer(n) for n in SUBNETS if n != me],
        ca_bundle_der=[CA.certificate.public_bytes(serialization.Encoding.DER)],
        policy=view_to_proto(view, policy_version=1),
    )


EVERYONE = {"a": [("192.0.2.1", 500)], "b": [("192.0.2.2", 500)], "c": [("192.0.2.3", 4500)]}


def test_each_allowed_peer_becomes_one_ike_peer_with_the_policy_selectors() -> None:
    plan = plan_mesh(network_map("a", EVERYONE), Identity.parse(uri("a")))
    by_name = {p.name: p for p in plan.peers}
    assert set(by_name) == {"b", "c"}
    to_b = by_name["b"]
    assert to_b.remote_host == "192.0.2.2" and to_b.remote_id == uri("b")
    (child,) = to_b.children
    assert child.name == MESH_CHILD
    # a may open tcp/443 towards b: the selectors say so exactly.
    assert [(str(t.start_address), str(t.end_address)) for t in child.local_ts] == [
        ("10.1.0.0", "10.1.0.255")
    ]
    remote = child.remote_ts[0]
    assert (str(remote.start_address), remote.ip_protocol, remote.start_port, remote.end_port) == (
        "10.2.0.0",
        6,
        443,
        443,
    )
    assert by_name["c"].remote_port == 4500
    assert plan.trust_anchors[0] == CA.certificate


def test_exactly_one_side_initiates() -> None:
    plans = {n: plan_mesh(network_map(n, EVERYONE), Identity.parse(uri(n))) for n in ("a", "b")}
    a_to_b = next(p for p in plans["a"].peers if p.name == "b")
    b_to_a = next(p for p in plans["b"].peers if p.name == "a")
    assert (a_to_b.initiate, b_to_a.initiate) == (True, False)
    # Without b's endpoint, a cannot reach it: b initiates instead.
    missing = {**EVERYONE, "b": []}
    plans = {n: plan_mesh(network_map(n, missing), Identity.parse(uri(n))) for n in ("a", "b")}
    a_to_b = next(p for p in plans["a"].peers if p.name == "b")
    b_to_a = next(p for p in plans["b"].peers if p.name == "a")
    assert (a_to_b.initiate, b_to_a.initiate) == (False, True)
    assert a_to_b.remote_host is None  # a answers b from wherever b comes


def test_initiator_choice_is_symmetric() -> None:
    a = common_pb2.Peer(identity=uri("a"), endpoints=[common_pb2.Endpoint(address="192.0.2.1", port=500)])
    b = common_pb2.Peer(identity=uri("b"))
    assert initiator_of(a, b) == initiator_of(b, a) == uri("b")
    assert initiator_of(common_pb2.Peer(identity=uri("a")), b) is None


def test_revoked_and_unknown_peers_are_left_out() -> None:
    m = network_map("a", EVERYONE)
    m.revoked_identities.append(uri("c"))
    m.revoked_serials.append("abc123")
    plan = plan_mesh(m, Identity.parse(uri("a")))
    assert [p.name for p in plan.peers] == ["b"]
    assert (
        plan.is_revoked(uri("c"), "1")
        and plan.is_revoked(None, "abc123")
        and not plan.is_revoked(uri("b"), "1")
    )


def test_without_policy_there_are_no_peers() -> None:
    m = network_map("a", EVERYONE)
    m.ClearField("policy")
    assert plan_mesh(m, Identity.parse(uri("a"))).peers == ()


def test_unusable_maps_are_refused() -> None:
    with pytest.raises(MapError, match=r"not spiffe://example\.org/site/b"):
        plan_mesh(network_map("a", EVERYONE), Identity.parse(uri("b")))
    m = network_map("a", EVERYONE)
    m.ClearField("ca_bundle_der")
    with pytest.raises(MapError, match="no CA bundle"):
        plan_mesh(m, Identity.parse(uri("a")))
    m = network_map("a", EVERYONE)
    m.policy.peers[0].remote_selectors[0].prefix = "not-a-prefix"
    plan = plan_mesh(m, Identity.parse(uri("a")))
    assert plan.skipped == ("b: invalid traffic selector prefix 'not-a-prefix'",)
    assert [p.name for p in plan.peers] == ["c"]  # the rest still plans
