"""Network namespaces for tests and the lab: a builder that always cleans up after itself.

Every namespace of one run is named ``trl-<pid>-<token>-<role>``: the pid of the process that
owns the run and a random token. Concurrent runs never collide, and leftovers of a crashed run
(its owner pid is gone) can be recognised and removed by :func:`cleanup_stale` without touching
runs that are still alive.

veth pairs are created directly inside their namespaces (``ip -n A link add ... peer ... netns B``)
so that nothing ever appears in the root namespace, and interface names only need to be unique
within their own namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from trellis.lab.process import DEFAULT_TIMEOUT, BackgroundProcess, CommandError, LabError, run

NAME_PREFIX = "trl"
_OWNED_NAME = re.compile(rf"^{NAME_PREFIX}-(?P<pid>\d+)-(?P<token>[0-9a-f]+)-")
# Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
MAX_IFNAME = 15
DEFAULT_WORKDIR_ROOT = Path(tempfile.gettempdir()) / "trellis-lab"
# How long to wait for the processes of a deleted namespace to die after SIGKILL.
KILL_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Netns:
    """A handle on one network namespace (by name); all methods run commands inside it."""

    name: str
    role: str

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this namespace; CommandError (with its output) if it fails."""
        return run(argv, netns=self.name, check=check, timeout=timeout, input=input, env=env)

    def ip(self, *args: str, check: bool = True) -> str:
        """``ip -n NAME ARGS``; returns stdout."""
        return run(["ip", "-n", self.name, *args], check=check).stdout

    def sysctl(self, key: str, value: str | int) -> None:
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def link_up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def set_mtu(self, ifname: str, mtu: int) -> None:
        self.ip("link", "set", ifname, "mtu", str(mtu))

    def add_address(
        self, ifname: str, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | str
    ) -> None:
        self.ip("addr", "add", str(address), "dev", ifname)

    def add_route(
        self,
        destination: ipaddress.IPv4Network | ipaddress.IPv6Network | str,
        *,
        via: ipaddress.IPv4Address | ipaddress.IPv6Address | str | None = None,
        dev: str | None = None,
        src: ipaddress.IPv4Address | ipaddress.IPv6Address | str | None = None,
    ) -> None:
        """``ip route add DESTINATION [via VIA] [dev DEV] [src SRC]``; DESTINATION may be "default"."""
        args = ["route", "add", str(destination)]
        if via is not None:
            args += ["via", str(via)]
        if dev is not None:
            args += ["dev", dev]
        if src is not None:
            args += ["src", str(src)]
        self.ip(*args)

    def enable_forwarding(self) -> None:
        self.sysctl("net.ipv4.ip_forward", 1)
        self.sysctl("net.ipv6.conf.all.forwarding", 1)

    def interfaces(self) -> list[str]:
        out = self.ip("-o", "link", "show")
        return [line.split(":", 2)[1].strip().split("@", 1)[0] for line in out.splitlines() if ":" in line]

    def pids(self) -> list[int]:
        """The processes whose network namespace this is."""
        return namespace_pids(self.name)

    def ping(self, destination: str, *, count: int = 1, timeout: float = 2.0) -> bool:
        """True if ``destination`` answers ``count`` echo requests (each waits at most ``timeout``)."""
        done = self.run(
            ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout), "-i", "0.2", destination],
            check=False,
            timeout=count * (timeout + 1) + 5,
        )
        # ping exits 0 when some replies came back; every one of them must have.
        return done.returncode == 0 and f" {count} received" in done.stdout


