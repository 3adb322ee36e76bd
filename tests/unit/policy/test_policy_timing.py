"""Weekly schedules and absolute windows, with the clock passed in."""

from __future__ import annotations

import datetime as dt

import pytest

from trellis.controller.policy.timing import (
    MAX_SCHEDULE_WINDOWS,
    ScheduleError,
    TimeWindow,
    parse_schedule,
)

UTC = dt.UTC


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    """June 2025: the 2nd is a Monday, so day 2..8 is mon..sun."""
    return dt.datetime(2025, 6, day, hour, minute, second, tzinfo=UTC)


def test_office_hours() -> None:
    office = parse_schedule("mon-fri 08:00-18:00")
    assert not office.contains(at(2, 7, 59, 59))
    assert office.contains(at(2, 8))  # opens at 08:00 inclusive
    assert office.contains(at(6, 17, 59, 59))  # friday
    assert not office.contains(at(6, 18))  # closes at 18:00 exclusive
    assert not office.contains(at(7, 12))  # saturday
    assert office.next_boundary(at(2, 7)) == at(2, 8)
    assert office.next_boundary(at(2, 8)) == at(2, 18)  # strictly after
    assert office.next_boundary(at(6, 18)) == at(9, 8)  # friday evening -> monday morning


def test_overnight_window_wraps_the_week() -> None:
    nights = parse_schedule("sun 22:00-06:00")
    assert nights.contains(at(8, 23))  # sunday night
    assert nights.contains(at(9, 5, 59))  # monday early (the week wrapped)
    assert not nights.contains(at(9, 6))
    assert not nights.contains(at(2, 23))  # monday night is not listed
    assert nights.next_boundary(at(9, 1)) == at(9, 6)
    assert nights.next_boundary(at(9, 6)) == at(15, 22)


def test_day_lists_ranges_and_daily() -> None:
    assert parse_schedule("mon,wed 10:00-11:00").contains(at(4, 10, 30))
    assert not parse_schedule("mon,wed 10:00-11:00").contains(at(3, 10, 30))
    wrapping = parse_schedule("fri-mon 00:00-24:00")
    assert [wrapping.contains(at(d, 12)) for d in range(2, 9)] == [
        True,
        False,
        False,
        False,
        True,
        True,
        True,
    ]
    assert parse_schedule("daily 12:00-13:00").contains(at(5, 12, 30))
    assert parse_schedule("* 12:00-13:00").contains(at(7, 12, 30))


def test_several_windows_and_merging() -> None:
    split = parse_schedule("mon 08:00-12:00; mon 12:00-18:00")
    assert split.windows == parse_schedule("mon 08:00-18:00").windows  # adjacent windows merge
    assert split.next_boundary(at(2, 9)) == at(2, 18)  # 12:00 is not a real change


def test_full_week_never_changes() -> None:
    always = parse_schedule("daily 00:00-24:00")
    assert always.always
    assert always.contains(at(4, 3))
    assert always.next_boundary(at(4, 3)) is None
    # The same week, written with an overnight window spilling into Monday.
    spill = parse_schedule("mon-sat 00:00-24:00; sun 00:00-02:00; sun 01:00-00:00")
    assert spill.always


def test_schedule_bound() -> None:
    many = "; ".join(f"daily {h:02d}:00-{h:02d}:30" for h in range(10))  # 70 windows
    with pytest.raises(ScheduleError, match=f"at most {MAX_SCHEDULE_WINDOWS}"):
        parse_schedule(many)


def test_window_bounds_are_half_open() -> None:
    window = TimeWindow(not_before=at(2, 9), not_after=at(2, 10))
    assert not window.active(at(2, 8, 59, 59))
    assert window.active(at(2, 9))
    assert window.active(at(2, 9, 59, 59))
    assert not window.active(at(2, 10))


@pytest.mark.parametrize(
    ("now", "flip"),
    [
        (at(2, 8), at(2, 9)),  # not yet open: opens at not_before
        (at(2, 9, 30), at(2, 10)),  # open: closes at not_after
        (at(2, 10), None),  # expired for good
    ],
)
def test_absolute_window_flips(now: dt.datetime, flip: dt.datetime | None) -> None:
    assert TimeWindow(not_before=at(2, 9), not_after=at(2, 10)).next_flip(now) == flip


def test_schedule_within_absolute_bounds() -> None:
    # Office hours, but only from Wednesday noon until Thursday 10:00.
    window = TimeWindow(
        not_before=at(4, 12), not_after=at(5, 10), schedule=parse_schedule("mon-fri 08:00-18:00")
    )
    assert window.next_flip(at(2, 9)) == at(4, 12)  # opens at not_before, inside office hours
    assert window.next_flip(at(4, 12)) == at(4, 18)  # closes with the office
    assert window.next_flip(at(4, 18)) == at(5, 8)  # reopens next morning
    assert window.next_flip(at(5, 8)) == at(5, 10)  # closes at not_after, before the office does
    assert window.next_flip(at(5, 10)) is None
    # not_before at night: the first opening is the next office morning.
    late = TimeWindow(not_before=at(4, 20), schedule=parse_schedule("mon-fri 08:00-18:00"))
    assert late.next_flip(at(2, 9)) == at(5, 8)
    # A schedule that would reopen only after not_after never flips again.
    ending = TimeWindow(not_after=at(4, 20), schedule=parse_schedule("mon-fri 08:00-18:00"))
    assert ending.next_flip(at(4, 18)) is None


def test_unconditional_window_never_flips() -> None:
    assert TimeWindow().next_flip(at(2, 9)) is None
    assert TimeWindow().active(at(2, 9))
    assert TimeWindow().describe() == "always"
    described = TimeWindow(not_after=at(2, 10), schedule=parse_schedule("mon 08:00-18:00")).describe()
    assert described == "not after 2025-06-02T10:00:00Z, schedule 'mon 08:00-18:00'"


def test_next_flip_agrees_with_active_minute_by_minute() -> None:
    """Walk a week and a half minute by minute: active() changes exactly at each next_flip()."""
    window = TimeWindow(
        not_before=at(3, 10, 30),
        not_after=at(12, 9),
        schedule=parse_schedule("mon,wed-fri 09:00-17:30; sun 23:00-01:00"),
    )
    now = at(2, 0)
    flip = window.next_flip(now)
    state = window.active(now)
    step = dt.timedelta(minutes=1)
    while now < at(13, 0):
        now += step
        if window.active(now) != state:
            assert flip == now
            state = not state
            flip = window.next_flip(now)
        else:
            assert flip is None or flip > now
