"""Keys from a charon log written at IKE/CHD level 4, for decrypting its traffic with Wireshark.

Debian's strongSwan lacks the save-keys plugin, but at log level 4 charon's keymat_v2.c dumps
what it derives: ``Sk_ei secret => 36 bytes @ 0x...`` (IKE SA keys, RFC 7296 section 2.14) and
``encryption initiator key => ...`` (CHILD SA keys, section 2.17), each followed by hex-dump lines.
A CHILD SA's keys are followed by ``CHILD_SA NAME{N} established with SPIs IN_i OUT_o`` (after a
rekey: ``inbound CHILD_SA ...`` then ``outbound CHILD_SA ...``, the make-before-break steps).

Which key protects which direction depends on who initiated the exchange that created the CHILD
SA: the initiator's key protects initiator->responder traffic. Exchanges of one IKE SA are
processed one at a time, so the last ``parsed X request|response`` logged for that IKE SA before
the keys tells the role: a parsed *response* means we initiated, a parsed *request* that the peer did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(
    r"^\w{3} [ \d]\d \d\d:\d\d:\d\d (?P<thread>\d+)\[(?P<group>[A-Z]+)\] "
    r"(?:<(?P<ike>[^|>]*)\|(?P<ikeid>\d+)> )?(?P<msg>.*)$"
)
_DUMP_HEAD = re.compile(r"^(?P<label>.+?) => (?P<length>\d+) bytes @ 0x[0-9a-f]+$")
_DUMP_LINE = re.compile(r"^\s*(?P<offset>\d+): (?P<rest>.*)$")
_PARSED = re.compile(r"^parsed \S+ (?P<kind>request|response) \d+")
_ESTABLISHED = re.compile(
    r"^(?:inbound |outbound )?CHILD_SA (?P<name>\S+)\{(?P<uid>\d+)\} established "
    r"with SPIs (?P<in>[0-9a-f]+)_i (?P<out>[0-9a-f]+)_o"
)
_IKE_KEYS = {
    "Sk_ei secret": "sk_ei",
    "Sk_er secret": "sk_er",
    "Sk_ai secret": "sk_ai",
    "Sk_ar secret": "sk_ar",
}
_CHILD_KEYS = {
    "encryption initiator key": "encr_i",
    "encryption responder key": "encr_r",
    "integrity initiator key": "integ_i",
    "integrity responder key": "integ_r",
}
_DUMP_BYTES_PER_LINE = 16


@dataclass(frozen=True, slots=True)
class IkeKeys:
    """SK_e/SK_a of one IKE SA (SK_a empty with an AEAD). ``ike_uniqueid`` matches list_sas."""

    ike_name: str
    ike_uniqueid: int
    sk_ei: bytes
    sk_er: bytes
    sk_ai: bytes = b""
    sk_ar: bytes = b""


@dataclass(frozen=True, slots=True)
class ChildKeys:
    """Keys of one CHILD SA as seen by the charon that logged them."""

    ike_name: str
    ike_uniqueid: int
    child_name: str
    child_uniqueid: int
    spi_in: int
    spi_out: int
    initiated_by_us: bool
    encr_i: bytes
    encr_r: bytes
    integ_i: bytes = b""
    integ_r: bytes = b""

    @property
    def encr_out(self) -> bytes:
        """The key of our outbound SA (SPI ``spi_out``)."""
        return self.encr_i if self.initiated_by_us else self.encr_r

    @property
    def encr_in(self) -> bytes:
        return self.encr_r if self.initiated_by_us else self.encr_i

    @property
    def integ_out(self) -> bytes:
        return self.integ_i if self.initiated_by_us else self.integ_r

    @property
    def integ_in(self) -> bytes:
        return self.integ_r if self.initiated_by_us else self.integ_i


@dataclass(frozen=True, slots=True)
class KeyLog:
    ike: tuple[IkeKeys, ...]
    children: tuple[ChildKeys, ...]

    def ike_keys(self, ike_uniqueid: int) -> IkeKeys:
        for keys in self.ike:
            if keys.ike_uniqueid == ike_uniqueid:
                return keys
        raise KeyError(f"no IKE keys logged for IKE SA #{ike_uniqueid}")

    def child_keys(self, spi: int) -> ChildKeys:
        """The CHILD SA whose inbound or outbound SPI is ``spi``."""
        for keys in self.children:
            if spi in (keys.spi_in, keys.spi_out):
                return keys
        raise KeyError(f"no CHILD SA keys logged for SPI {spi:08x}")


@dataclass(slots=True)
class _IkeState:
    name: str = ""
    last_parsed: str | None = None
    ike: dict[str, bytes] = field(default_factory=dict)
    child: dict[str, bytes] = field(default_factory=dict)
    child_initiated_by_us: bool | None = None


@dataclass(slots=True)
class _Dump:
    ikeid: int
    label: str
    length: int
    data: bytearray


def parse_key_log(text: str) -> KeyLog:
    """Extract the IKE and CHILD SA keys from a charon log (filelog with ``ike_name = yes``)."""
    states: dict[int, _IkeState] = {}
    dumps: dict[str, _Dump] = {}  # open hex dumps by thread: dump lines of threads interleave
    ike_keys: list[IkeKeys] = []
    child_keys: list[ChildKeys] = []

    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or m.group("ikeid") is None:
            continue
        thread, ikeid, msg = m.group("thread"), int(m.group("ikeid")), m.group("msg")
        state = states.setdefault(ikeid, _IkeState())
        state.name = m.group("ike")

        dump = dumps.get(thread)
        if dump is not None:
            d = _DUMP_LINE.match(msg)
            if d and dump.ikeid == ikeid:
                wanted = min(_DUMP_BYTES_PER_LINE, dump.length - len(dump.data))
                dump.data += bytes.fromhex("".join(d.group("rest").split()[:wanted]))
                if len(dump.data) >= dump.length:
                    del dumps[thread]
                    _store(state, dump, ike_keys)
                continue
            del dumps[thread]

        head = _DUMP_HEAD.match(msg)
        if head:
            label, length = head.group("label"), int(head.group("length"))
            if label in _IKE_KEYS or label in _CHILD_KEYS:
                if label in _CHILD_KEYS and not state.child:
                    # The first key of a new CHILD SA: fix the role now (see module docstring).
                    state.child_initiated_by_us = state.last_parsed == "response"
                new = _Dump(ikeid=ikeid, label=label, length=length, data=bytearray())
                if length == 0:
                    _store(state, new, ike_keys)
                else:
                    dumps[thread] = new
            continue

        parsed = _PARSED.match(msg)
        if parsed:
            state.last_parsed = parsed.group("kind")
            continue

        established = _ESTABLISHED.match(msg)
        if established and "encr_i" in state.child:
            child_keys.append(
                ChildKeys(
                    ike_name=state.name,
                    ike_uniqueid=ikeid,
                    child_name=established.group("name"),
                    child_uniqueid=int(established.group("uid")),
                    spi_in=int(established.group("in"), 16),
                    spi_out=int(established.group("out"), 16),
                    initiated_by_us=bool(state.child_initiated_by_us),
                    encr_i=state.child["encr_i"],
                    encr_r=state.child.get("encr_r", b""),
                    integ_i=state.child.get("integ_i", b""),
                    integ_r=state.child.get("integ_r", b""),
                )
            )
            state.child = {}
    return KeyLog(ike=tuple(ike_keys), children=tuple(child_keys))


def _store(state: _IkeState, dump: _Dump, ike_keys: list[IkeKeys]) -> None:
    if dump.label in _CHILD_KEYS:
        state.child[_CHILD_KEYS[dump.label]] = bytes(dump.data)
        return
    state.ike[_IKE_KEYS[dump.label]] = bytes(dump.data)
    # SK_a come before SK_e in the log (when present); SK_er is the last key of an IKE SA.
    if dump.label == "Sk_er secret":
        ike_keys.append(
            IkeKeys(
                ike_name=state.name,
                ike_uniqueid=dump.ikeid,
                sk_ei=state.ike.get("sk_ei", b""),
                sk_er=state.ike["sk_er"],
                sk_ai=state.ike.get("sk_ai", b""),
                sk_ar=state.ike.get("sk_ar", b""),
            )
        )
        state.ike = {}