class Lab:
    """A run of the lab: namespaces, links and processes that all disappear on exit.

    Use as a context manager. On exit (also after an exception) it stops the processes it
    started, kills whatever else still runs in its namespaces, and deletes them. The working
    directory (process logs, configs, captures) is removed after a clean exit and kept after an
    exception so that its logs can be read; ``keep_workdir`` overrides that.
    """

    def __init__(
        self,
        *,
        workdir_root: Path = DEFAULT_WORKDIR_ROOT,
        keep_workdir: bool | None = None,
        ipv6: bool = False,
        remove_stale: bool = True,
    ) -> None:
        self.prefix = f"{NAME_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}"
        self.workdir = workdir_root / self.prefix
        self.keep_workdir = keep_workdir
        self.ipv6 = ipv6
        self.remove_stale = remove_stale
        self.namespaces: list[Netns] = []
        self.processes: list[BackgroundProcess] = []
        self._closed = False

    # ---- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Lab:
        if self.remove_stale:
            cleanup_stale()
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(failed=exc is not None)

    def close(self, *, failed: bool = False) -> None:
        """Stop everything and delete the namespaces. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        for process in reversed(self.processes):
            try:
                process.stop()
            except (OSError, subprocess.SubprocessError) as e:
                problems.append(f"stopping {process.name}: {e}")
        for ns in reversed(self.namespaces):
            try:
                delete_namespace(ns.name)
            except LabError as e:
                problems.append(str(e))
        keep = self.keep_workdir if self.keep_workdir is not None else failed
        if keep:
            print(f"trellis-lab: kept {self.workdir} for inspection", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            message = "lab cleanup failed:\n" + "\n".join(problems)
            if failed:
                # Do not hide the exception that ended the run behind a cleanup error.
                print(f"trellis-lab: {message}", file=sys.stderr)
            else:
                raise LabError(message)

    # ---- building ------------------------------------------------------------------------

    def namespace(self, role: str, *, forwarding: bool = False) -> Netns:
        """Create namespace ``<prefix>-<role>`` with loopback up (and IPv6 off unless ``ipv6``)."""
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,40}", role):
            raise ValueError(f"invalid namespace role {role!r}: use lowercase letters, digits and '-'")
        ns = Netns(name=f"{self.prefix}-{role}", role=role)
        if any(existing.name == ns.name for existing in self.namespaces):
            raise ValueError(f"namespace role {role!r} already exists in this lab")
        run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        if not self.ipv6:
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", 1)
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", 1)
        ns.link_up("lo")
        if forwarding:
            ns.enable_forwarding()
        return ns

    def veth(self, a: Netns, a_ifname: str, b: Netns, b_ifname: str, *, mtu: int | None = None) -> None:
        """A veth pair with end ``a_ifname`` in ``a`` and ``b_ifname`` in ``b``, both up."""
        _check_ifname(a_ifname)
        _check_ifname(b_ifname)
        mtu_args = ["mtu", str(mtu)] if mtu is not None else []
        a.ip(
            "link",
            "add",
            a_ifname,
            *mtu_args,
            "type",
            "veth",
            "peer",
            "name",
            b_ifname,
            *mtu_args,
            "netns",
            b.name,
        )
        a.link_up(a_ifname)
        b.link_up(b_ifname)

    def bridge(self, ns: Netns, name: str, *, ports: Sequence[str] = (), mtu: int | None = None) -> None:
        """A bridge in ``ns`` (no STP, no forwarding delay) enslaving ``ports``; up."""
        _check_ifname(name)
        mtu_args = ["mtu", str(mtu)] if mtu is not None else []
        ns.ip("link", "add", name, *mtu_args, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        for port in ports:
            self.bridge_port(ns, name, port)
        ns.link_up(name)

    def bridge_port(self, ns: Netns, bridge: str, port: str) -> None:
        ns.ip("link", "set", port, "master", bridge)
        ns.link_up(port)

    def start(
        self,
        ns: Netns | None,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
    ) -> BackgroundProcess:
        """Start ``argv`` in ``ns`` (None: the root namespace), output to ``<workdir>/logs/NAME.log``.

        The process is stopped when the lab closes (or earlier with ``process.stop()``)."""
        log_path = self.workdir / "logs" / f"{name}.log"
        if log_path.exists():
            raise ValueError(f"a process named {name!r} was already started in this lab")
        process = BackgroundProcess(
            argv, name=name, log_path=log_path, netns=ns.name if ns else None, env=env
        )
        self.processes.append(process)
        return process

    def path(self, *parts: str) -> Path:
        """A path inside this run's working directory (its parent directories exist)."""
        p = self.workdir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


# ---- namespaces of any run ---------------------------------------------------------------


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"]).stdout
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(name: str) -> list[int]:
    done = run(["ip", "netns", "pids", name], check=False)
    if done.returncode != 0:
        return []
    return [int(tok) for tok in done.stdout.split() if tok.isdigit()]


def delete_namespace(name: str) -> None:
    """Kill every process in namespace ``name``, then delete it. A missing namespace is fine."""
    if name not in list_namespaces():
        return
    pids = namespace_pids(name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if process_alive(p)]
        time.sleep(0.05)
    try:
        run(["ip", "netns", "del", name])
    except CommandError as e:
        raise LabError(f"could not delete namespace {name}: {e.stderr.strip()}") from e


def owner_pid(name: str) -> int | None:
    """The pid that owns a lab namespace, from its name; None if the name is not a lab's."""
    m = _OWNED_NAME.match(name)
    return int(m.group("pid")) if m else None


def cleanup_stale() -> list[str]:
    """Delete the namespaces of lab runs whose owning process has died; returns their names.

    Runs whose owner is alive (including other concurrent test runs) are never touched."""
    removed = []
    for name in list_namespaces():
        pid = owner_pid(name)
        if pid is None or process_alive(pid):
            continue
        delete_namespace(name)
        removed.append(name)
    return removed


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which has exited but is not reaped yet, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited: it only waits for its parent to reap it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _check_ifname(name: str) -> None:
    if not 0 < len(name.encode()) <= MAX_IFNAME or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"invalid interface name {name!r}: 1-{MAX_IFNAME} characters [A-Za-z0-9_.-]")
