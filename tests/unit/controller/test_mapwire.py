"""Maps assembled from pre-encoded pieces read back, with the protobuf library, as the same
NetworkMap that building it field by field gives."""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from trellis.controller import mapwire
from trellis.controller.maps import MapSnapshot, peer_message, site_identity
from trellis.controller.policies import RunningPolicy
from trellis.controller.policy.wire import view_to_proto
from trellis.controller.store import EndpointRecord, MapInputs, PolicyRecord, SiteRecord
from trellis.v1 import common_pb2

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
POLICY = """\
apiVersion: trellis/v1
kind: Policy
rules:
  - {name: web, from: {role: branch}, to: {role: dc}, ports: [tcp/443], not_after: 2026-11-27T00:00:00Z}
  - {name: ping, from: "*", to: "*", ports: [icmp]}
"""


def site(name: str, index: int, role: str, *, revoked: bool = False) -> SiteRecord:
    return SiteRecord(
        name=name,
        created_at=NOW,
        labels=(("role", role),),
        subnets=(f"10.{index}.0.0/24",),
        revoked_at=NOW if revoked else None,
        revoke_reason="",
        endpoints=(EndpointRecord(address=f"192.0.2.{index}", port=500),),
        agent_version="0.1",
        applied_map_version=0,
        last_seen=None,
    )


def inputs() -> MapInputs:
    sites = (
        site("dc", 1, "dc"),
        site("a", 2, "branch"),
        site("b", 3, "branch"),
        site("gone", 4, "branch", revoked=True),
    )
    record = PolicyRecord(
        version=7,
        applied_at=NOW,
        applied_by="admin",
        comment="",
        sha256="",
        yaml=POLICY,
        rolled_back_from=None,
    )
    return MapInputs(generation=42, sites=sites, revoked_serials=("beef",), policy=record)


def test_the_assembled_map_is_the_map_protobuf_builds() -> None:
    policy = RunningPolicy("example.org")
    snapshot_inputs = inputs()
    policy.adopt(policy.build(snapshot_inputs, NOW), snapshot_inputs)
    snapshot = MapSnapshot(
        inputs=snapshot_inputs, trust_domain="example.org", ca_bundle_der=(b"ca1", b"ca2"), policy=policy
    )
    stamp = Timestamp(seconds=1_800_000_000)
    parsed = common_pb2.NetworkMap.FromString(
        snapshot.encoded_map_for("a").encode(version=42, generated_at=stamp, policy_version=7)
    )

    compiler = policy.build(snapshot_inputs, NOW)
    view = view_to_proto(compiler.view(site_identity("example.org", "a")), policy_version=7)
    by_name = {s.name: s for s in snapshot_inputs.sites}
    expected = common_pb2.NetworkMap(
        version=42,
        generated_at=stamp,
        trust_domain="example.org",
        self=peer_message(by_name["a"], "example.org"),
        peers=[peer_message(by_name[n], "example.org") for n in ("dc", "b")],
        revoked_identities=[site_identity("example.org", "gone")],
        revoked_serials=["beef"],
        ca_bundle_der=[b"ca1", b"ca2"],
        policy=view,
    )
    assert parsed == expected
    assert parsed.policy.peers  # the comparison is not vacuous
    assert parsed.policy.HasField("next_change")  # the web rule ends at midnight


def test_a_site_without_peers_gets_an_empty_view() -> None:
    policy = RunningPolicy("example.org")
    bare = MapInputs(generation=1, sites=(site("a", 2, "branch"),), revoked_serials=(), policy=None)
    policy.adopt(policy.build(bare, NOW), bare)
    snapshot = MapSnapshot(inputs=bare, trust_domain="example.org", ca_bundle_der=(b"ca",), policy=policy)
    parsed = common_pb2.NetworkMap.FromString(
        snapshot.encoded_map_for("a").encode(version=1, generated_at=Timestamp(), policy_version=0)
    )
    assert parsed.HasField("policy") and not parsed.policy.peers and not parsed.peers


@given(st.integers(min_value=1, max_value=2**64 - 1))
def test_varint_fields_are_what_protobuf_writes(value: int) -> None:
    assert (
        mapwire.varint_field(mapwire.VERSION, value)
        == common_pb2.NetworkMap(version=value).SerializeToString()
    )


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=1, max_value=2**29 - 1))
def test_varint_fields_read_back(value: int, number: int) -> None:
    key, rest = _read_varint(mapwire.varint_field(number, value))
    assert key == number << 3 and _read_varint(rest) == (value, b"")


def _read_varint(data: bytes) -> tuple[int, bytes]:
    value = shift = 0
    for i, byte in enumerate(data):
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, data[i + 1 :]
    raise AssertionError("truncated varint")
