"""What every trellisctl command gets (a connection) and gives back (an answer, two ways)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message

from trellis.controller.cli.connection import call


def command(parser: argparse.ArgumentParser, run: Callable[[Context, argparse.Namespace], Result]) -> None:
    """Make ``parser`` a runnable command; it also takes --json after the command's own words
    (``trellisctl site list --json``), as well as before them."""
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser.set_defaults(run=run)


@dataclass(frozen=True, slots=True)
class Context:
    channel: grpc.Channel
    controller: str
    timeout: float

    def call(self, method: Callable[..., Any], request: Message) -> Any:
        return call(method, request, controller=self.controller, timeout=self.timeout)


@dataclass(frozen=True, slots=True)
class Result:
    message: Message  # printed as JSON with --json
    text: str  # printed otherwise
    exit_code: int = 0
