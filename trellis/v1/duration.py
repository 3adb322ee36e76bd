"""Durations as people type them: ``90s``, ``30m``, ``1h``, ``1h30m``, ``2d``."""

from __future__ import annotations

import datetime as dt
import re

_PART = re.compile(r"(\d+)([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> dt.timedelta:
    """Parse a duration; ValueError with a readable message when it is not one."""
    compact = text.strip().lower()
    if not compact or _PART.sub("", compact):
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 30m, 1h, 1h30m, 2d")
    return dt.timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in _PART.findall(compact)))


def format_duration(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
