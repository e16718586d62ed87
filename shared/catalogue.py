"""The service catalogue: categories residents can report, their department and deadlines.
Shared by intake (what may be reported) and the router (who handles it, how fast).

Plain data and validation, no I/O beyond reading the seed file.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.events import Priority

SEED_FILE = Path(__file__).parent / "data" / "catalogue.yaml"
# Categories of this group are for grid tasks (POST /v1/tasks), which operators issue to every
# grid of an area; residents do not report them (not offered over Open311, refused as reports).
TASK_GROUP = "grid-tasks"
# What a facility's number may look like (`location.facility_code`): the printed code
FACILITY_CODE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class AttributeValue(BaseModel):
    key: str
    name: str


class Attribute(BaseModel):
    """An Open311 service attribute (an extra question asked with a report)."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=r"^[a-z0-9_]{1,64}$")
    datatype: Literal[
        "string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"
    ] = "string"
    description: str
    required: bool = False
    values: list[AttributeValue] = []
    names_facility: bool = Field(
        default=False,
        description="the answer is the number on a facility (a street light's pole, a manhole "
        "cover): a report answering it is located by that facility, as by its "
        "`location.facility_code` (how Open311 clients, which have no such field, name one)",
    )


class CategoryDeadlines(BaseModel):
    acknowledge_hours: float = Field(gt=0)
    resolve_hours: float = Field(gt=0)
    working_time: bool = False


class Category(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,63}$")
    name: dict[str, str]
    group: str
    department: str
    deadlines: CategoryDeadlines
    priority: Priority = Priority.NORMAL
    attributes: list[Attribute] = []
    department_needs_phone: bool = False
    keywords: list[str] = []

    def facility_code(self, answers: dict[str, str]) -> str | None:
        """The facility a report's answers name, if one of this category's questions asks for
        it and the answer looks like a facility's number (anything else stays an answer)."""
        for attribute in self.attributes:
            answer = (answers.get(attribute.code) or "").strip()
            if attribute.names_facility and FACILITY_CODE.fullmatch(answer):
                return answer
        return None

    def display_name(self, lang: str = "zh-CN") -> str:
        return self.name.get(lang) or self.name.get("zh-CN") or next(iter(self.name.values()))


class Catalogue(BaseModel):
    categories: list[Category]

    @model_validator(mode="after")
    def _codes_once(self) -> Catalogue:
        twice = sorted(code for code, n in Counter(self.codes()).items() if n > 1)
        if twice:
            raise ValueError(f"categories listed twice: {', '.join(twice)}")
        return self

    def by_code(self) -> dict[str, Category]:
        return {c.code: c for c in self.categories}

    def codes(self) -> list[str]:
        return [c.code for c in self.categories]


@dataclass(frozen=True)
class Taken:
    """What one service's copy of the catalogue took from `griddispatch catalogue import`."""

    written: int
    retired: Sequence[str] = ()  # codes no longer offered (`--retire-others`)


class CatalogueRefused(ValueError):
    """A catalogue a service cannot take as it stands (each problem says why): nothing
    changed in any service."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = list(problems)


def load_file(path: Path = SEED_FILE) -> Catalogue:
    return Catalogue.model_validate(yaml.safe_load(path.read_text("utf-8")))


def check_attributes(category: Category, answers: dict[str, str]) -> list[tuple[str, str]]:
    """Problems with a report's answers to its category's questions, as (field, reason)."""
    problems: list[tuple[str, str]] = []
    known = {a.code: a for a in category.attributes}
    for code in answers:
        if code not in known:
            problems.append((f"attributes.{code}", f"{category.code} asks no question {code!r}"))
    for attr in category.attributes:
        value = answers.get(attr.code)
        if value is None or value == "":
            if attr.required:
                problems.append((f"attributes.{attr.code}", "this answer is required"))
            continue
        if attr.datatype == "number":
            try:
                float(value)
            except ValueError:
                problems.append((f"attributes.{attr.code}", "must be a number"))
        elif attr.datatype in ("singlevaluelist", "multivaluelist"):
            allowed = {v.key for v in attr.values}
            given = value.split(",") if attr.datatype == "multivaluelist" else [value]
            bad = [g for g in given if g not in allowed]
            if bad:
                problems.append(
                    (f"attributes.{attr.code}", f"must be one of {', '.join(sorted(allowed))}")
                )
    return problems
