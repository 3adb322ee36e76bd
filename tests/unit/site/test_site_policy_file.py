"""``policy_view: FILE`` in the static site configuration: binary or JSON PolicyView, checked as
the filter will enforce it, re-read on reload (a bad file changes nothing), shown in the status."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from google.protobuf import json_format

from trellis.agent.ikeconfig import ConfigError
from trellis.agent.site.config import Backend, parse_site_config
from trellis.agent.site.policyfile import load_policy_view, parse_policy_view
from trellis.agent.site.static import StaticSite
from trellis.agent.site.status import render_site_status
from trellis.controller.policy import Inventory, Site, compile_view, parse_policy
from trellis.controller.policy.wire import view_to_proto
from trellis.v1 import common_pb2

SITE = """
policy_view: {policy_view}
dataplane: {{backend: none}}
peers:
  - name: hq
    address: 192.0.2.9
    auth: {{psk: "a pre-shared key, long enough"}}
    local_id: branch.example
    remote_id: hq.example
    children:
      - {{name: lan, local_ts: [10.1.0.0/24], remote_ts: [10.2.0.0/24]}}
"""
POLICY = """
apiVersion: trellis/v1
kind: Policy
rules:
  - {name: branch-to-hq, from: branch, to: hq, ports: [tcp/443, icmp]}
"""


def compiled(version: int, text: str = POLICY) -> common_pb2.PolicyView:
    inventory = Inventory(
        [
            Site.build(name="branch", identity="spiffe://corp.example/site/branch", subnets=["10.1.0.0/24"]),
            Site.build(name="hq", identity="spiffe://corp.example/site/hq", subnets=["10.2.0.0/24"]),
        ]
    )
    view = compile_view(parse_policy(text), inventory, "branch", dt.datetime.now(dt.UTC))
    return view_to_proto(view, policy_version=version)


def test_the_path_is_relative_to_the_configuration(tmp_path: Path) -> None:
    config = parse_site_config(SITE.format(policy_view="views/branch.binpb"), base=tmp_path)
    assert config.policy_view == tmp_path / "views" / "branch.binpb"
    assert config.dataplane.backend is Backend.NONE
    assert parse_site_config(SITE.format(policy_view="/etc/v.json"), base=tmp_path).policy_view == Path(
        "/etc/v.json"
    )
    assert parse_site_config(SITE.format(policy_view="null"), base=tmp_path).policy_view is None
    with pytest.raises(ConfigError, match=r"^policy_view: expected a file name"):
        parse_site_config(SITE.format(policy_view="[a, b]"), base=tmp_path)


def test_binary_and_json_views_load_alike(tmp_path: Path) -> None:
    view = compiled(7)
    (tmp_path / "v.binpb").write_bytes(view.SerializeToString())
    (tmp_path / "v.json").write_text("\n  " + json_format.MessageToJson(view))
    assert load_policy_view(tmp_path / "v.binpb") == view == load_policy_view(tmp_path / "v.json")
    assert view.peers[0].outbound[0].rule == "branch-to-hq"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"peers": [{"identity": "x", "outbound": [{"srcPrefixes": ["10.1.0.0/33"]}]}]}', "10.1.0.0/33"),
        (b'{"peers": 3}', "not a PolicyView"),
        (b"\xff\xff\xff\xff", "not a PolicyView"),
        (b'{"policyVersion": "1", "unknownField": 1}', "not a PolicyView"),
    ],
)
def test_bad_views_are_refused_with_the_reason(content: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_policy_view(content)


def test_reload_enforces_the_new_file_or_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "view.binpb"
    path.write_bytes(compiled(1).SerializeToString())
    site = StaticSite(parse_site_config(SITE.format(policy_view=path.name), base=tmp_path))

    async def scenario() -> None:
        assert await site.reload_policy()
        assert site.runtime.policy is not None and site.runtime.policy.policy_version == 1
        path.write_bytes(compiled(2, POLICY.replace("tcp/443", "tcp/8443")).SerializeToString())
        assert await site.reload_policy()
        assert site.runtime.policy.policy_version == 2
        path.write_text('{"peers": [{"identity": "x", "inbound": [{"protocol": 300}]}]}')
        assert not await site.reload_policy()  # refused: version 2 stays
        path.unlink()
        assert not await site.reload_policy()

    asyncio.run(scenario())
    document = site.runtime.snapshot()
    assert document["policy"] == {"version": 2, "peers": 1, "enforced": False, "applied_at": None}
    # with a data plane the status shows it; without one (IKE only) the view is kept, not enforced
    assert "policy:" not in render_site_status(document)
