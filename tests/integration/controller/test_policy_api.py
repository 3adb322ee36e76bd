"""Policy through the controller: apply, refuse, dry run, rollback, check, and what reaches agents
(only the views that changed, within a second; windows that close by themselves)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from tests.support.controlplane import Agent, Controller, MovableClock, enroll_agent, start_agent
from trellis.agent.control.client import ConnectionState
from trellis.controller.ca import CertificateAuthority
from trellis.controller.policy_admin import MAX_REPORTED_CHANGES
from trellis.v1 import common_pb2, policy_pb2, policy_pb2_grpc

A, B, C = (f"spiffe://example.org/site/{n}" for n in "abc")

A_B = """\
apiVersion: trellis/v1
kind: Policy
rules:
  - name: a-to-b
    from: a
    to: b
    ports: [tcp/443]
tests:
  - {from: a, to: b, proto: tcp, port: 443, expect: allow}
"""

A_B_AND_C_A = A_B.replace("tests:", "  - name: c-to-a\n    from: c\n    to: a\n    ports: [icmp]\ntests:")

FAILING_TEST = A_B.replace("expect: allow", "expect: deny")


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    clock = MovableClock()
    authority = CertificateAuthority.create("example.org", now=clock())
    running = Controller(authority=authority, store_url=f"sqlite:///{tmp_path / 'c.db'}", clock=clock)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def agents(controller: Controller, tmp_path: Path) -> AsyncIterator[dict[str, Agent]]:
    started = {}
    for i, name in enumerate("abc"):
        token = await controller.add_site(name, f"10.{i + 1}.0.0/24")
        started[name] = start_agent(await enroll_agent(controller, tmp_path / name, token))
    for agent in started.values():
        await agent.wait_state(ConnectionState.CONNECTED)
    for agent in started.values():  # settled: each has heard its own reported endpoint back
        await until(agent, lambda m: bool(m.self.endpoints), timeout=5)
    drain(started)
    yield started
    for agent in started.values():
        await agent.shutdown()


def drain(agents: dict[str, Agent]) -> None:
    for agent in agents.values():
        while not agent.maps.empty():
            agent.maps.get_nowait()


async def until(
    agent: Agent, predicate: Callable[[common_pb2.NetworkMap], bool], timeout: float = 1.0
) -> common_pb2.NetworkMap:
    """The first map (queued or arriving within ``timeout``) for which ``predicate`` holds."""

    async def read() -> common_pb2.NetworkMap:
        while True:
            network_map = await agent.maps.get()
            if predicate(network_map):
                return network_map

    return await asyncio.wait_for(read(), timeout)


def version(n: int) -> Callable[[common_pb2.NetworkMap], bool]:
    return lambda network_map: network_map.policy.policy_version == n


async def policy_call(controller: Controller, method: str, request: Message) -> Any:
    async with controller.admin_channel() as channel:
        return await getattr(policy_pb2_grpc.PolicyAdminStub(channel), method)(request)


def check_request(source: str, destination: str, protocol: str, port: int) -> policy_pb2.CheckPolicyRequest:
    request = policy_pb2.CheckPolicyRequest(to=destination, protocol=protocol, port=port)
    setattr(request, "from", source)  # a Python keyword as a field name
    return request


def peers(network_map: common_pb2.NetworkMap) -> dict[str, common_pb2.PeerPolicy]:
    return {p.identity: p for p in network_map.policy.peers}


async def test_before_any_policy_nothing_is_allowed(agents: dict[str, Agent]) -> None:
    network_map = agents["a"].client.network_map
    assert network_map is not None
    assert list(network_map.peers) == [] and list(network_map.policy.peers) == []


async def test_apply_pushes_only_the_views_that_changed_within_a_second(
    controller: Controller, agents: dict[str, Agent]
) -> None:
    drain(agents)
    response = await controller.apply_policy(A_B)
    assert response.applied and response.version == 1 and response.affected_sites == 2
    first_a, first_b = await asyncio.gather(until(agents["a"], version(1)), until(agents["b"], version(1)))
    assert [p.name for p in first_a.peers] == ["b"] and [p.name for p in first_b.peers] == ["a"]
    outbound = peers(first_a)[B].outbound
    assert [(r.protocol, r.port_start, r.port_end) for r in outbound] == [(6, 443, 443)]
    assert list(peers(first_b)[A].inbound)  # b accepts what a opens
    assert first_a.policy.policy_version == 1
    assert agents["c"].maps.empty()

    drain(agents)
    started = asyncio.get_running_loop().time()
    response = await controller.apply_policy(A_B_AND_C_A)
    assert response.applied and response.affected_sites == 2
    second_a, second_c = await asyncio.gather(until(agents["a"], version(2)), until(agents["c"], version(2)))
    assert asyncio.get_running_loop().time() - started < 1.0
    assert {p.name for p in second_a.peers} == {"b", "c"} and [p.name for p in second_c.peers] == ["a"]
    await asyncio.sleep(0.5)
    assert agents["b"].maps.empty(), "b's view did not change: it must not be sent again"


async def test_a_refused_policy_never_replaces_the_running_one(
    controller: Controller, agents: dict[str, Agent]
) -> None:
    assert (await controller.apply_policy(A_B)).applied
    await until(agents["a"], version(1))
    await until(agents["b"], version(1))
    drain(agents)
    refused = await controller.apply_policy(FAILING_TEST)
    assert not refused.applied and refused.version == 1
    assert [t.passed for t in refused.tests] == [False]
    assert (
        "expected deny, but rule 'a-to-b' (line 4, column 5) allows a -> b tcp/443"
        in refused.tests[0].message
    )
    broken = await controller.apply_policy("apiVersion: trellis/v1\nkind: Policy\nrules:\n  - from: a\n")
    assert not broken.applied
    assert next(i.line for i in broken.issues if not i.warning) == 4
    await asyncio.sleep(0.3)
    assert all(agent.maps.empty() for agent in agents.values())
    history = await policy_call(controller, "ListPolicyVersions", policy_pb2.ListPolicyVersionsRequest())
    assert [v.version for v in history.versions] == [1]
    refusals = [e for e in await controller.audit() if e.action == "policy.apply" and e.outcome == "refused"]
    assert len(refusals) == 2


async def test_dry_run_shows_changes_and_changes_nothing(
    controller: Controller, agents: dict[str, Agent]
) -> None:
    drain(agents)
    dry = await controller.apply_policy(A_B, dry_run=True)
    assert not dry.applied and dry.affected_sites == 2
    kinds = {(c.from_identity, c.to_identity, c.kind) for c in dry.changes}
    assert (A, B, policy_pb2.AccessChange.KIND_GAINED) in kinds
    await asyncio.sleep(0.3)
    assert all(agent.maps.empty() for agent in agents.values())


async def test_rollback_applies_an_old_version_as_a_new_one(
    controller: Controller, agents: dict[str, Agent]
) -> None:
    assert (await controller.apply_policy(A_B)).applied
    assert (await controller.apply_policy(A_B_AND_C_A)).applied
    await until(agents["c"], version(2))
    response = await policy_call(controller, "RollbackPolicy", policy_pb2.RollbackPolicyRequest(version=1))
    assert response.applied and response.version == 3
    network_map = await until(agents["c"], version(3))
    assert list(network_map.peers) == []
    document = await policy_call(controller, "GetPolicy", policy_pb2.GetPolicyRequest())
    assert document.yaml == A_B and document.info.rolled_back_from == 1
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await policy_call(controller, "RollbackPolicy", policy_pb2.RollbackPolicyRequest(version=9))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_applies_are_caught(controller: Controller, agents: dict[str, Agent]) -> None:
    assert (await controller.apply_policy(A_B)).applied
    stale = policy_pb2.ApplyPolicyRequest(yaml=A_B_AND_C_A, expected_version=7)
    with pytest.raises(grpc.aio.AioRpcError) as conflict:
        await policy_call(controller, "ApplyPolicy", stale)
    assert conflict.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "running policy is version 1, not 7" in (conflict.value.details() or "")


async def test_check_answers_with_the_deciding_rule(controller: Controller, agents: dict[str, Agent]) -> None:
    assert (await controller.apply_policy(A_B)).applied
    allow = await policy_call(controller, "CheckPolicy", check_request("a", "b", "tcp", 443))
    assert allow.allowed and allow.rule == "a-to-b" and allow.version == 1
    deny = await policy_call(controller, "CheckPolicy", check_request("b", "a", "tcp", 443))
    assert not deny.allowed and deny.rule == ""
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await policy_call(controller, "CheckPolicy", check_request("a", "zz", "tcp", 1))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as no_port:
        await policy_call(controller, "CheckPolicy", check_request("a", "b", "tcp", 0))
    assert no_port.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_window_that_closes_reaches_agents_by_itself(
    controller: Controller, agents: dict[str, Agent]
) -> None:
    closes = (controller.clock() + dt.timedelta(seconds=2)).replace(microsecond=0) + dt.timedelta(seconds=1)
    text = A_B.replace("    ports: [tcp/443]", f"    ports: [tcp/443]\n    not_after: {closes.isoformat()}")
    assert (await controller.apply_policy(text)).applied
    opened = await until(agents["a"], version(1))
    rule = peers(opened)[B].outbound[0]
    assert rule.expires_at.ToDatetime(tzinfo=dt.UTC) == closes  # agents can expire it on their own too
    closed = await until(agents["a"], lambda m: not m.policy.peers, timeout=6.0)  # nobody touches the policy
    assert controller.clock() >= closes
    assert list(closed.peers) == [] and list(closed.policy.peers) == []
    assert (controller.clock() - closes).total_seconds() < 1.0


async def test_policy_api_refuses_site_certificates(controller: Controller, tmp_path: Path) -> None:
    from tests.integration.controller.test_control_plane import agent_channel

    await enroll_agent(controller, tmp_path / "x", await controller.add_site("x", "10.9.0.0/24"))
    async with agent_channel(tmp_path / "x", controller.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await policy_pb2_grpc.PolicyAdminStub(channel).ApplyPolicy(
                policy_pb2.ApplyPolicyRequest(yaml=A_B)
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_mesh_wide_change_is_summarised_not_listed_in_full(controller: Controller) -> None:
    for i in range(50):
        await controller.add_site(f"s{i:02d}", f"10.{i}.0.0/24")
    everyone = 'apiVersion: trellis/v1\nkind: Policy\nrules:\n  - {name: all, from: "*", to: "*"}\n'
    dry = await controller.apply_policy(everyone, dry_run=True)
    assert dry.affected_sites == 50
    assert len(dry.changes) == MAX_REPORTED_CHANGES
    # 49 changes (one per peer) for each site listed: 20 sites whole, the 21st in part.
    assert dry.sites_not_listed == 50 - 20
    assert {c.from_identity for c in dry.changes} == {
        f"spiffe://example.org/site/s{i:02d}" for i in range(21)
    }
