"""The Sync hub: which agents are connected, and waking their streams when something changes.

Changes are counted by the store's generation. A local change calls ``refresh``; a watcher polls
the generation so that replicas sharing one PostgreSQL database notice each other's changes too.
Each stream computes its map from the latest snapshot when it wakes, so bursts of changes coalesce
by themselves and a slow stream never sees stale data.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import OperationalError

from trellis.controller.errors import ControllerError
from trellis.controller.maps import MapSnapshot

log = logging.getLogger(__name__)

GENERATION_POLL_INTERVAL = 0.5  # seconds; bounds how late a change made by another replica arrives


class SessionEnd(enum.Enum):
    """Why the controller ends a stream (None while it may go on)."""

    REVOKED = "identity revoked"
    CERTIFICATE_EXPIRED = "certificate expired: renew and reconnect"
    SHUTDOWN = "controller shutting down"


@dataclass(eq=False)
class Session:
    site: str
    serial: str
    certificate_not_after: dt.datetime
    connected_at: dt.datetime
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: SessionEnd | None = None
    failure: ControllerError | None = None  # a bad report from the agent ends its stream with this

    def end(self, reason: SessionEnd) -> None:
        self.ended = reason
        self.wake.set()

    def fail(self, error: ControllerError) -> None:
        self.failure = error
        self.wake.set()


class SyncHub:
    def __init__(
        self,
        *,
        load_snapshot: Callable[[], Awaitable[MapSnapshot]],
        read_generation: Callable[[], Awaitable[int]],
    ) -> None:
        self._load_snapshot = load_snapshot
        self._read_generation = read_generation
        self._sessions: dict[str, set[Session]] = {}
        self._generation = -1
        self._snapshot: MapSnapshot | None = None
        self._snapshot_lock = asyncio.Lock()

    # -- sessions ------------------------------------------------------------------------------

    def open(self, session: Session) -> None:
        self._sessions.setdefault(session.site, set()).add(session)

    def close(self, session: Session) -> None:
        sessions = self._sessions.get(session.site)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._sessions[session.site]

    def is_connected(self, site: str) -> bool:
        return bool(self._sessions.get(site))

    @property
    def connected_sites(self) -> int:
        return len(self._sessions)

    def end_site(self, site: str, reason: SessionEnd) -> int:
        """End every stream of a site (revocation); returns how many were open."""
        sessions = list(self._sessions.get(site, ()))
        for session in sessions:
            session.end(reason)
        return len(sessions)

    def end_all(self, reason: SessionEnd) -> None:
        for sessions in list(self._sessions.values()):
            for session in list(sessions):
                session.end(reason)

    # -- changes -------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    def changed(self, generation: int) -> None:
        """Wake every stream if ``generation`` is newer than what they were told."""
        if generation <= self._generation:
            return
        self._generation = generation
        for sessions in self._sessions.values():
            for session in sessions:
                session.wake.set()

    async def refresh(self) -> None:
        """Read the store's generation and wake streams if it moved (call after a local change)."""
        self.changed(await self._read_generation())

    async def snapshot(self) -> MapSnapshot:
        """The snapshot of the newest generation; loaded once however many streams ask."""
        async with self._snapshot_lock:
            if self._snapshot is None or self._snapshot.generation < self._generation:
                self._snapshot = await self._load_snapshot()
                self.changed(self._snapshot.generation)
            return self._snapshot

    def invalidate(self) -> None:
        """Force the next snapshot() to reload, e.g. when time alone changed a policy view."""
        self._snapshot = None
        for sessions in self._sessions.values():
            for session in sessions:
                session.wake.set()

    async def watch_generation(self, stop: asyncio.Event) -> None:
        """Poll the store for changes made elsewhere (other replicas) until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.changed(await self._read_generation())
            except OperationalError as e:  # database briefly unreachable: keep serving what we have
                log.warning("generation poll failed: %s", e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=GENERATION_POLL_INTERVAL)
