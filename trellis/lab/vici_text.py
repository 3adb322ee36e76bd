"""Structured data from swanctl's ``--pretty`` output, and typed IKE/CHILD SA records.

``--pretty`` prints one item a line (``name {``, ``key = value``, ``key = [``, a list item, ``]``,
``}``), which, unlike ``--raw``, stays unambiguous when a value contains spaces (DN identities do).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from trellis.lab.process import LabError

VICI_SECTION = dict[str, "VICI_VALUE"]
VICI_VALUE = str | list[str] | dict[str, "VICI_VALUE"]


class SwanctlOutputError(LabError):
    """swanctl printed something this parser does not understand."""


def parse_pretty(text: str) -> list[tuple[str, VICI_SECTION]]:
    """Parse ``swanctl ... --pretty`` output into its top-level messages (name, tree).

    Messages look like ``list-sa event {`` ... ``}``; nested sections become dicts, lists become
    lists of strings, values strings."""
    messages: list[tuple[str, VICI_SECTION]] = []
    stack: list[VICI_SECTION] = []
    current_list: list[str] | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if current_list is not None:
            if line == "]":
                current_list = None
            else:
                current_list.append(line)
            continue
        if line.endswith("{") and " = " not in line:
            name = line[:-1].strip()
            section: VICI_SECTION = {}
            if stack:
                stack[-1][name] = section
            else:
                messages.append((name, section))
            stack.append(section)
        elif line == "}":
            if not stack:
                raise SwanctlOutputError(f"line {lineno}: '}}' without an open section")
            stack.pop()
        elif " = " in line or line.endswith(" ="):
            key, _, value = line.partition(" =")
            value = value.strip()
            if not stack:
                raise SwanctlOutputError(f"line {lineno}: value outside a section: {raw!r}")
            if value == "[":
                current_list = []
                stack[-1][key] = current_list
            else:
                stack[-1][key] = value
        # swanctl also prints plain status lines (e.g. "no SAs found"): not part of the data.
        elif stack:
            raise SwanctlOutputError(f"line {lineno}: unexpected {raw!r}")
    if stack or current_list is not None:
        raise SwanctlOutputError("swanctl output ended inside a section")
    return messages


@dataclass(frozen=True, slots=True)
class ChildSa:
    name: str
    uniqueid: int
    reqid: int
    state: str
    mode: str
    protocol: str
    encap: bool
    spi_in: int
    spi_out: int
    encr_alg: str
    encr_keysize: int
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    rekey_time: int | None
    life_time: int | None
    install_time: int | None
    raw: Mapping[str, VICI_VALUE]


@dataclass(frozen=True, slots=True)
class IkeSa:
    name: str
    uniqueid: int
    state: str
    local_host: str
    local_port: int
    local_id: str
    remote_host: str
    remote_port: int
    remote_id: str
    initiator: bool
    initiator_spi: int
    responder_spi: int
    encr_alg: str | None
    encr_keysize: int | None
    prf_alg: str | None
    dh_group: str | None
    children: tuple[ChildSa, ...]
    raw: Mapping[str, VICI_VALUE]

    def find_child(self, name: str) -> ChildSa | None:
        """The newest CHILD SA called ``name`` (after a rekey there may briefly be two)."""
        matches = [c for c in self.children if c.name == name]
        return max(matches, key=lambda c: c.uniqueid) if matches else None

    def child(self, name: str) -> ChildSa:
        found = self.find_child(name)
        if found is None:
            raise KeyError(f"IKE SA {self.name} has no CHILD SA {name!r}: {[c.name for c in self.children]}")
        return found

    def summary(self) -> str:
        kids = ", ".join(f"{c.name}#{c.uniqueid}:{c.state}" for c in self.children)
        return f"{self.name}#{self.uniqueid}:{self.state}[{kids}]"


def parse_list_sas(text: str) -> list[IkeSa]:
    """The IKE SAs in ``swanctl --list-sas --pretty`` output."""
    sas = []
    for message_name, body in parse_pretty(text):
        if message_name != "list-sa event":
            continue
        for ike_name, ike in body.items():
            if isinstance(ike, dict):
                sas.append(_ike_sa(ike_name, ike))
    return sas


def _ike_sa(name: str, s: VICI_SECTION) -> IkeSa:
    children_section = s.get("child-sas", {})
    children = []
    if isinstance(children_section, dict):
        children = [_child_sa(c) for c in children_section.values() if isinstance(c, dict)]
    return IkeSa(
        name=name,
        uniqueid=_int(s, "uniqueid"),
        state=_str(s, "state"),
        local_host=_str(s, "local-host"),
        local_port=_int(s, "local-port"),
        local_id=_str(s, "local-id"),
        remote_host=_str(s, "remote-host"),
        remote_port=_int(s, "remote-port"),
        remote_id=_str(s, "remote-id"),
        initiator=s.get("initiator") == "yes",
        initiator_spi=_hex(s, "initiator-spi"),
        responder_spi=_hex(s, "responder-spi"),
        encr_alg=_opt_str(s, "encr-alg"),
        encr_keysize=_opt_int(s, "encr-keysize"),
        prf_alg=_opt_str(s, "prf-alg"),
        dh_group=_opt_str(s, "dh-group"),
        children=tuple(children),
        raw=s,
    )


def _child_sa(s: VICI_SECTION) -> ChildSa:
    return ChildSa(
        name=_str(s, "name"),
        uniqueid=_int(s, "uniqueid"),
        reqid=_int(s, "reqid"),
        state=_str(s, "state"),
        mode=_str(s, "mode"),
        protocol=_str(s, "protocol"),
        encap=s.get("encap") == "yes",
        spi_in=_hex(s, "spi-in"),
        spi_out=_hex(s, "spi-out"),
        encr_alg=_str(s, "encr-alg"),
        encr_keysize=_opt_int(s, "encr-keysize") or 0,
        bytes_in=_int(s, "bytes-in"),
        bytes_out=_int(s, "bytes-out"),
        packets_in=_int(s, "packets-in"),
        packets_out=_int(s, "packets-out"),
        local_ts=_list(s, "local-ts"),
        remote_ts=_list(s, "remote-ts"),
        rekey_time=_opt_int(s, "rekey-time"),
        life_time=_opt_int(s, "life-time"),
        install_time=_opt_int(s, "install-time"),
        raw=s,
    )


def _str(s: VICI_SECTION, key: str) -> str:
    value = s.get(key)
    if not isinstance(value, str):
        raise SwanctlOutputError(f"expected a value for {key!r}, got {value!r}")
    return value


def _opt_str(s: VICI_SECTION, key: str) -> str | None:
    return _str(s, key) if key in s else None


def _int(s: VICI_SECTION, key: str) -> int:
    value = _str(s, key)
    try:
        return int(value)
    except ValueError:
        raise SwanctlOutputError(f"{key!r} is not a number: {value!r}") from None


def _opt_int(s: VICI_SECTION, key: str) -> int | None:
    return _int(s, key) if key in s else None


def _hex(s: VICI_SECTION, key: str) -> int:
    value = _str(s, key)
    try:
        return int(value, 16)
    except ValueError:
        raise SwanctlOutputError(f"{key!r} is not hexadecimal: {value!r}") from None


def _list(s: VICI_SECTION, key: str) -> tuple[str, ...]:
    value = s.get(key, [])
    if not isinstance(value, list):
        raise SwanctlOutputError(f"expected a list for {key!r}, got {value!r}")
    return tuple(value)
