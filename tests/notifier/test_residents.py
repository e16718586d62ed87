from datetime import UTC, datetime, time

from services.notifier.residents import SHANGHAI, quiet_until


def local(hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 11, 27, hh, mm, tzinfo=SHANGHAI).astimezone(UTC)


def test_quiet_hours_hold_non_urgent_messages_until_seven() -> None:
    assert quiet_until(local(21, 59), urgent=False) is None
    held = quiet_until(local(22, 30), urgent=False)
    assert held == datetime(2026, 11, 28, 7, 0, tzinfo=SHANGHAI)
    assert quiet_until(local(5, 0), urgent=False) == datetime(2026, 11, 27, 7, 0, tzinfo=SHANGHAI)
    assert quiet_until(local(23, 0), urgent=True) is None  # urgent cases are never held
    assert quiet_until(local(23, 0), urgent=False, start=time(7), end=time(7)) is None  # off
