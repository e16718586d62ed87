"""Deadline arithmetic with a fixed clock: working hours, holidays, pauses, emergency factors,
the ladder's repeat cap."""

from datetime import UTC, date, datetime, timedelta

from services.escalation.deadlines import (
    CHINA_2026,
    SHANGHAI,
    LadderPolicy,
    WorkCalendar,
    add_working,
    after_pause,
    due,
    next_escalation,
    with_factor,
    working_seconds_between,
)

CAL = WorkCalendar()  # Mon–Fri 09:00–12:00, 13:30–17:30, no holidays
H = 3600


def local(y: int, m: int, d: int, hh: int, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=SHANGHAI)


def test_working_hours_skip_lunch_nights_and_weekends() -> None:
    friday_4pm = local(2026, 11, 27, 16)  # a Friday
    assert add_working(friday_4pm, 1 * H, CAL) == local(2026, 11, 27, 17)
    # 1.5 h left on Friday, the rest on Monday morning
    assert add_working(friday_4pm, 3 * H, CAL) == local(2026, 11, 30, 10, 30)
    # over lunch: 11:00 + 2 h = 14:30
    assert add_working(local(2026, 11, 30, 11), 2 * H, CAL) == local(2026, 11, 30, 14, 30)
    # before opening time, the clock starts at 09:00
    assert add_working(local(2026, 11, 30, 6), 1 * H, CAL) == local(2026, 11, 30, 10)
    # 8 working hours from Friday 16:00: 1.5 h on Friday, 3 h Monday morning, 3.5 h after lunch
    assert add_working(friday_4pm, 8 * H, CAL) == local(2026, 11, 30, 17)
    assert working_seconds_between(friday_4pm, local(2026, 11, 30, 10), CAL) == 2.5 * H


def test_public_holidays_and_makeup_workdays() -> None:
    before_national_day = local(2026, 9, 30, 17)
    # 1 Oct – 7 Oct are holidays; the next working day is Thursday 8 Oct
    assert add_working(before_national_day, 1 * H, CHINA_2026) == local(2026, 10, 8, 9, 30)
    # Saturday 10 Oct is a make-up working day
    saturday = local(2026, 10, 10, 9)
    assert CHINA_2026.is_workday(date(2026, 10, 10))
    assert add_working(saturday, 1 * H, CHINA_2026) == local(2026, 10, 10, 10)


def test_wall_clock_deadlines_and_utc_round_trip() -> None:
    start = datetime(2026, 1, 10, 2, 0, tzinfo=UTC)
    assert due(start, 90 * 60, working_time=False, cal=CAL) == start + timedelta(minutes=90)
    # a working-time deadline given in UTC comes back in UTC
    got = due(start, 1 * H, working_time=True, cal=CAL)  # 10:00 Shanghai, a Saturday
    assert got.tzinfo is UTC
    assert got.astimezone(SHANGHAI) == local(2026, 1, 12, 10)


def test_a_pause_moves_the_deadline_by_the_paused_time() -> None:
    start = datetime(2026, 1, 10, 0, 0, tzinfo=UTC)
    deadline = start + timedelta(hours=4)
    paused, resumed = start + timedelta(hours=1), start + timedelta(hours=6)
    assert after_pause(deadline, paused, resumed, working_time=False, cal=CAL) == (
        deadline + timedelta(hours=5)
    )


def test_emergency_factor_shrinks_what_is_left() -> None:
    now = datetime(2026, 1, 10, 0, 0, tzinfo=UTC)
    assert with_factor(now, now + timedelta(hours=8), 0.25, working_time=False, cal=CAL) == (
        now + timedelta(hours=2)
    )
    passed = now - timedelta(minutes=5)
    assert with_factor(now, passed, 0.25, working_time=False, cal=CAL) == passed


def test_the_ladder_climbs_then_repeats_up_to_the_cap() -> None:
    t0 = datetime(2026, 1, 10, tzinfo=UTC)
    policy = LadderPolicy(step_s=None, repeat_every_s=600, max_repeats=2)
    steps = []
    state: tuple[int, int, datetime] | None = (1, 0, t0)
    while state is not None:
        steps.append(state[:2])
        state = next_escalation(state[0], 6, state[1], state[2], 3600, policy)
    assert steps == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (5, 1), (5, 2)]
    nxt = next_escalation(1, 6, 0, t0, 3600, policy)
    assert nxt is not None
    assert nxt[2] == t0 + timedelta(hours=1)  # one missed window per rung
