"""trellis-agent: run a site agent, or show what a running one says of itself."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from trellis import __version__
from trellis.agent.control.client import (
    ControlError,
)
from trellis.agent.control.state import SETTINGS_FILE, StateDir, StateError
from trellis.agent.dataplane.backend import DataplaneError
from trellis.agent.managed import EXIT_ERROR, EXIT_OK, run_managed, token_from
from trellis.agent.site.config import Backend
from trellis.agent.site.runtime import SiteFailed
from trellis.agent.site.status import STATUS_FILE_NAME, read_status_file, render_site_status
from trellis.v1 import common_pb2
from trellis.v1.duration import format_duration
from trellis.v1.logs import LOG_FORMATS, LOG_LEVELS, setup_logging
from trellis.v1.token import TokenFormatError

log = logging.getLogger("trellis.agent")

EXIT_USAGE = 2
DEFAULT_IKE_PORT = 500


def _endpoint(text: str) -> common_pb2.Endpoint:
    host, sep, port = text.rpartition(":")
    if not sep or ("." not in text and "[" not in text):
        host, port = text, str(DEFAULT_IKE_PORT)
    host = host.strip("[]")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise argparse.ArgumentTypeError(f"invalid endpoint {text!r}: use ADDRESS[:PORT]") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"invalid endpoint port in {text!r}")
    return common_pb2.Endpoint(address=host, port=int(port))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trellis-agent",
        description="The Trellis site agent: enrolls with the controller, keeps its short-lived identity "
        "renewed, receives the network map and builds IKEv2/ESP tunnels to its peers.",
    )
    parser.add_argument("--version", action="version", version=f"trellis-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the agent",
        description="Run the agent. On the first run give --controller and a join token (--token, "
        "--token-file or TRELLIS_TOKEN); later runs need only --state-dir. Without its controller the "
        "agent keeps working from its last map until its certificate expires.",
    )
    run.add_argument(
        "--state-dir",
        type=Path,
        help="where key (0600), certificate and map live; the running agent also writes its status "
        f"there ({STATUS_FILE_NAME}: IKE SAs, CHILD SAs and data-plane counters), which "
        "`trellis-agent status --state-dir DIR` shows. With --config it is optional (default: the "
        "configuration's state_dir)",
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="run a site with the static peers of this YAML file, without a controller (e.g. to connect "
        "an external IPsec gateway): IKE plus the userspace data plane (a TUN device and UDP 4500); see "
        "trellis.agent.ikeconfig and trellis.agent.site.config for the format",
    )
    run.add_argument(
        "--dataplane",
        choices=[b.value for b in Backend],
        help="with --config: the data-plane backend, overriding the file's dataplane.backend "
        "(none: IKE only, ports 500 and 4500 bound by IKE, no ESP here)",
    )
    run.add_argument("--controller", help="HOST:PORT of the controller's agent API (stored after enrollment)")
    run.add_argument(
        "--enroll-address", help="HOST:PORT of the enrollment listener (default: controller port + 1)"
    )
    run.add_argument(
        "--token", help="join token (prefer --token-file or TRELLIS_TOKEN: argv is visible to all)"
    )
    run.add_argument("--token-file", type=Path, help="file holding the join token")
    mesh = run.add_argument_group(
        "the site (with a controller)",
        "IKE and the data plane, building the tunnels the network map allows",
    )
    mesh.add_argument(
        "--mesh",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the site; --no-mesh runs the control plane only (enrollment, renewal, the map)",
    )
    mesh.add_argument("--bind", default="0.0.0.0", help="local address for IKE and ESP (default: all)")
    mesh.add_argument("--ike-port", type=int, default=500, help="UDP port for IKE (default 500)")
    mesh.add_argument(
        "--nat-t-port", type=int, default=4500, help="UDP port for IKE/ESP-in-UDP (default 4500)"
    )
    mesh.add_argument("--tun-name", default="trellis0", help="the tunnel device (default trellis0)")
    mesh.add_argument(
        "--underlay-mtu", type=int, default=1500, help="MTU of the path to peers (default 1500)"
    )
    mesh.add_argument(
        "--keylog",
        type=Path,
        metavar="DIR",
        help="write Wireshark key logs (ikev2_decryption_table, esp_sa; 0600) to DIR: troubleshooting only",
    )
    run.add_argument(
        "--endpoint",
        type=_endpoint,
        action="append",
        default=[],
        help="ADDRESS[:PORT] where peers reach this site's IKE (repeatable; default: the address facing "
        "the controller, port 500)",
    )
    run.add_argument("--max-backoff", type=float, default=30.0, help="longest wait between reconnects (s)")
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    run.add_argument("--log-format", choices=LOG_FORMATS, default="text")

    status = commands.add_parser(
        "status",
        help="identity, certificate, controller connection, map version; IKE and CHILD SAs, data-plane "
        "counters",
        description="Show what a running agent says of itself. With --state-dir: the identity, "
        f"certificate and controller connection, and the tunnels from DIR/{STATUS_FILE_NAME} (IKE SAs, "
        "CHILD SAs with SPIs, selectors and lifetimes, packets, bytes and drops per SA and per reason). "
        "With --config FILE: the tunnels of the agent run with that configuration (its state_dir, or "
        "its status_file).",
    )
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", type=Path, help="the agent's state directory")
    where.add_argument("--config", type=Path, metavar="FILE", help="the configuration the agent runs with")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


async def run_static(args: argparse.Namespace) -> int:
    from trellis.agent.site.config import load_site_config, with_backend
    from trellis.agent.site.static import StaticSite

    if args.controller or token_from(args):
        raise StateError("--config runs static peers without a controller: drop --controller and the token")
    # netlink chatter (every route and link message) would drown the agent's own debug log
    logging.getLogger("pyroute2").setLevel(max(logging.INFO, logging.getLogger().level))
    config = load_site_config(args.config)
    if args.dataplane is not None:
        config = with_backend(config, Backend(args.dataplane))
    site = StaticSite(config, state_dir=args.state_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await site.run(stop)
    except SiteFailed as e:
        print(f"trellis-agent: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, DataplaneError) as e:
        raise StateError(f"cannot run the site: {e}") from None
    return EXIT_OK


async def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        return await run_static(args)
    return await run_managed(args)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_report(state_dir: Path) -> dict[str, Any]:
    state = StateDir(state_dir)
    settings = state.load_settings()
    certificate: x509.Certificate = state.load_identity().certificate
    running = state.read_status() or {}
    alive = _pid_alive(running.get("pid"))
    now = dt.datetime.now(dt.UTC)
    stored_map = state.load_map()
    return {
        "identity": settings.identity,
        "site": settings.site,
        "controller": settings.controller,
        "certificate": {
            "serial": format(certificate.serial_number, "x"),
            "not_before": certificate.not_valid_before_utc.isoformat(),
            "not_after": certificate.not_valid_after_utc.isoformat(),
            "expired": certificate.not_valid_after_utc <= now,
        },
        "running": alive,
        "pid": running.get("pid") if alive else None,
        "connection": running.get("connection", "stopped") if alive else "stopped",
        "last_error": running.get("last_error", ""),
        "map_version": stored_map.version if stored_map else None,
        "peers": len(stored_map.peers) if stored_map else 0,
        "revoked_identities": len(stored_map.revoked_identities) if stored_map else 0,
        "map_received_at": running.get("map_received_at"),
    }


def tunnels_report(document: dict[str, Any] | None, path: Path) -> dict[str, Any]:
    """What the running site wrote of its tunnels (None: nothing yet), and whether it runs."""
    alive = document is not None and _pid_alive(document.get("pid"))
    return {"status_file": str(path), "running": alive, "site": document}


def static_status_report(config_path: Path) -> dict[str, Any]:
    from trellis.agent.site.config import load_site_config

    config = load_site_config(config_path)
    if config.state_dir is not None:
        path = config.state_dir / STATUS_FILE_NAME
    elif config.ike.status_file is not None:
        path = config.ike.status_file
    else:
        raise StateError(f"{config_path} names neither state_dir nor status_file: no status to show")
    return {"mode": "static", "tunnels": tunnels_report(read_status_file(path), path)}


def full_status_report(state_dir: Path) -> dict[str, Any]:
    """The control-plane report (if DIR holds an identity) and the tunnels (if a site runs)."""
    path = state_dir / STATUS_FILE_NAME
    tunnels = tunnels_report(read_status_file(path), path)
    if not (state_dir / SETTINGS_FILE).exists():
        if tunnels["site"] is None:
            raise StateError(f"{state_dir} holds no agent state (no identity, no {STATUS_FILE_NAME})")
        return {"mode": "static", "tunnels": tunnels}
    return {"mode": "controller", **status_report(state_dir), "tunnels": tunnels}


def render_tunnels(tunnels: dict[str, Any]) -> str:
    if tunnels["site"] is None:
        return f"tunnels:      no status yet ({tunnels['status_file']})"
    return render_site_status(tunnels["site"], running=tunnels["running"])


def render_full_status(report: dict[str, Any]) -> str:
    parts = [render_status(report)] if report["mode"] == "controller" else []
    if report["mode"] == "static" or report["tunnels"]["site"] is not None:
        parts.append(render_tunnels(report["tunnels"]))
    return "\n".join(parts)


def render_status(report: dict[str, Any]) -> str:
    cert = report["certificate"]
    not_after = dt.datetime.fromisoformat(cert["not_after"])
    left = not_after - dt.datetime.now(dt.UTC)
    validity = "expired" if cert["expired"] else f"valid for {format_duration(left)}"
    connection = report["connection"] + (f" ({report['last_error']})" if report["last_error"] else "")
    lines = [
        f"identity:     {report['identity']}",
        f"certificate:  {cert['serial']}, until {not_after.isoformat()} ({validity})",
        f"agent:        {'running, pid ' + str(report['pid']) if report['running'] else 'not running'}",
        f"controller:   {report['controller']}: {connection}",
        f"network map:  version {report['map_version'] if report['map_version'] is not None else '-'}, "
        f"{report['peers']} peers, {report['revoked_identities']} revoked identities",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "status":
            report = static_status_report(args.config) if args.config else full_status_report(args.state_dir)
            print(json.dumps(report, indent=2) if args.json else render_full_status(report))
            return EXIT_OK
        setup_logging(args.log_level, args.log_format)
        return asyncio.run(run(args))
    except (StateError, TokenFormatError, ValueError) as e:
        print(f"trellis-agent: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ControlError as e:
        print(f"trellis-agent: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
