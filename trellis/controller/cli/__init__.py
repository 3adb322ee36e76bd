"""trellisctl, the administrator's command-line client."""

from trellis.controller.cli.main import main as main

__all__ = ["main"]
