"""trellis-lab: local environments for trying and testing Trellis on one machine."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from trellis import __version__
from trellis.lab.demo import DemoError, run_demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trellis-lab", description="Local Trellis environments on this machine."
    )
    parser.add_argument("--version", action="version", version=f"trellis-lab {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
        return run_demo(args.dir, keep_running=args.keep_running)
    except DemoError as e:
        print(f"trellis-lab: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
