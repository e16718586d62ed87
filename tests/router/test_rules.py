from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from services.router.rules import DateWindow, Facts, Rule, RuleTable


def facts(**kw: Any) -> Facts:
    base: dict[str, Any] = dict(
        category="heating.outage",
        grid_kind="comprehensive",
        dedicated_type=None,
        district="longsha",
        street_office="longsha-s01",
        day=date(2026, 1, 10),
        description="暖气不热",
        care_groups=(),
    )
    base.update(kw)
    return Facts(**base)


TABLE = RuleTable(
    tuple(
        Rule.model_validate(r)
        for r in [
            {"id": "gas", "match": {"keywords": ["燃气味"]}, "route": {"department": "gas"}},
            {
                "id": "season",
                "match": {"category": "heating.*", "dates": {"from": "10-20", "to": "04-20"}},
                "route": {"department": "heating", "priority": "high"},
            },
            {
                "id": "hospital",
                "match": {"dedicated_type": "hospital"},
                "route": {"department": "health"},
            },
            {
                "id": "elderly",
                "match": {"care_groups": ["very_old"]},
                "route": {"priority": "urgent"},
            },
            {"id": "default"},
        ]
    )
)


def test_first_match_wins_in_order() -> None:
    rule, trail = TABLE.first_match(facts(description="楼道里有燃气味，暖气也不热"))
    assert rule is not None
    assert rule.id == "gas"  # both gas and season match: the earlier rule wins
    assert trail == ["rule gas: matches"]


def test_date_window_wraps_over_new_year() -> None:
    season = DateWindow.model_validate({"from": "10-20", "to": "04-20"})
    assert season.contains(date(2026, 1, 10))
    assert season.contains(date(2025, 10, 20))
    assert season.contains(date(2026, 4, 20))
    assert not season.contains(date(2026, 4, 21))
    assert not season.contains(date(2026, 7, 1))
    summer, trail = TABLE.first_match(facts(day=date(2026, 7, 1)))
    assert summer is not None
    assert summer.id == "default"
    assert "outside 10-20…04-20" in trail[1]


def test_dedicated_type_care_groups_and_exclusions() -> None:
    rule, _ = TABLE.first_match(facts(category="sanitation.garbage", dedicated_type="hospital"))
    assert rule is not None
    assert rule.id == "hospital"
    rule, _ = TABLE.first_match(facts(category="roads.pothole", care_groups=("very_old",)))
    assert rule is not None
    assert rule.id == "elderly"
    # the heating company declined: the next matching rule with another department
    rule, trail = TABLE.first_match(
        facts(), exclude_departments=frozenset({"heating"}), default_department="heating"
    )
    assert "heating declined the case" in trail[1]
    assert rule is None  # every remaining rule falls back to heating too


@pytest.mark.parametrize("bad", ["02-30", "13-01", "1-5"])
def test_date_windows_are_validated(bad: str) -> None:
    with pytest.raises(ValidationError):
        DateWindow.model_validate({"from": bad, "to": "04-20"})


@pytest.mark.parametrize(
    "case",
    [
        {},
        {"description": "楼道里有燃气味"},
        {"day": date(2026, 7, 1)},
        {"category": "sanitation.garbage", "dedicated_type": "hospital"},
        {"category": "roads.pothole", "care_groups": ("very_old",)},
        {"category": "heating.noise", "dedicated_type": "hospital"},
    ],
)
def test_routing_without_a_trail_picks_the_rule_explaining_picks(case: dict[str, Any]) -> None:
    """Routing tries only the rules that can match the category, and writes no trail."""
    f = facts(**case)
    for excluded in (frozenset(), frozenset({"heating"}), frozenset({"gas", "health"})):
        explained, trail = TABLE.first_match(f, exclude_departments=excluded)
        routed, no_trail = TABLE.first_match(f, exclude_departments=excluded, explain=False)
        assert routed == explained
        assert trail
        assert no_trail == []
