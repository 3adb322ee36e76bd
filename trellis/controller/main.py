"""trellis-controller: create a controller (init) and run it (serve)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import signal
import sys
from pathlib import Path

from trellis import __version__
from trellis.controller import ca as ca_module
from trellis.controller.api.server import ControllerServer, split_host_port
from trellis.controller.credentials import AdminCredentials
from trellis.controller.datadir import DataDir, DataDirError
from trellis.controller.service import ControllerService
from trellis.controller.store import AsyncStore, Store, database_url
from trellis.controller.store.migrations import SchemaTooNew
from trellis.v1.duration import format_duration, parse_duration
from trellis.v1.identity import IdentityError, check_name, check_trust_domain
from trellis.v1.logs import LOG_FORMATS, LOG_LEVELS, setup_logging

log = logging.getLogger("trellis.controller")

DEFAULT_LISTEN = "0.0.0.0:7400"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _duration(text: str) -> dt.timedelta:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _address(text: str) -> str:
    try:
        split_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trellis-controller",
        description="The Trellis controller: certificate authority, policy engine and gRPC services "
        "for site agents.",
    )
    parser.add_argument("--version", action="version", version=f"trellis-controller {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = commands.add_parser(
        "init",
        help="create a controller: CA key and certificate, admin credentials",
        description="Create the data directory with a new ECDSA P-256 CA for TRUST-DOMAIN and the first "
        "admin credentials (DIR/admin.pem, for trellisctl --credentials). Key files are mode 0600.",
    )
    init.add_argument(
        "--data-dir", type=Path, required=True, help="directory to create (must not hold a CA yet)"
    )
    init.add_argument("--trust-domain", required=True, help="DNS-style name of this mesh, e.g. corp.example")
    init.add_argument(
        "--admin-name", default="admin", help="name in the first admin certificate (default: admin)"
    )

    serve = commands.add_parser(
        "serve",
        help="run the controller",
        description="Serve the agent and admin APIs with mutual TLS on --listen, and enrollment "
        "(join token, no client certificate) on --enroll-listen (default: the next port).",
    )
    serve.add_argument("--data-dir", type=Path, required=True, help="directory made by 'init'")
    serve.add_argument(
        "--listen",
        type=_address,
        default=DEFAULT_LISTEN,
        help=f"HOST:PORT for agents and admins (default {DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--enroll-listen", type=_address, help="HOST:PORT for enrollment (default: --listen port + 1)"
    )
    serve.add_argument(
        "--db",
        help="database URL: postgresql://user:pass@host/db for several replicas "
        "(default: SQLite in the data dir)",
    )
    serve.add_argument(
        "--cert-ttl",
        type=_duration,
        default=ca_module.DEFAULT_LEAF_TTL,
        help="lifetime of site certificates, 5m..24h (default 1h)",
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    serve.add_argument("--log-format", choices=LOG_FORMATS, default="text")

    admin = commands.add_parser(
        "admin-credentials",
        help="issue another admin credentials file",
        description="Issue admin credentials (key, certificate valid 90 days, CA) into a new 0600 file.",
    )
    admin.add_argument("--data-dir", type=Path, required=True)
    admin.add_argument("--name", required=True, help="admin name, recorded in the audit log")
    admin.add_argument("--out", type=Path, required=True, help="file to write (must not exist)")
    return parser


def cmd_init(args: argparse.Namespace) -> int:
    check_trust_domain(args.trust_domain)
    check_name(args.admin_name)
    authority = DataDir(args.data_dir).initialize(args.trust_domain, admin_name=args.admin_name, now=utcnow())
    print(f"created controller for trust domain {authority.trust_domain} in {args.data_dir}")
    print(f"CA pin (SPKI SHA-256): {authority.spki_sha256.hex()}")
    print(f"admin credentials: {DataDir(args.data_dir).admin_credentials}")
    return 0


def cmd_admin_credentials(args: argparse.Namespace) -> int:
    check_name(args.name)
    if args.out.exists():
        raise DataDirError(f"{args.out} exists; refusing to overwrite credentials")
    authority = DataDir(args.data_dir).load_authority()
    AdminCredentials.issue(authority, args.name, now=utcnow()).save(args.out)
    print(f"wrote admin credentials for {args.name} to {args.out}")
    return 0


async def serve(args: argparse.Namespace) -> int:
    data_dir = DataDir(args.data_dir)
    authority = data_dir.load_authority()
    store = AsyncStore(Store.open(database_url(args.db, args.data_dir), now=utcnow))
    service = ControllerService(authority=authority, store=store, clock=utcnow, cert_ttl=args.cert_ttl)
    server = ControllerServer(service, listen=args.listen, enroll_listen=args.enroll_listen)
    await server.start()
    print(
        f"trellis-controller {__version__} serving {authority.trust_domain}: agents/admin on "
        f"{split_host_port(args.listen)[0]}:{server.port}, enrollment on "
        f"{split_host_port(server.enroll_listen)[0]}:{server.enroll_port}; store {store.store.backend}; "
        f"certificates {format_duration(args.cert_ttl)}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    watcher = asyncio.create_task(service.hub.watch_generation(stop))
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_level", "info"), getattr(args, "log_format", "text"))
    try:
        if args.command == "init":
            return cmd_init(args)
        if args.command == "admin-credentials":
            return cmd_admin_credentials(args)
        if not ca_module.MIN_LEAF_TTL <= args.cert_ttl <= ca_module.MAX_LEAF_TTL:
            raise DataDirError(
                f"--cert-ttl must be between {format_duration(ca_module.MIN_LEAF_TTL)} and "
                f"{format_duration(ca_module.MAX_LEAF_TTL)}"
            )
        return asyncio.run(serve(args))
    except (DataDirError, IdentityError, SchemaTooNew, ValueError) as e:
        print(f"trellis-controller: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # e.g. gRPC failing to bind the port
        print(f"trellis-controller: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
