"""An in-process controller on loopback, with a clock the test can move, and agents for it.

Everything goes over real gRPC with real TLS; only the clock is the test's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from trellis.agent.control.client import ConnectionState, ControlClient, enroll
from trellis.agent.control.state import StateDir
from trellis.controller.api.server import ControllerServer
from trellis.controller.ca import CONTROLLER_TLS_NAME, CertificateAuthority
from trellis.controller.credentials import AdminCredentials
from trellis.controller.service import ControllerService
from trellis.controller.store import AsyncStore, Store
from trellis.v1 import admin_pb2, admin_pb2_grpc, common_pb2, policy_pb2, policy_pb2_grpc

# Every site may reach every other: for tests about the control plane rather than policy.
ALLOW_ALL = """\
apiVersion: trellis/v1
kind: Policy
rules:
  - name: everyone
    from: "*"
    to: "*"
"""


@dataclass
class MovableClock:
    """Real time plus an offset the test can increase."""

    offset: dt.timedelta = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def advance(self, delta: dt.timedelta) -> None:
        self.offset += delta


@dataclass
class Controller:
    authority: CertificateAuthority
    store_url: str
    clock: MovableClock
    cert_ttl: dt.timedelta = dt.timedelta(hours=1)
    port: int = 0
    enroll_port: int = 0
    service: ControllerService | None = None
    server: ControllerServer | None = None
    admin_credentials: AdminCredentials | None = None
    _store: AsyncStore | None = None
    _stop_watch: asyncio.Event = field(default_factory=asyncio.Event)
    _watcher: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def enroll_address(self) -> str:
        return f"127.0.0.1:{self.enroll_port}"

    async def start(self) -> None:
        """Start (or restart, on the same ports and store) the controller."""
        self._store = AsyncStore(Store.open(self.store_url, now=self.clock))
        self.service = ControllerService(
            authority=self.authority, store=self._store, clock=self.clock, cert_ttl=self.cert_ttl
        )
        self.server = ControllerServer(
            self.service, listen=f"127.0.0.1:{self.port}", enroll_listen=f"127.0.0.1:{self.enroll_port}"
        )
        await self.server.start()
        self.port, self.enroll_port = self.server.port, self.server.enroll_port
        self._stop_watch = asyncio.Event()
        self._watcher = asyncio.create_task(self.service.hub.watch_generation(self._stop_watch))
        if self.admin_credentials is None:
            self.admin_credentials = AdminCredentials.issue(self.authority, "admin", now=self.clock())

    async def stop(self) -> None:
        self._stop_watch.set()
        if self._watcher is not None:
            await self._watcher
        if self.server is not None:
            await self.server.stop(grace=0.5)
        if self._store is not None:
            self._store.close()

    @contextlib.asynccontextmanager
    async def admin(self) -> AsyncIterator[admin_pb2_grpc.AdminAsyncStub]:
        async with self.admin_channel() as channel:
            yield admin_pb2_grpc.AdminStub(channel)

    @contextlib.asynccontextmanager
    async def admin_channel(self) -> AsyncIterator[grpc.aio.Channel]:
        """A channel presenting the admin certificate."""
        assert self.admin_credentials is not None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.admin_credentials.ca_pem,
            private_key=self.admin_credentials.key_pem,
            certificate_chain=self.admin_credentials.certificate_pem,
        )
        options = [("grpc.ssl_target_name_override", CONTROLLER_TLS_NAME)]
        async with grpc.aio.secure_channel(self.address, credentials, options=options) as channel:
            yield channel

    async def add_site(self, name: str, subnet: str, **labels: str) -> str:
        """Add a site; returns its join token."""
        async with self.admin() as admin:
            response = await admin.AddSite(
                admin_pb2.AddSiteRequest(name=name, subnets=[subnet], labels=labels)
            )
        return response.token.token

    async def apply_policy(self, text: str, *, dry_run: bool = False) -> policy_pb2.ApplyPolicyResponse:
        async with self.admin_channel() as channel:
            stub = policy_pb2_grpc.PolicyAdminStub(channel)
            return await stub.ApplyPolicy(policy_pb2.ApplyPolicyRequest(yaml=text, dry_run=dry_run))

    async def audit(self) -> list[admin_pb2.AuditEntry]:
        async with self.admin() as admin:
            return list((await admin.ListAudit(admin_pb2.ListAuditRequest(limit=1000))).entries)


@dataclass
class Agent:
    client: ControlClient
    task: asyncio.Task[ConnectionState]
    stop: asyncio.Event
    maps: asyncio.Queue[common_pb2.NetworkMap]

    async def next_map(self, timeout: float = 5.0) -> common_pb2.NetworkMap:
        return await asyncio.wait_for(self.maps.get(), timeout)

    async def wait_state(self, state: ConnectionState, timeout: float = 10.0) -> None:
        async def reached() -> None:
            while self.client.connection is not state:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(reached(), timeout)

    async def shutdown(self) -> ConnectionState:
        self.stop.set()
        return await asyncio.wait_for(self.task, 10)


async def enroll_agent(controller: Controller, state_dir: Path, token: str) -> ControlClient:
    state = StateDir(state_dir)
    identity, settings = await enroll(
        state,
        controller=controller.address,
        enroll_address=controller.enroll_address,
        token_text=token,
    )
    return ControlClient(
        state=state,
        settings=settings,
        identity=identity,
        endpoints=[common_pb2.Endpoint(address="192.0.2.10", port=500)],
        max_backoff=0.5,
    )


def start_agent(client: ControlClient) -> Agent:
    maps: asyncio.Queue[common_pb2.NetworkMap] = asyncio.Queue()

    async def on_map(network_map: common_pb2.NetworkMap) -> None:
        await maps.put(network_map)

    client.on_map = on_map
    stop = asyncio.Event()
    return Agent(client=client, task=asyncio.create_task(client.run(stop)), stop=stop, maps=maps)
