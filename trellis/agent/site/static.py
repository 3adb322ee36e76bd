"""``trellis-agent run --config FILE``: one site with static peers, IKE and the data plane.

It starts the userspace data plane (TUN device, UDP 4500) unless ``dataplane.backend`` is
``none``, binds UDP 500 for IKE, initiates the peers configured to be initiated and answers the
others; CHILD SAs go into the data plane as IKE negotiates them. Files it keeps:

* the status document (trellis.agent.site.status), every second and on every IKE event, as
  ``STATE_DIR/tunnels.json`` and as the configuration's ``status_file`` if given;
* the events file (``events_file``: JSON lines, no keys);
* the key log (``keylog: DIR``, off by default, 0600): Wireshark's ikev2_decryption_table and
  esp_sa tables.

With ``policy_view: FILE`` the data plane enforces that PolicyView (policyfile.py) from the
start; SIGHUP re-reads the file and updates the filter in place (flows the new view still allows
go on; a file that does not load is logged and changes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from trellis.agent.dataplane.backend import DataplaneBackend, DataplaneError, EventHandler, IkeHandler
from trellis.agent.dataplane.userspace import UserspaceConfig, UserspaceDataplane
from trellis.agent.ike.engine import IkeEngine
from trellis.agent.ike.events import Event, event_record
from trellis.agent.ike.keylogfile import KeyLog
from trellis.agent.ike.shell import address_resolver
from trellis.agent.site.config import Backend, DataplaneSettings, SiteConfig, pinned_routes
from trellis.agent.site.policyfile import load_policy_view
from trellis.agent.site.runtime import DataplaneFactory, SiteRuntime
from trellis.agent.site.status import STATUS_FILE_NAME, write_status_file

log = logging.getLogger("trellis.agent.site")

STATE_DIR_MODE = 0o700


def userspace_factory(
    settings: DataplaneSettings, *, listen_address: str, listen_port: int
) -> DataplaneFactory:
    """Makes the userspace data plane (TUN device, UDP ``listen_port`` for ESP and IKE NAT-T)."""
    userspace = UserspaceConfig(
        tun_name=settings.tun_name,
        listen_address=listen_address,
        listen_port=listen_port,
        underlay_mtu=settings.underlay_mtu,
        tso=settings.tso,
        gro=settings.gro,
        clamp_mss=settings.clamp_mss,
        tun_addresses=settings.tun_addresses,
    )

    def make(on_ike: IkeHandler, on_event: EventHandler) -> DataplaneBackend:
        return UserspaceDataplane(userspace, on_ike=on_ike, on_event=on_event)

    return make


class StaticSite:
    """The site of a static configuration; ``run(stop)`` until stopped (SiteFailed if the data
    plane fails)."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        state_dir: Path | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.config = config
        ike = config.ike
        self.state_dir = state_dir or config.state_dir
        self.keylog = KeyLog(ike.keylog_dir) if ike.keylog_dir is not None else None
        self.extra_hook = on_event
        self._reloads: set[asyncio.Task[bool]] = set()
        engine = IkeEngine(
            local_address_for=address_resolver(ike.bind_address),
            settings=ike.settings,
            peers=ike.peers,
            credentials=ike.credentials,
            keylog=self.keylog.ike_row if self.keylog is not None else None,
        )
        userspace = config.dataplane.backend is Backend.USERSPACE
        self.runtime = SiteRuntime(
            engine,
            dataplane=userspace_factory(
                config.dataplane, listen_address=ike.bind_address, listen_port=ike.settings.nat_t_port
            )
            if userspace
            else None,
            esp=config.dataplane.esp,
            pinned_routes=pinned_routes(ike.peers) if userspace and config.dataplane.fail_closed else (),
            on_event=self._event,
            backend=config.dataplane.backend.value,
        )

    @property
    def status_paths(self) -> list[Path]:
        paths = [self.state_dir / STATUS_FILE_NAME] if self.state_dir is not None else []
        if self.config.ike.status_file is not None:
            paths.append(self.config.ike.status_file)
        return paths

    def _event(self, event: Event) -> None:
        record = event_record(event)
        log.info("IKE %s", json.dumps(record))
        if self.keylog is not None:
            self.keylog.event(event)  # before the peer hears of it: tshark can always decrypt
        events_file = self.config.ike.events_file
        if events_file is not None:
            with events_file.open("a") as out:
                out.write(json.dumps(record) + "\n")
        if self.extra_hook is not None:
            self.extra_hook(event)
        asyncio.get_running_loop().call_soon(self.write_status)

    def write_status(self) -> None:
        paths = self.status_paths
        if not paths:
            return
        document = self.runtime.snapshot()
        for path in paths:
            write_status_file(path, document)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``; ConfigError if the policy view file does not load at start."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self._run(stop)
        finally:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.remove_signal_handler(signal.SIGHUP)

    def request_reload(self) -> None:
        """Re-read the policy view (what SIGHUP does), in a task of its own."""
        task = asyncio.get_running_loop().create_task(self.reload_policy())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload_policy(self) -> bool:
        """Load the policy view file again and enforce it; False (logged) if it cannot be."""
        path = self.config.policy_view
        if path is None:
            log.info("no policy_view in the configuration: nothing to reload")
            return False
        try:
            view = await asyncio.to_thread(load_policy_view, path)
            await self.runtime.set_policy(view)
        except (ValueError, DataplaneError) as e:  # ConfigError, InvalidPolicyView
            log.error("policy view not reloaded, the previous one stays: %s", e)
            return False
        log.info("policy view %s version %d enforced (%d peers)", path, view.policy_version, len(view.peers))
        self.write_status()
        return True

    async def _run(self, stop: asyncio.Event) -> None:
        if self.state_dir is not None:
            self.state_dir.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        ike = self.config.ike
        if self.config.policy_view is not None:
            view = load_policy_view(self.config.policy_view)
            await self.runtime.set_policy(view)  # kept until the data plane starts
            log.info(
                "policy view %s version %d (%d peers)",
                self.config.policy_view,
                view.policy_version,
                len(view.peers),
            )
        await self.runtime.open(ike.bind_address)
        log.info(
            "site up: IKE on %s ports %d and %d, data plane %s, %d peers",
            ike.bind_address,
            ike.settings.ike_port,
            ike.settings.nat_t_port,
            self.config.dataplane.backend.value,
            len(ike.peers),
        )
        self.runtime.start()
        try:
            await self.runtime.run(stop, on_tick=self.write_status)
        finally:
            self.write_status()
