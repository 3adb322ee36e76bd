"""trellis-lab: local environments for trying and testing Trellis on one machine."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from trellis import __version__
from trellis.lab.demo import DemoError, run_demo
from trellis.lab.process import LabError
from trellis.lab.up import run_up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trellis-lab", description="Local Trellis environments on this machine."
    )
    parser.add_argument("--version", action="version", version=f"trellis-lab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser(
        "up",
        help="a controller and three sites in network namespaces, with tunnels, policy and a revocation",
        description="Build a controller and three sites (hq, branch-a, branch-b) in network namespaces, "
        "enroll their agents, apply a policy, let them build IKEv2/ESP tunnels, check what traffic "
        "passes, revoke a site, and tear it all down (needs root).",
    )
    up.add_argument("--keep-running", action="store_true", help="keep the lab until Ctrl-C")
    demo = commands.add_parser(
        "demo",
        help="a controller on the embedded defaults (SQLite) and two agents enrolling on loopback",
        description="Start a controller (SQLite in DIR), add two sites, run two agents that enroll with "
        "join tokens, and show their identities and certificate lifetimes. Everything stays on loopback.",
    )
    demo.add_argument("--dir", type=Path, default=Path("lab-data"), help="working directory (recreated)")
    demo.add_argument("--keep-running", action="store_true", help="keep the processes until Ctrl-C")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.keep_running:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if args.command == "up":
            return run_up(keep_running=args.keep_running)
        return run_demo(args.dir, keep_running=args.keep_running)
    except (DemoError, LabError) as e:
        print(f"trellis-lab: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
