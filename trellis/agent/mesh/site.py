"""The site of an enrolled agent: IKE and the data plane, driven by the controller's network map.

Every map that arrives (and the stored one at start) is planned (plan.py) and applied at once:
peers the policy no longer allows lose their SAs, new ones are initiated by the side whose turn it
is, revoked identities and serials are checked against every live IKE SA, and the policy view goes
to the data plane's packet filter. A renewed certificate goes to IKE, which re-authenticates its
SAs with it before the old one expires (make before break).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from trellis.agent.control.state import AgentIdentity
from trellis.agent.dataplane.backend import DataplaneError
from trellis.agent.ike.config import DEFAULT_CREDENTIAL, CertificateCredentials, EngineSettings
from trellis.agent.ike.engine import IkeEngine
from trellis.agent.ike.events import Event, event_record
from trellis.agent.ike.keylogfile import KeyLog
from trellis.agent.ike.shell import address_resolver
from trellis.agent.mesh.plan import MapError, MeshPlan, plan_mesh
from trellis.agent.site.config import Backend, DataplaneSettings
from trellis.agent.site.runtime import SiteRuntime
from trellis.agent.site.static import userspace_factory
from trellis.agent.site.status import STATUS_FILE_NAME, write_status_file
from trellis.v1 import common_pb2
from trellis.v1.identity import Identity

log = logging.getLogger("trellis.agent.mesh")


@dataclass(frozen=True, slots=True)
class MeshSettings:
    bind_address: str = "0.0.0.0"
    ike_port: int = 500
    nat_t_port: int = 4500
    dataplane: DataplaneSettings = field(default_factory=DataplaneSettings)
    keylog_dir: Path | None = None  # Wireshark key log (0600), off unless given


def credentials_of(identity: AgentIdentity) -> CertificateCredentials:
    return CertificateCredentials(chain=(identity.certificate,), key=identity.key)


class MeshSite:
    def __init__(
        self, identity: AgentIdentity, me: Identity, settings: MeshSettings, state_dir: Path
    ) -> None:
        self.me = me
        self.settings = settings
        self.state_dir = state_dir
        self.plan: MeshPlan | None = None
        self.keylog = KeyLog(settings.keylog_dir) if settings.keylog_dir is not None else None
        self.engine = IkeEngine(
            local_address_for=address_resolver(settings.bind_address),
            settings=EngineSettings(ike_port=settings.ike_port, nat_t_port=settings.nat_t_port),
            peers=(),
            credentials={DEFAULT_CREDENTIAL: credentials_of(identity)},
            keylog=self.keylog.ike_row if self.keylog is not None else None,
        )
        userspace = settings.dataplane.backend is Backend.USERSPACE
        self.runtime = SiteRuntime(
            self.engine,
            dataplane=userspace_factory(
                settings.dataplane, listen_address=settings.bind_address, listen_port=settings.nat_t_port
            )
            if userspace
            else None,
            esp=settings.dataplane.esp,
            on_event=self._event,
            backend=settings.dataplane.backend.value,
        )

    async def open(self) -> None:
        """Bind the IKE ports and start the data plane (TUN device, UDP 4500)."""
        await self.runtime.open(self.settings.bind_address)
        self.runtime.start()
        log.info(
            "site up: IKE on %s ports %d/%d, data plane %s",
            self.settings.bind_address,
            self.settings.ike_port,
            self.settings.nat_t_port,
            self.runtime.backend,
        )

    async def apply_map(self, network_map: common_pb2.NetworkMap) -> None:
        """Make the tunnels what the map says (a map that cannot be used leaves them as they are)."""
        try:
            plan = plan_mesh(network_map, self.me)
        except MapError as e:
            log.error("network map version %d not applied: %s", network_map.version, e)
            return
        for reason in plan.skipped:
            log.warning("peer not built: %s", reason)

        def reconcile(now: float) -> None:
            self.engine.set_revocation_check(plan.is_revoked)
            self.engine.set_peers(plan.peers, now)
            self.engine.recheck_peers(now)

        self.runtime.shell.call(reconcile)
        self.plan = plan
        try:
            await self.runtime.set_policy(network_map.policy)
        except (ValueError, DataplaneError) as e:  # the previous view stays in force
            log.error("policy view of map version %d not enforced: %s", network_map.version, e)
        log.info(
            "map version %d applied: %d peers (%d to initiate)",
            network_map.version,
            len(plan.peers),
            sum(1 for p in plan.peers if p.initiate),
        )
        self.write_status()

    def set_identity(self, identity: AgentIdentity) -> None:
        """A renewed certificate: IKE SAs re-authenticate with it before the old one expires."""
        self.runtime.shell.call(
            lambda now: self.engine.set_credentials(DEFAULT_CREDENTIAL, credentials_of(identity), now)
        )

    def _event(self, event: Event) -> None:
        log.info("IKE %s", json.dumps(event_record(event)))
        if self.keylog is not None:
            self.keylog.event(event)
        asyncio.get_running_loop().call_soon(self.write_status)

    def write_status(self) -> None:
        write_status_file(self.state_dir / STATUS_FILE_NAME, self.runtime.snapshot())

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``; SiteFailed if the data plane fails. Peers are told goodbye either way."""
        try:
            await self.runtime.run(stop, on_tick=self.write_status)
        finally:
            self.write_status()
