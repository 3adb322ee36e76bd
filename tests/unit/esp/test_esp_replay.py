"""Anti-replay window edge cases (RFC 4303 section 3.4.3 and Appendix A)."""

from __future__ import annotations

import pytest

from trellis.agent.esp.errors import EspLocalError, ReplayedPacket
from trellis.agent.esp.replay import ReplayWindow

LOW = 1 << 32


def receive(window: ReplayWindow, seq_low: int) -> int:
    seq = window.check(seq_low)
    window.accept(seq)
    return seq


def test_sequence_zero_is_never_valid() -> None:
    window = ReplayWindow(1024, esn=False)
    with pytest.raises(ReplayedPacket):
        window.check(0)
    assert receive(window, 1) == 1


def test_duplicates_are_rejected_in_and_out_of_order() -> None:
    window = ReplayWindow(1024, esn=False)
    for seq in (1, 5, 3, 2, 4):
        receive(window, seq)
    for seq in (1, 2, 3, 4, 5):
        with pytest.raises(ReplayedPacket):
            window.check(seq)
    assert receive(window, 6) == 6


def test_exact_window_edge() -> None:
    window = ReplayWindow(1024, esn=False)
    receive(window, 2000)
    assert receive(window, 2000 - 1023) == 977  # the oldest slot of a 1024 window
    with pytest.raises(ReplayedPacket):
        window.check(976)  # one to the left of it
    with pytest.raises(ReplayedPacket):
        window.check(977)


def test_window_of_at_least_1024_accepts_late_packets() -> None:
    window = ReplayWindow(4096, esn=False)
    for seq in range(1, 5001):
        if seq % 2:
            receive(window, seq)
    for seq in range(5000 - 4094, 5001, 2):  # every even number still inside the window
        receive(window, seq)
    with pytest.raises(ReplayedPacket):
        window.check(5000 - 4096)


def test_a_big_jump_forgets_the_old_window() -> None:
    window = ReplayWindow(1024, esn=False)
    receive(window, 10)
    receive(window, 100_000)
    assert receive(window, 100_000 - 1023) == 100_000 - 1023
    with pytest.raises(ReplayedPacket):
        window.check(10)


def test_check_alone_does_not_move_the_window() -> None:
    """A forged packet (check passes, ICV fails, no accept) must not shift the window."""
    window = ReplayWindow(1024, esn=False)
    receive(window, 1)
    assert window.check(1_000_000) == 1_000_000
    assert receive(window, 2) == 2
    assert window.top == 2


def test_esn_infers_the_next_cycle_across_the_wrap() -> None:
    window = ReplayWindow(1024, esn=True)
    window.accept(LOW - 10)
    assert receive(window, 5) == LOW + 5
    # still inside the window, from before the wrap (case B: previous cycle)
    assert receive(window, LOW - 20 & 0xFFFFFFFF) == LOW - 20
    with pytest.raises(ReplayedPacket):
        window.check(LOW - 10 & 0xFFFFFFFF)


def test_esn_case_a_far_ahead_and_far_behind() -> None:
    window = ReplayWindow(1024, esn=True)
    window.accept(5 * LOW + 50_000)
    assert window.check(60_000) == 5 * LOW + 60_000
    assert window.check(49_000) == 5 * LOW + 49_000
    # below the window bottom: taken as the next cycle (RFC 4303 A2.2, case A)
    assert window.check(100) == 6 * LOW + 100


def test_esn_cannot_start_in_a_negative_cycle() -> None:
    window = ReplayWindow(1024, esn=True)
    with pytest.raises(ReplayedPacket):
        window.check(0xFFFFFFFF)  # would be the cycle before 0
    assert receive(window, 1) == 1


def test_without_esn_large_numbers_are_plain() -> None:
    window = ReplayWindow(1024, esn=False)
    assert receive(window, 0xFFFFFFFF) == 0xFFFFFFFF
    with pytest.raises(ReplayedPacket):
        window.check(5)


@pytest.mark.parametrize("size", [0, 31, 1 << 17])
def test_window_size_bounds(size: int) -> None:
    with pytest.raises(EspLocalError):
        ReplayWindow(size, esn=False)
