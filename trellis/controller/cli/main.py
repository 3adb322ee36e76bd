"""trellisctl: the administrator's client for the controller.

Human output by default, ``--json`` on every command for scripts. Connection settings come from
flags or from the environment (TRELLIS_CONTROLLER, TRELLIS_CREDENTIALS).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trellis import __version__
from trellis.controller.cli import policy, sites
from trellis.controller.cli.connection import DEFAULT_CONTROLLER, EXIT_USAGE, CliError, connect
from trellis.controller.cli.context import Context, Result
from trellis.controller.cli.render import as_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trellisctl",
        description="Administer a Trellis controller: sites, join tokens, revocation, policy, audit.",
        epilog="Connection: --controller or TRELLIS_CONTROLLER (default 127.0.0.1:7400); --credentials or "
        "TRELLIS_CREDENTIALS (the admin.pem that 'trellis-controller init' wrote).",
    )
    parser.add_argument("--version", action="version", version=f"trellisctl {__version__}")
    parser.add_argument("--controller", default=os.environ.get("TRELLIS_CONTROLLER", DEFAULT_CONTROLLER))
    parser.add_argument("--credentials", type=Path, default=os.environ.get("TRELLIS_CREDENTIALS"))
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sites.add_parsers(commands)
    policy.add_parsers(commands)
    return parser


def run(args: argparse.Namespace) -> Result:
    if args.credentials is None:
        raise CliError(
            "no credentials: pass --credentials PATH or set TRELLIS_CREDENTIALS "
            "(trellis-controller init writes DATA_DIR/admin.pem)",
            EXIT_USAGE,
        )
    channel = connect(args.controller, args.credentials)
    try:
        result: Result = args.run(
            Context(channel=channel, controller=args.controller, timeout=args.timeout), args
        )
        return result
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except CliError as e:
        print(f"trellisctl: error: {e}", file=sys.stderr)
        return e.code
    print(as_json(result.message) if args.json else result.text)
    return result.exit_code
