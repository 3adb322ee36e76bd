"""Time in policies: absolute windows (not_before / not_after) and weekly UTC schedules.

All instants are timezone-aware ``datetime`` values; arithmetic stays in ``timedelta`` so that
boundaries are exact to the microsecond. Windows are half-open: a rule with
``not_before: T1, not_after: T2`` applies at T1 and stops applying at T2; a schedule
``mon 08:00-18:00`` applies from 08:00:00 up to, not including, 18:00:00.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

WEEK = dt.timedelta(weeks=1)
DAY = dt.timedelta(days=1)
# A Monday at 00:00 UTC: the origin from which positions in the week are measured.
_MONDAY = dt.datetime(1970, 1, 5, tzinfo=dt.UTC)

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# Bound on the number of windows in one schedule (the text comes from an administrator, but a
# pathological schedule must not make next_change expensive).
MAX_SCHEDULE_WINDOWS = 64

_TIME_RANGE = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


class ScheduleError(ValueError):
    """A schedule string that does not follow the grammar; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class WeeklySchedule:
    """The union of weekly UTC windows, as half-open offsets from Monday 00:00.

    ``windows`` are merged, sorted and may extend past the end of the week (an overnight window
    on Sunday ends on Monday); ``text`` is what the policy said.
    """

    text: str
    windows: tuple[tuple[dt.timedelta, dt.timedelta], ...]

    @property
    def always(self) -> bool:
        return any(end - start >= WEEK for start, end in self.windows)

    def contains(self, at: dt.datetime) -> bool:
        offset = (at - _MONDAY) % WEEK
        return any(start <= offset < end or start <= offset + WEEK < end for start, end in self.windows)

    def next_boundary(self, after: dt.datetime) -> dt.datetime | None:
        """The first instant strictly after ``after`` at which ``contains`` changes, if any."""
        if self.always:
            return None
        offset = (after - _MONDAY) % WEEK
        best: dt.timedelta | None = None
        for boundary in self._boundaries():
            delta = (boundary - offset) % WEEK
            if delta == dt.timedelta(0):
                delta = WEEK
            if best is None or delta < best:
                best = delta
        return None if best is None else after + best

    def _boundaries(self) -> list[dt.timedelta]:
        # Ends that coincide (modulo a week) with another window's start are not real flips.
        starts = {start % WEEK for start, _ in self.windows}
        ends = {end % WEEK for _, end in self.windows}
        return sorted(starts.symmetric_difference(ends))


def parse_schedule(text: str) -> WeeklySchedule:
    """Parse ``DAYS HH:MM-HH:MM[, DAYS HH:MM-HH:MM ...]`` (UTC).

    DAYS is ``daily``, ``*``, a day (``mon``), a range (``mon-fri``, wrapping ``fri-mon``) or a
    comma list of those without spaces (``mon,wed,fri-sat``). The time range may cross midnight
    (``22:00-06:00`` starts on the listed days and ends the next morning); ``24:00`` ends a day.
    Several windows are separated by ``;``.
    """
    windows: list[tuple[dt.timedelta, dt.timedelta]] = []
    parts = [part.strip() for part in text.split(";")]
    if not text.strip():
        raise ScheduleError("empty schedule: expected e.g. 'mon-fri 08:00-18:00'")
    for part in parts:
        fields = part.split()
        if len(fields) != 2:
            raise ScheduleError(f"expected 'DAYS HH:MM-HH:MM', e.g. 'mon-fri 08:00-18:00', got {part!r}")
        days = _parse_days(fields[0])
        start, end = _parse_time_range(fields[1])
        windows.extend((day * DAY + start, day * DAY + end) for day in days)
    if len(windows) > MAX_SCHEDULE_WINDOWS:
        raise ScheduleError(f"too many windows ({len(windows)}; at most {MAX_SCHEDULE_WINDOWS})")
    return WeeklySchedule(text=text, windows=_merge(windows))


