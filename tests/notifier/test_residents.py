from datetime import UTC, datetime, time

import pytest
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from services.notifier.residents import SHANGHAI, quiet_until, render

CTX = {
    "category_name": "暖气不热/停暖",
    "department_name": "heating",
    "note": "阀门已更换",
    "resolve_by": "2026-01-10 20:00",
    "short_id": "01a21d85",
}


def test_templates_in_both_languages_and_a_fallback() -> None:
    zh = render("CaseResolved", "zh-CN", CTX)
    assert zh.startswith("【网格通】")
    assert "阀门已更换" in zh
    assert "01a21d85" in zh
    en = render("CaseResolved", "en", {**CTX, "category_name": "No heating"})
    assert en.startswith("[GridDispatch]")
    assert "No heating" in en
    assert render("CaseRouted", "fr", CTX) == render("CaseRouted", "zh-CN", CTX)


def test_templates_are_sandboxed() -> None:
    env = SandboxedEnvironment()
    with pytest.raises(SecurityError):
        env.from_string("{{ x.__class__.__mro__[1].__subclasses__() }}").render(x="")


def local(hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 11, 27, hh, mm, tzinfo=SHANGHAI).astimezone(UTC)


def test_quiet_hours_hold_non_urgent_messages_until_seven() -> None:
    assert quiet_until(local(21, 59), urgent=False) is None
    held = quiet_until(local(22, 30), urgent=False)
    assert held == datetime(2026, 11, 28, 7, 0, tzinfo=SHANGHAI)
    assert quiet_until(local(5, 0), urgent=False) == datetime(2026, 11, 27, 7, 0, tzinfo=SHANGHAI)
    assert quiet_until(local(23, 0), urgent=True) is None  # urgent cases are never held
    assert quiet_until(local(23, 0), urgent=False, start=time(7), end=time(7)) is None  # off
