"""Running commands, in the root namespace or inside a network namespace, for the lab.

Foreground commands return their output and raise :class:`CommandError` (argv, exit code, stdout
and stderr in the message) when they fail. Background processes write stdout and stderr to a log
file so that a failing test can show what the process said.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

DEFAULT_TIMEOUT = 30.0
# How long a background process gets to exit after SIGTERM before it is killed.
STOP_GRACE = 5.0
LOG_TAIL_LINES = 40


class LabError(RuntimeError):
    """The lab could not do what was asked (a command failed, a process died, a timeout)."""


class CommandError(LabError):
    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"command failed with exit code {returncode}: {' '.join(argv)}\n"
            f"stdout: {_tail(stdout)}\nstderr: {_tail(stderr)}"
        )


def netns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that it runs in network namespace ``netns`` (None: the current one)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion (in ``netns`` if given) and return its captured output."""
    full = netns_argv(netns, argv)
    try:
        done = subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_merged_env(env),
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise LabError(f"command timed out after {timeout}s: {' '.join(full)}") from e
    if check and done.returncode != 0:
        raise CommandError(full, done.returncode, done.stdout, done.stderr)
    return done


class BackgroundProcess:
    """A long-running process whose stdout and stderr go to ``log_path``.

    It runs in its own session, so that stopping it also stops any children it started.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log_path: Path,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = netns_argv(netns, argv)
        self.netns = netns
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_merged_env(env),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self._popen.pid

    def poll(self) -> int | None:
        """The exit code, or None while the process runs."""
        return self._popen.poll()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; LabError (with its output) after ``timeout``."""
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LabError(f"{self.name} still running after {timeout}s\n{self.output_tail()}") from None

    def stop(self, grace: float = STOP_GRACE, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` to the process group, SIGKILL it after ``grace`` seconds; returns the exit code."""
        if self._popen.poll() is None:
            self._signal_group(sig)
            try:
                self._popen.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait(grace)
        return self._popen.returncode

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        text = "\n".join(self.output().splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ({self.name}) ---\n{text}"

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._popen.pid, sig)

    def __repr__(self) -> str:
        return f"BackgroundProcess({self.name!r}, pid={self.pid}, netns={self.netns!r})"


def wait_until(what: str, predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> None:
    """Poll ``predicate()`` until it is truthy; LabError saying we waited for ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _merged_env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    if env is None:
        return None
    merged = dict(os.environ)
    merged.update(env)
    return merged


def _tail(text: str, limit: int = 2000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]