def _parse_days(text: str) -> list[int]:
    if text in ("daily", "*"):
        return list(range(7))
    days: list[int] = []
    for item in text.split(","):
        if "-" in item:
            first, _, last = item.partition("-")
            lo, hi = _day(first), _day(last)
            span = (hi - lo) % 7
            days.extend((lo + i) % 7 for i in range(span + 1))
        else:
            days.append(_day(item))
    return sorted(set(days))


def _day(text: str) -> int:
    if text not in DAY_NAMES:
        raise ScheduleError(
            f"unknown day {text!r}: use {', '.join(DAY_NAMES)}, a range such as mon-fri, or daily"
        )
    return DAY_NAMES.index(text)


def _parse_time_range(text: str) -> tuple[dt.timedelta, dt.timedelta]:
    match = _TIME_RANGE.match(text)
    if match is None:
        raise ScheduleError(f"expected a time range HH:MM-HH:MM (UTC), got {text!r}")
    h1, m1, h2, m2 = (int(group) for group in match.groups())
    for hours, minutes in ((h1, m1), (h2, m2)):
        if minutes > 59 or hours > 24 or (hours == 24 and minutes != 0):
            raise ScheduleError(f"invalid time {hours:02d}:{minutes:02d} in {text!r}: use 00:00 to 24:00")
    start = dt.timedelta(hours=h1, minutes=m1)
    end = dt.timedelta(hours=h2, minutes=m2)
    if start == end or (start == DAY and end == dt.timedelta(0)):
        raise ScheduleError(f"empty window {text!r}: start and end are the same time")
    if end < start:
        end += DAY  # crosses midnight: ends the next day
    if start >= DAY:
        raise ScheduleError(f"a window cannot start at 24:00 in {text!r}")
    return start, end


def _merge(windows: list[tuple[dt.timedelta, dt.timedelta]]) -> tuple[tuple[dt.timedelta, dt.timedelta], ...]:
    merged: list[tuple[dt.timedelta, dt.timedelta]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    # A window spilling past Sunday midnight may overlap windows at the start of the week.
    if len(merged) > 1 and merged[-1][1] > WEEK:
        spill = merged[-1][1] - WEEK
        while len(merged) > 1 and merged[0][0] <= spill:
            first = merged.pop(0)
            spill = max(spill, first[1])
            merged[-1] = (merged[-1][0], spill + WEEK)
    return tuple(merged)


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """When a rule applies: absolute bounds and an optional weekly schedule."""

    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    schedule: WeeklySchedule | None = None

    @property
    def unconditional(self) -> bool:
        return self.not_before is None and self.not_after is None and self.schedule is None

    def active(self, at: dt.datetime) -> bool:
        if self.not_before is not None and at < self.not_before:
            return False
        if self.not_after is not None and at >= self.not_after:
            return False
        return self.schedule is None or self.schedule.contains(at)

    def next_flip(self, after: dt.datetime) -> dt.datetime | None:
        """The first instant strictly after ``after`` at which ``active`` changes, or None."""
        if self.unconditional:
            return None
        if self.not_after is not None and after >= self.not_after:
            return None  # expired for good
        if self.active(after):
            candidates = [self.not_after] if self.not_after is not None else []
            if self.schedule is not None:
                closing = self.schedule.next_boundary(after)
                if closing is not None:
                    candidates.append(closing)
            return min(candidates) if candidates else None
        # Inactive now: it opens at not_before, or at the next schedule opening after that.
        origin = after
        if self.not_before is not None and self.not_before > after:
            if self.active(self.not_before):
                return self.not_before
            origin = self.not_before
        if self.schedule is None:
            return None
        opening = self.schedule.next_boundary(origin)
        if opening is None or (self.not_after is not None and opening >= self.not_after):
            return None
        return opening

    def describe(self) -> str:
        parts: list[str] = []
        if self.not_before is not None:
            parts.append(f"not before {format_instant(self.not_before)}")
        if self.not_after is not None:
            parts.append(f"not after {format_instant(self.not_after)}")
        if self.schedule is not None:
            parts.append(f"schedule {self.schedule.text!r}")
        return ", ".join(parts) if parts else "always"


def format_instant(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
