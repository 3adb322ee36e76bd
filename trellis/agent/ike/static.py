"""The IKE engine with static peers and no controller, in process and IKE only.

It binds the IKE and NAT-T ports, initiates the peers configured to be initiated, answers the
others, and keeps a status file (the SAs as JSON) and optionally an events file (JSON lines, no
keys) and the key log (Wireshark tables, 0600) up to date. ESP is the data plane's business: the
``on_esp`` hook of the shell is where it plugs in. ``trellis-agent run --config FILE`` runs
trellis.agent.site.static instead: the same engine joined to the userspace data plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from trellis.agent.ike.engine import IkeEngine
from trellis.agent.ike.events import Event, event_record
from trellis.agent.ike.keylogfile import KeyLog
from trellis.agent.ike.shell import EspHook, IkeShell, address_resolver
from trellis.agent.ike.status import status_json
from trellis.agent.ikeconfig import StaticConfig
from trellis.v1.files import write_atomic

log = logging.getLogger("trellis.agent.ike")

STATUS_INTERVAL = 5.0  # seconds between status file refreshes when nothing happens


class StaticAgent:
    def __init__(
        self,
        config: StaticConfig,
        *,
        on_event: Callable[[Event], None] | None = None,
        on_esp: EspHook | None = None,
    ) -> None:
        self.config = config
        self.keylog = KeyLog(config.keylog_dir) if config.keylog_dir is not None else None
        self.events_file = config.events_file
        self.extra_hook = on_event
        self.engine = IkeEngine(
            local_address_for=address_resolver(config.bind_address),
            settings=config.settings,
            peers=config.peers,
            credentials=config.credentials,
            keylog=self.keylog.ike_row if self.keylog is not None else None,
        )
        self.shell = IkeShell(self.engine, on_event=self._event, on_esp=on_esp)

    def _event(self, event: Event) -> None:
        record = event_record(event)
        log.info("IKE %s", json.dumps(record))
        if self.keylog is not None:
            self.keylog.event(event)
        if self.events_file is not None:
            with self.events_file.open("a") as out:
                out.write(json.dumps(record) + "\n")
        if self.extra_hook is not None:
            self.extra_hook(event)
        self.write_status()

    def write_status(self) -> None:
        if self.config.status_file is not None:
            document = status_json(self.engine.status(), now=time.time())
            write_atomic(self.config.status_file, document.encode(), mode=0o644)

    async def run(self, stop: asyncio.Event) -> None:
        await self.shell.open(self.config.bind_address)
        log.info(
            "IKE listening on %s ports %d and %d with %d peers",
            self.config.bind_address,
            self.config.settings.ike_port,
            self.config.settings.nat_t_port,
            len(self.config.peers),
        )
        self.shell.start()
        try:
            while not stop.is_set():
                self.write_status()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STATUS_INTERVAL)
        finally:
            await self.shell.close()
            self.write_status()
