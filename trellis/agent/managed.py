"""``trellis-agent run --state-dir DIR [--controller HOST:PORT --token ...]``: an agent managed by
its controller. It enrolls once, keeps its identity renewed, follows the Sync stream, and (unless
``--no-mesh``) runs the site: IKE and the data plane build the tunnels the network map allows.

Exit codes: 0 stopped; 1 the site failed (data plane); 3 the identity is unusable (revoked or
expired: only a new join token helps). Configuration mistakes raise StateError (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from trellis import __version__
from trellis.agent.control.client import (
    ConnectionState,
    ControlClient,
    default_enroll_address,
    enroll,
    split_host_port,
)
from trellis.agent.control.state import Settings, StateDir, StateError
from trellis.agent.dataplane.backend import DataplaneError
from trellis.agent.mesh.site import MeshSettings, MeshSite
from trellis.agent.site.config import Backend, DataplaneSettings
from trellis.agent.site.runtime import SiteFailed
from trellis.v1 import common_pb2
from trellis.v1.identity import Identity

log = logging.getLogger("trellis.agent")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_IDENTITY_UNUSABLE = 3


def token_from(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file:
        try:
            return str(args.token_file.read_text().strip())
        except OSError as e:
            raise StateError(f"cannot read {args.token_file}: {e.strerror}") from None
    return os.environ.get("TRELLIS_TOKEN")


def facing_address(controller: str) -> str | None:
    """The local address the kernel would use towards the controller (no packet is sent)."""
    host, port = split_host_port(controller)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, port))
            return str(probe.getsockname()[0])
    except OSError:
        return None


def _expired(state: StateDir) -> bool:
    try:
        certificate = state.load_identity().certificate
    except StateError:
        return True
    return certificate.not_valid_after_utc <= dt.datetime.now(dt.UTC)


async def _settings(args: argparse.Namespace, state: StateDir) -> Settings:
    """Enroll if this state directory has no usable identity; the stored settings otherwise."""
    token = token_from(args)
    if not state.enrolled or (token and _expired(state)):
        if not token or not args.controller:
            raise StateError(
                f"{args.state_dir} holds no usable identity: give --controller HOST:PORT and a join token"
            )
        enroll_address = args.enroll_address or default_enroll_address(args.controller)
        await enroll(state, controller=args.controller, enroll_address=enroll_address, token_text=token)
    elif token:
        log.warning("already enrolled as %s; ignoring the join token", state.load_settings().identity)
    settings = state.load_settings()
    if args.controller and args.controller != settings.controller:
        log.info("controller address changed from %s to %s", settings.controller, args.controller)
        settings = Settings(
            controller=args.controller,
            enroll=args.enroll_address or default_enroll_address(args.controller),
            site=settings.site,
            identity=settings.identity,
        )
        state.save_settings(settings)
    return settings


def _endpoints(args: argparse.Namespace, settings: Settings) -> list[common_pb2.Endpoint]:
    """Where peers reach our IKE: as given, else the bound address, else the one facing the
    controller."""
    if args.endpoint:
        return list(args.endpoint)
    address = args.bind if args.bind not in ("0.0.0.0", "::") else facing_address(settings.controller)
    return [common_pb2.Endpoint(address=address, port=args.ike_port)] if address else []


def mesh_settings(args: argparse.Namespace) -> MeshSettings:
    return MeshSettings(
        bind_address=args.bind,
        ike_port=args.ike_port,
        nat_t_port=args.nat_t_port,
        dataplane=DataplaneSettings(
            backend=Backend(args.dataplane or Backend.USERSPACE.value),
            tun_name=args.tun_name,
            underlay_mtu=args.underlay_mtu,
        ),
        keylog_dir=args.keylog,
    )


async def run_managed(args: argparse.Namespace) -> int:
    if args.state_dir is None:
        raise StateError("give --state-dir (or --config FILE for static peers)")
    state = StateDir(args.state_dir)
    settings = await _settings(args, state)
    identity = state.load_identity()
    client = ControlClient(
        state=state,
        settings=settings,
        identity=identity,
        endpoints=_endpoints(args, settings),
        max_backoff=args.max_backoff,
    )
    site: MeshSite | None = None
    if args.mesh:
        site = MeshSite(
            identity, Identity.parse(settings.identity), mesh_settings(args), Path(args.state_dir)
        )
        try:
            await site.open()
        except (OSError, DataplaneError) as e:
            raise StateError(f"cannot run the site: {e}") from None
        client.on_map = site.apply_map
        client.on_identity = site.set_identity
    print(
        f"trellis-agent {__version__}: {settings.identity}, certificate {identity.serial} valid until "
        f"{identity.certificate.not_valid_after_utc.isoformat()}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    control = asyncio.create_task(client.run(stop))
    tunnels = asyncio.create_task(site.run(stop)) if site is not None else None
    try:
        await asyncio.wait(
            [t for t in (control, tunnels) if t is not None], return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stop.set()  # whichever ended first, the other follows: no tunnels without a usable identity
    final = await control
    failure: str | None = None
    if tunnels is not None:
        try:
            await tunnels
        except SiteFailed as e:
            failure = str(e)
    if final in (ConnectionState.REVOKED, ConnectionState.EXPIRED):
        print(f"trellis-agent: {final.value}: {client.last_error}", file=sys.stderr)
        return EXIT_IDENTITY_UNUSABLE
    if failure is not None:
        print(f"trellis-agent: error: {failure}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK
