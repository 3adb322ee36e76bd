"""The control plane over real gRPC and TLS on loopback: enrollment, renewal, refusals, revocation,
restart. Every refusal must also be in the audit log."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.controlplane import ALLOW_ALL, Controller, MovableClock, enroll_agent, start_agent
from tests.support.postgres import fresh_database
from trellis.agent.control.client import CHANNEL_OPTIONS, ConnectionState, ControlError
from trellis.agent.control.state import StateDir
from trellis.controller.ca import CertificateAuthority
from trellis.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc
from trellis.v1.csr import make_csr
from trellis.v1.identity import Identity
from trellis.v1.token import JoinToken


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    clock = MovableClock()
    authority = CertificateAuthority.create("example.org", now=clock())
    running = Controller(authority=authority, store_url=f"sqlite:///{tmp_path / 'c.db'}", clock=clock)
    await running.start()
    yield running
    await running.stop()


def refusals(entries: list[admin_pb2.AuditEntry], action: str) -> list[str]:
    return [e.detail for e in entries if e.action == action and e.outcome == "refused"]


def agent_channel(state_dir: Path, address: str) -> grpc.aio.Channel:
    identity = StateDir(state_dir).load_identity()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=identity.ca_pem,
        private_key=identity.key_pem,
        certificate_chain=identity.certificate_pem,
    )
    return grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)


async def test_enrollment_issues_a_short_lived_identity_and_a_map(
    controller: Controller, tmp_path: Path
) -> None:
    token = await controller.add_site("branch-a", "10.1.0.0/24", region="eu")
    client = await enroll_agent(controller, tmp_path / "a", token)

    key_file = tmp_path / "a" / "identity.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    certificate = client.identity.certificate
    assert certificate.not_valid_after_utc - certificate.not_valid_before_utc == dt.timedelta(
        hours=1, minutes=1
    )
    assert client.settings.identity == "spiffe://example.org/site/branch-a"

    agent = start_agent(client)
    network_map = await agent.next_map()
    assert network_map.self.identity == "spiffe://example.org/site/branch-a"
    assert network_map.self.labels["region"] == "eu"
    assert list(network_map.self.subnets) == ["10.1.0.0/24"]
    assert network_map.ca_bundle_der == [
        controller.authority.certificate.public_bytes(serialization.Encoding.DER)
    ]
    await agent.wait_state(ConnectionState.CONNECTED)
    assert StateDir(tmp_path / "a").load_map() is not None
    assert await agent.shutdown() is ConnectionState.STOPPED

    entries = await controller.audit()
    assert [(e.action, e.target, e.outcome) for e in entries if e.action == "enroll"] == [
        ("enroll", "branch-a", "ok")
    ]


async def test_maps_carry_peers_and_their_reported_endpoints(controller: Controller, tmp_path: Path) -> None:
    assert (await controller.apply_policy(ALLOW_ALL)).applied
    agents = []
    for name, subnet in (("a", "10.1.0.0/24"), ("b", "10.2.0.0/24")):
        client = await enroll_agent(controller, tmp_path / name, await controller.add_site(name, subnet))
        agents.append(start_agent(client))
    a = agents[0]

    async def peer_with_endpoint() -> None:
        while True:
            network_map = await a.next_map()
            peers = {p.name: p for p in network_map.peers}
            if "b" in peers and peers["b"].endpoints:
                assert [(e.address, e.port) for e in peers["b"].endpoints] == [("192.0.2.10", 500)]
                assert list(peers["b"].subnets) == ["10.2.0.0/24"]
                return

    await asyncio.wait_for(peer_with_endpoint(), 5)
    for agent in agents:
        await agent.shutdown()


async def test_renewal_rotates_the_key_and_the_stream_follows(controller: Controller, tmp_path: Path) -> None:
    client = await enroll_agent(controller, tmp_path / "a", await controller.add_site("a", "10.1.0.0/24"))
    agent = start_agent(client)
    await agent.wait_state(ConnectionState.CONNECTED)
    old_serial = client.identity.serial
    old_public = client.identity.key.public_key()

    await client.renew()

    assert client.identity.serial != old_serial
    assert client.identity.key.public_key() != old_public
    stored = StateDir(tmp_path / "a").load_identity()
    assert stored.serial == client.identity.serial
    await agent.wait_state(ConnectionState.CONNECTED)
    assert controller.service is not None
    sessions = controller.service.hub

    async def serving_new_serial() -> None:
        while not sessions.is_connected("a"):
            await asyncio.sleep(0.02)

    await asyncio.wait_for(serving_new_serial(), 5)
    await agent.shutdown()
    entries = await controller.audit()
    assert any(
        e.action == "renew" and e.outcome == "ok" and client.identity.serial in e.detail for e in entries
    )


async def test_a_token_works_once(controller: Controller, tmp_path: Path) -> None:
    token = await controller.add_site("a", "10.1.0.0/24")
    await enroll_agent(controller, tmp_path / "first", token)
    with pytest.raises(ControlError, match="join token already used"):
        await enroll_agent(controller, tmp_path / "second", token)
    assert not StateDir(tmp_path / "second").enrolled
    assert any("already used" in d for d in refusals(await controller.audit(), "enroll"))


async def test_an_expired_token_is_refused(controller: Controller, tmp_path: Path) -> None:
    async with controller.admin() as admin:
        response = await admin.AddSite(
            admin_pb2.AddSiteRequest(name="a", subnets=["10.1.0.0/24"], token_ttl_seconds=60)
        )
    controller.clock.advance(dt.timedelta(seconds=61))
    with pytest.raises(ControlError, match="join token expired"):
        await enroll_agent(controller, tmp_path / "a", response.token.token)
    assert any("expired" in d for d in refusals(await controller.audit(), "enroll"))


async def test_a_token_of_another_controller_is_refused_before_it_is_sent(
    controller: Controller, tmp_path: Path
) -> None:
    other = Controller(
        authority=CertificateAuthority.create("example.org", now=controller.clock()),
        store_url=f"sqlite:///{tmp_path / 'other.db'}",
        clock=controller.clock,
    )
    await other.start()
    try:
        foreign_token = await other.add_site("a", "10.1.0.0/24")
        await controller.add_site("a", "10.1.0.0/24")
        with pytest.raises(ControlError, match="not the controller this token was issued by"):
            await enroll_agent(controller, tmp_path / "a", foreign_token)
        # The agent stopped at the pin check: our controller never saw the token.
        assert refusals(await controller.audit(), "enroll") == []
        # An agent that skipped the check would be refused by the controller itself.
        token = JoinToken.parse(foreign_token)
        ca_pem = controller.authority.certificate.public_bytes(serialization.Encoding.PEM)
        credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
        key = ec.generate_private_key(ec.SECP256R1())
        csr = make_csr(key, None).public_bytes(serialization.Encoding.DER)
        async with grpc.aio.secure_channel(
            controller.enroll_address, credentials, options=CHANNEL_OPTIONS
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await agent_pb2_grpc.EnrollmentStub(channel).Enroll(
                    agent_pb2.EnrollRequest(token=token.encode(), csr_der=csr)
                )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "different controller" in (refused.value.details() or "")
        assert any("CA pin mismatch" in d for d in refusals(await controller.audit(), "enroll"))
    finally:
        await other.stop()


async def test_malformed_enrollments_are_refused_without_burning_the_token(
    controller: Controller, tmp_path: Path
) -> None:
    token = await controller.add_site("a", "10.1.0.0/24")
    ca_pem = controller.authority.certificate.public_bytes(serialization.Encoding.PEM)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(
        controller.enroll_address, credentials, options=CHANNEL_OPTIONS
    ) as channel:
        stub = agent_pb2_grpc.EnrollmentStub(channel)
        for request, message in (
            (agent_pb2.EnrollRequest(token="nonsense", csr_der=b""), "not a Trellis join token"),
            (agent_pb2.EnrollRequest(token=token, csr_der=b"\x30\x00"), "CSR is not valid DER"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Enroll(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (refused.value.details() or "")
    await enroll_agent(controller, tmp_path / "a", token)  # still usable


async def test_an_agent_cannot_renew_another_identity(controller: Controller, tmp_path: Path) -> None:
    await enroll_agent(controller, tmp_path / "a", await controller.add_site("a", "10.1.0.0/24"))
    await controller.add_site("b", "10.2.0.0/24")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, Identity.site("example.org", "b")).public_bytes(serialization.Encoding.DER)
    async with agent_channel(tmp_path / "a", controller.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await agent_pb2_grpc.AgentServiceStub(channel).Renew(agent_pb2.RenewRequest(csr_der=csr))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not renew spiffe://example.org/site/b" in (refused.value.details() or "")
    assert any("may not renew" in d for d in refusals(await controller.audit(), "renew"))


async def test_apis_refuse_the_wrong_kind_of_certificate(controller: Controller, tmp_path: Path) -> None:
    await enroll_agent(controller, tmp_path / "a", await controller.add_site("a", "10.1.0.0/24"))
    async with agent_channel(tmp_path / "a", controller.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin_pb2_grpc.AdminStub(channel).ListSites(admin_pb2.ListSitesRequest())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "site certificates may not call the admin API" in (refused.value.details() or "")

    # An admin certificate on the agent API.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, Identity.site("example.org", "a")).public_bytes(serialization.Encoding.DER)
    async with controller.admin_channel() as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await agent_pb2_grpc.AgentServiceStub(channel).Renew(agent_pb2.RenewRequest(csr_der=csr))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin certificates may not call the agent API" in (refused.value.details() or "")

    # No certificate at all (the enrollment listener does not ask for one).
    ca_pem = controller.authority.certificate.public_bytes(serialization.Encoding.PEM)
    anonymous = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(
        controller.enroll_address, anonymous, options=CHANNEL_OPTIONS
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin_pb2_grpc.AdminStub(channel).ListSites(admin_pb2.ListSitesRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    entries = await controller.audit()
    assert any("may not call the admin API" in d for d in refusals(entries, "site.list"))
    assert any("may not call the agent API" in d for d in refusals(entries, "renew"))
    assert any(e.actor.startswith("peer:") for e in entries if e.outcome == "refused")


async def test_a_certificate_from_another_ca_cannot_connect(controller: Controller, tmp_path: Path) -> None:
    foreign = CertificateAuthority.create("example.org", now=controller.clock())
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = foreign.issue(
        make_csr(key, None),
        Identity.site("example.org", "a"),
        now=controller.clock(),
        ttl=dt.timedelta(hours=1),
    )
    credentials = grpc.ssl_channel_credentials(
        root_certificates=controller.authority.certificate.public_bytes(serialization.Encoding.PEM),
        private_key=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        certificate_chain=certificate.public_bytes(serialization.Encoding.PEM),
    )
    async with grpc.aio.secure_channel(controller.address, credentials, options=CHANNEL_OPTIONS) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin_pb2_grpc.AdminStub(channel).ListSites(admin_pb2.ListSitesRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


async def test_revocation_reaches_every_other_agent_within_a_second(
    controller: Controller, tmp_path: Path
) -> None:
    agents = {}
    for i, name in enumerate(("a", "b", "c")):
        token = await controller.add_site(name, f"10.{i + 1}.0.0/24")
        agents[name] = start_agent(await enroll_agent(controller, tmp_path / name, token))
    for agent in agents.values():
        await agent.wait_state(ConnectionState.CONNECTED)
    revoked_serial = agents["c"].client.identity.serial
    for agent in agents.values():  # drain the maps of the start-up
        while not agent.maps.empty():
            agent.maps.get_nowait()

    started = asyncio.get_running_loop().time()
    async with controller.admin() as admin:
        await admin.RevokeSite(admin_pb2.RevokeSiteRequest(name="c", reason="stolen"))

    async def told(name: str) -> float:
        while True:
            network_map = await agents[name].next_map(timeout=2)
            if "spiffe://example.org/site/c" in network_map.revoked_identities:
                assert revoked_serial in network_map.revoked_serials
                assert "c" not in {p.name for p in network_map.peers}
                return asyncio.get_running_loop().time() - started

    latencies = await asyncio.gather(told("a"), told("b"))
    assert max(latencies) < 1.0, latencies
    await agents["c"].wait_state(ConnectionState.REVOKED, timeout=2)
    assert await agents["c"].shutdown() is ConnectionState.REVOKED
    # The revoked agent can neither renew nor reconnect.
    async with agent_channel(tmp_path / "c", controller.address) as channel:
        key = ec.generate_private_key(ec.SECP256R1())
        csr = make_csr(key, Identity.site("example.org", "c")).public_bytes(serialization.Encoding.DER)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await agent_pb2_grpc.AgentServiceStub(channel).Renew(agent_pb2.RenewRequest(csr_der=csr))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert any("revoked" in d for d in refusals(await controller.audit(), "renew"))
    for name in ("a", "b"):
        await agents[name].shutdown()


async def test_agents_reconnect_after_a_controller_restart_and_nothing_is_lost(
    controller: Controller, tmp_path: Path
) -> None:
    agents = []
    for i, name in enumerate(("a", "b")):
        token = await controller.add_site(name, f"10.{i + 1}.0.0/24")
        agents.append(start_agent(await enroll_agent(controller, tmp_path / name, token)))
    for agent in agents:
        await agent.wait_state(ConnectionState.CONNECTED)
    audit_before = [(e.id, e.action, e.target) for e in await controller.audit()]

    await controller.stop()
    for agent in agents:
        await agent.wait_state(ConnectionState.DISCONNECTED)
        assert agent.client.network_map is not None  # failing static on the last map
    await controller.start()
    for agent in agents:
        await agent.wait_state(ConnectionState.CONNECTED, timeout=15)

    async with controller.admin() as admin:
        sites = (await admin.ListSites(admin_pb2.ListSitesRequest())).sites
        shown = await admin.GetSite(admin_pb2.GetSiteRequest(name="a"))
    assert [s.name for s in sites] == ["a", "b"]
    assert [c.serial for c in shown.certificates] == [agents[0].client.identity.serial]
    audit_after = [(e.id, e.action, e.target) for e in await controller.audit()]
    assert audit_after[-len(audit_before) :] == audit_before
    for agent in agents:
        await agent.shutdown()


async def test_both_listeners_serve_grpc_health(controller: Controller) -> None:
    ca_pem = controller.authority.certificate.public_bytes(serialization.Encoding.PEM)
    anonymous = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    async with grpc.aio.secure_channel(
        controller.enroll_address, anonymous, options=CHANNEL_OPTIONS
    ) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    async with controller.admin_channel() as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.postgres
async def test_replicas_sharing_postgresql_see_each_others_changes(
    tmp_path: Path, postgres_server_url: str
) -> None:
    clock = MovableClock()
    authority = CertificateAuthority.create("example.org", now=clock())
    with fresh_database(postgres_server_url) as url:
        first = Controller(authority=authority, store_url=url, clock=clock)
        second = Controller(authority=authority, store_url=url, clock=clock)
        await first.start()
        await second.start()
        try:
            agents = {}
            for i, name in enumerate(("a", "b")):
                token = await first.add_site(name, f"10.{i + 1}.0.0/24")
                agents[name] = start_agent(await enroll_agent(first, tmp_path / name, token))
            await agents["a"].wait_state(ConnectionState.CONNECTED)
            await agents["b"].wait_state(ConnectionState.CONNECTED)
            assert (await second.apply_policy(ALLOW_ALL)).applied
            # A site added through the second replica reaches agents of the first.
            await second.add_site("c", "10.3.0.0/24")

            async def sees(name: str, peer: str) -> None:
                while peer not in {p.name for p in (await agents[name].next_map()).peers}:
                    pass

            await asyncio.wait_for(sees("a", "c"), 3)
            # Revocation through the second replica ends b's stream on the first, and a is told.
            async with second.admin() as admin:
                await admin.RevokeSite(admin_pb2.RevokeSiteRequest(name="b"))
            await agents["b"].wait_state(ConnectionState.REVOKED, timeout=3)

            async def told() -> None:
                while "spiffe://example.org/site/b" not in (await agents["a"].next_map()).revoked_identities:
                    pass

            await asyncio.wait_for(told(), 3)
            await agents["a"].shutdown()
            await agents["b"].shutdown()
        finally:
            await first.stop()
            await second.stop()
