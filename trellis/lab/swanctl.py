"""Typed swanctl.conf for the strongSwan peers of the lab, rendered one ``key = value`` a line.

Only what the lab needs is modelled; ``extra`` on connections and children takes further
swanctl.conf options verbatim (validated like every value). Durations are seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Auth = Literal["pubkey", "psk"]
# "trap" installs the policy and waits for traffic, but kernel-libipsec (5.9.8) raises no acquire:
# it drops the packets ("could not find an outbound IPsec SA"). Initiators here use "start".
StartAction = Literal["none", "trap", "start"]
Fragmentation = Literal["yes", "no", "accept", "force"]
SendCert = Literal["always", "ifasked", "never"]

# A value that needs no quotes: what swanctl.conf reads as one plain token.
_PLAIN = re.compile(r"^[A-Za-z0-9_.:/@+=*%-]+$")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class SwanctlConfigError(ValueError):
    """A value that cannot be written into swanctl.conf safely."""


@dataclass(frozen=True, slots=True)
class AuthRound:
    """The ``local``/``remote`` section: how one end authenticates."""

    auth: Auth = "pubkey"
    id: str | None = None
    # File names under swanctl/x509 (local: our certificate; remote: a pinned peer certificate).
    certs: tuple[str, ...] = ()
    # File names under swanctl/x509ca that the peer's chain must end in (remote only).
    cacerts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    esp_proposals: tuple[str, ...] = ("aes256gcm16",)
    mode: Literal["tunnel", "transport"] = "tunnel"
    rekey_time: int | None = None
    life_time: int | None = None
    rand_time: int | None = None
    start_action: StartAction | None = None
    dpd_action: Literal["clear", "trap", "restart"] | None = None
    close_action: Literal["none", "trap", "start"] | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Connection:
    name: str
    local_addrs: tuple[str, ...]
    remote_addrs: tuple[str, ...]
    local: AuthRound
    remote: AuthRound
    children: tuple[Child, ...]
    proposals: tuple[str, ...] = ("aes256gcm16-prfsha256-x25519",)
    version: int = 2
    rekey_time: int | None = None
    reauth_time: int | None = None
    over_time: int | None = None
    rand_time: int | None = None
    dpd_delay: int | None = None
    encap: bool | None = None
    mobike: bool | None = None
    fragmentation: Fragmentation | None = None
    send_cert: SendCert | None = None
    keyingtries: int | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IkeSecret:
    """A pre-shared key for the given identities (``secrets { ike-NAME { ... } }``)."""

    name: str
    secret: str
    ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SwanctlConfig:
    connections: tuple[Connection, ...]
    secrets: tuple[IkeSecret, ...] = ()

    def render(self) -> str:
        lines: list[str] = []
        _open(lines, 0, "connections")
        for conn in self.connections:
            _render_connection(lines, 1, conn)
        _close(lines, 0)
        _open(lines, 0, "secrets")
        for secret in self.secrets:
            _open(lines, 1, f"ike-{_name(secret.name)}")
            _kv(lines, 2, "secret", _quoted(secret.secret))
            for i, ident in enumerate(secret.ids, start=1):
                _kv(lines, 2, f"id-{i}", _value(ident))
            _close(lines, 1)
        _close(lines, 0)
        return "\n".join(lines) + "\n"


def _render_connection(lines: list[str], depth: int, conn: Connection) -> None:
    _open(lines, depth, _name(conn.name))
    d = depth + 1
    _kv(lines, d, "version", str(conn.version))
    _kv(lines, d, "local_addrs", _list(conn.local_addrs))
    _kv(lines, d, "remote_addrs", _list(conn.remote_addrs))
    _kv(lines, d, "proposals", _list(conn.proposals))
    _opt_seconds(lines, d, "rekey_time", conn.rekey_time)
    _opt_seconds(lines, d, "reauth_time", conn.reauth_time)
    _opt_seconds(lines, d, "over_time", conn.over_time)
    _opt_seconds(lines, d, "rand_time", conn.rand_time)
    _opt_seconds(lines, d, "dpd_delay", conn.dpd_delay)
    _opt_bool(lines, d, "encap", conn.encap)
    _opt_bool(lines, d, "mobike", conn.mobike)
    if conn.fragmentation is not None:
        _kv(lines, d, "fragmentation", conn.fragmentation)
    if conn.send_cert is not None:
        _kv(lines, d, "send_cert", conn.send_cert)
    if conn.keyingtries is not None:
        _kv(lines, d, "keyingtries", str(conn.keyingtries))
    _extra(lines, d, conn.extra)
    for section, auth in (("local", conn.local), ("remote", conn.remote)):
        _open(lines, d, section)
        _kv(lines, d + 1, "auth", auth.auth)
        if auth.id is not None:
            _kv(lines, d + 1, "id", _value(auth.id))
        if auth.certs:
            _kv(lines, d + 1, "certs", _list(auth.certs))
        if auth.cacerts:
            _kv(lines, d + 1, "cacerts", _list(auth.cacerts))
        _close(lines, d)
    _open(lines, d, "children")
    for child in conn.children:
        _open(lines, d + 1, _name(child.name))
        c = d + 2
        _kv(lines, c, "mode", child.mode)
        _kv(lines, c, "local_ts", _list(child.local_ts))
        _kv(lines, c, "remote_ts", _list(child.remote_ts))
        _kv(lines, c, "esp_proposals", _list(child.esp_proposals))
        _opt_seconds(lines, c, "rekey_time", child.rekey_time)
        _opt_seconds(lines, c, "life_time", child.life_time)
        _opt_seconds(lines, c, "rand_time", child.rand_time)
        for key, value in (
            ("start_action", child.start_action),
            ("dpd_action", child.dpd_action),
            ("close_action", child.close_action),
        ):
            if value is not None:
                _kv(lines, c, key, value)
        _extra(lines, c, child.extra)
        _close(lines, d + 1)
    _close(lines, d)
    _close(lines, depth)


def _open(lines: list[str], depth: int, name: str) -> None:
    lines.append(f"{'  ' * depth}{name} {{")


def _close(lines: list[str], depth: int) -> None:
    lines.append(f"{'  ' * depth}}}")


def _kv(lines: list[str], depth: int, key: str, value: str) -> None:
    lines.append(f"{'  ' * depth}{key} = {value}")


def _opt_seconds(lines: list[str], depth: int, key: str, seconds: int | None) -> None:
    if seconds is not None:
        if seconds < 0:
            raise SwanctlConfigError(f"{key} must not be negative: {seconds}")
        _kv(lines, depth, key, f"{seconds}s")


def _opt_bool(lines: list[str], depth: int, key: str, flag: bool | None) -> None:
    if flag is not None:
        _kv(lines, depth, key, "yes" if flag else "no")


def _extra(lines: list[str], depth: int, extra: Mapping[str, str]) -> None:
    for key, value in extra.items():
        _kv(lines, depth, _name(key), _value(value))


def _name(name: str) -> str:
    if not _NAME.match(name):
        raise SwanctlConfigError(f"invalid swanctl.conf name {name!r}")
    return name


def _list(items: Iterable[str]) -> str:
    items = list(items)
    if not items:
        raise SwanctlConfigError("an empty list cannot be written in swanctl.conf")
    for item in items:
        if not _PLAIN.match(item):
            raise SwanctlConfigError(
                f"list item {item!r} must be a plain token (no spaces, commas or quotes)"
            )
    return ", ".join(items)


def _value(value: str) -> str:
    return value if _PLAIN.match(value) else _quoted(value)


def _quoted(value: str) -> str:
    if any(ch in value for ch in "\n\r\0"):
        raise SwanctlConfigError("swanctl.conf values cannot contain line breaks or NUL")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
