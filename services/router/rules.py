"""The routing rule table: ordered, first match wins (like Alertmanager's routing tree).

A rule matches when *every* condition it names holds; conditions it leaves out match anything.
Its `route` part says what to do: a department, a priority, deadline overrides, "mediate in the
grid first". A department left out means the category's default department from the catalogue.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import date

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.events import Priority


class DateWindow(BaseModel):
    """A yearly window of month-day dates, e.g. the heating season 10-20 … 04-20 (wraps)."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(alias="from", pattern=r"^\d{2}-\d{2}$")
    end: str = Field(alias="to", pattern=r"^\d{2}-\d{2}$")

    @field_validator("start", "end")
    @classmethod
    def _real_day(cls, value: str) -> str:
        month, day = int(value[:2]), int(value[3:])
        date(2024, month, day)  # raises for 02-30 and friends (2024: leap year)
        return value

    def contains(self, day: date) -> bool:
        md = f"{day.month:02d}-{day.day:02d}"
        if self.start <= self.end:
            return self.start <= md <= self.end
        return md >= self.start or md <= self.end  # wraps over the new year


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    category: str | None = Field(default=None, description="glob, e.g. heating.*")
    grid_kind: str | None = None
    dedicated_type: str | None = None
    district: str | None = None
    street_office: str | None = None
    dates: DateWindow | None = None
    keywords: list[str] = Field(default=[], description="any of these in the description")
    care_groups: list[str] = Field(default=[], description="any of these care groups")


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")

    department: str | None = None
    priority: Priority | None = None
    acknowledge_hours: float | None = Field(default=None, gt=0)
    resolve_hours: float | None = Field(default=None, gt=0)
    mediate_in_grid_first: bool = False


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    description: str = ""
    match: Match = Match()
    route: Route = Route()


@dataclass(slots=True)  # one per decision, read only: not frozen, which costs a µs to build
class Facts:
    """What a rule can look at."""

    category: str
    grid_kind: str | None
    dedicated_type: str | None
    district: str | None
    street_office: str | None
    day: date
    description: str
    care_groups: tuple[str, ...]


def why_not(rule: Rule, f: Facts, *, category_checked: bool = False) -> str | None:
    """None if `rule` matches `f`, else the first condition that fails (for explanations).
    `category_checked`: the rule is known to match the category (`RuleTable.for_category`)."""
    m = rule.match
    if (
        not category_checked
        and m.category is not None
        and not fnmatch.fnmatchcase(f.category, m.category)
    ):
        return f"category {f.category} is not {m.category}"
    if m.grid_kind is not None and m.grid_kind != f.grid_kind:
        return f"grid kind {f.grid_kind} is not {m.grid_kind}"
    if m.dedicated_type is not None and m.dedicated_type != f.dedicated_type:
        return f"not in a dedicated {m.dedicated_type} grid"
    if m.district is not None and m.district != f.district:
        return f"district {f.district} is not {m.district}"
    if m.street_office is not None and m.street_office != f.street_office:
        return f"street office {f.street_office} is not {m.street_office}"
    if m.dates is not None and not m.dates.contains(f.day):
        return f"{f.day:%m-%d} is outside {m.dates.start}…{m.dates.end}"
    if m.keywords:
        text = f.description.casefold()
        if not any(k.casefold() in text for k in m.keywords):
            return "none of the keywords in the description"
    if m.care_groups and not set(m.care_groups) & set(f.care_groups):
        return "no matching care group"
    return None


@dataclass(frozen=True)
class RuleTable:
    rules: tuple[Rule, ...]
    # Rules whose category pattern can match a category, in table order: routing a case
    # tries only these (a few of the table), explaining one tries them all.
    _by_category: dict[str, tuple[Rule, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def for_category(self, category: str) -> tuple[Rule, ...]:
        found = self._by_category.get(category)
        if found is None:
            found = tuple(
                r
                for r in self.rules
                if r.match.category is None or fnmatch.fnmatchcase(category, r.match.category)
            )
            self._by_category[category] = found  # categories are few: the cache stays small
        return found

    def first_match(
        self,
        facts: Facts,
        *,
        exclude_departments: frozenset[str] = frozenset(),
        default_department: str | None = None,
        explain: bool = True,
    ) -> tuple[Rule | None, list[str]]:
        """The first rule that matches (and whose department is not excluded), with the trail
        of rules tried (every rule of the table when explaining; otherwise no trail)."""
        trail: list[str] = []
        for rule in self.rules if explain else self.for_category(facts.category):
            reason = why_not(rule, facts, category_checked=not explain)
            if reason is None:
                dept = rule.route.department or default_department
                if dept in exclude_departments:
                    if explain:
                        trail.append(f"rule {rule.id}: matches, but {dept} declined the case")
                    continue
                if explain:
                    trail.append(f"rule {rule.id}: matches")
                return rule, trail
            if explain:
                trail.append(f"rule {rule.id}: {reason}")
        return None, trail
