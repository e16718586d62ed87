"""The city's own reference data, table by table, from CSV files: the areas above the grids
(districts, street offices, communities), buildings, facilities (street lights, manholes,
heating substations: numbers a report may name), departments and grid workers (the duty
roster). Pure: rows in, rows or problems out; the command line reads the files and
`store.replace_table` writes a checked table in one transaction.

An import replaces the whole table, so it is checked as a whole: every row on its own (required
columns, types, codes), keys used once, what the rows name must exist (a street office's
district, a worker's grid), and nothing that stays may name what the file drops (a community
whose street office is gone, a routing rule whose department is gone). A file with any problem
changes nothing; the problems name the line and the column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# a department's code names its feed topic (`dept.<code>`) and its Kafka user
DEPARTMENT_CODE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TRUE, FALSE = {"true", "1", "yes", "y", "on"}, {"false", "0", "no", "n", "off"}


@dataclass(frozen=True)
class Column:
    name: str
    required: bool = True
    kind: str = "text"  # text | code | bool | int
    default: Any = None


@dataclass(frozen=True)
class Table:
    """One kind of reference data: its table, its columns (the key first), and what it names."""

    kind: str  # as typed at the command line
    table: str
    columns: tuple[Column, ...]
    parents: Mapping[str, str] = field(default_factory=dict)  # column → kind it names

    @property
    def key(self) -> str:
        return self.columns[0].name

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _code(name: str) -> Column:
    return Column(name, kind="code")


CONTACT = Column("contact", required=False)
TABLES: dict[str, Table] = {
    t.kind: t
    for t in (
        Table("districts", "districts", (_code("code"), Column("name"), CONTACT)),
        Table(
            "street-offices",
            "street_offices",
            (_code("code"), _code("district"), Column("name"), CONTACT),
            {"district": "districts"},
        ),
        Table(
            "communities",
            "communities",
            (_code("code"), _code("street_office"), Column("name"), CONTACT),
            {"street_office": "street-offices"},
        ),
        Table("buildings", "buildings", (_code("code"), _code("grid_id")), {"grid_id": "grids"}),
        Table(
            "facilities",
            "facilities",
            (_code("code"), _code("kind"), _code("grid_id"), Column("name", required=False)),
            {"grid_id": "grids"},
        ),
        Table("departments", "departments", (_code("code"), Column("name"), CONTACT)),
        Table(
            "workers",
            "workers",
            (
                _code("worker_id"),
                _code("grid_id"),
                Column("name"),
                Column("on_duty", required=False, kind="bool", default=True),
                Column("capacity", required=False, kind="int", default=20),
                CONTACT,
            ),
            {"grid_id": "grids"},
        ),
    )
}


@dataclass(frozen=True)
class Known:
    """What the rest of the reference data holds now (and what names a department)."""

    keys: Mapping[str, set[str]]  # kind (and "grids") → its codes
    # kind → (what refers to it, the code it names): rows of other tables, rules, categories
    referrers: Mapping[str, Sequence[tuple[str, str]]]


def check(
    table: Table, rows: Iterable[Mapping[Any, Any]], known: Known
) -> tuple[list[tuple[Any, ...]], list[str]]:
    """The table's records (in its column order), or the problems that keep it out. Rows are
    numbered as lines of a CSV file with a header (the first row is line 2)."""
    records: list[tuple[Any, ...]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if None in row:  # csv.DictReader's key for values beyond the header's columns
            problems.append(f"line {line}: more values than the header has columns")
            continue
        unknown = {str(k) for k in row} - set(table.column_names) - {""}
        if unknown:
            problems.append(f"line {line}: unknown column(s) {', '.join(sorted(unknown))}")
            continue
        values: list[Any] = []
        for column in table.columns:
            value, problem = _value(column, row.get(column.name), table)
            if problem:
                problems.append(f"line {line}, {column.name}: {problem}")
            values.append(value)
        key = values[0]
        if isinstance(key, str) and key:
            if key in seen:
                problems.append(f"line {line}, {table.key}: {key} is on line {seen[key]} too")
            seen.setdefault(key, line)
        for column_name, parent in table.parents.items():
            named = values[table.column_names.index(column_name)]
            if named and named not in known.keys.get(parent, set()):
                problems.append(f"line {line}, {column_name}: no {_singular(parent)} {named}")
        records.append(tuple(values))
    kept = set(seen)
    for referrer, code in known.referrers.get(table.kind, ()):
        if code not in kept:
            problems.append(
                f"{referrer} names {_singular(table.kind)} {code}, which the file drops"
            )
    if not records and not problems:
        problems.append("no rows: an import replaces the whole table, and would empty it")
    return records, problems


def _value(column: Column, raw: str | None, table: Table) -> tuple[Any, str | None]:
    text = (raw or "").strip()
    if not text:
        if column.required:
            return None, "missing"
        return column.default, None
    if column.kind == "code":
        pattern = DEPARTMENT_CODE if table.kind == "departments" else CODE
        if not pattern.match(text):
            return text, f"{text!r} is not a code ({pattern.pattern})"
    elif column.kind == "bool":
        if text.lower() not in TRUE | FALSE:
            return text, f"{text!r} is not true or false"
        return text.lower() in TRUE, None
    elif column.kind == "int":
        try:
            number = int(text)
        except ValueError:
            return text, f"{text!r} is not a whole number"
        if number < 0:
            return number, "must not be negative"
        return number, None
    elif len(text) > 200:
        return text, "longer than 200 characters"
    return text, None


def _singular(kind: str) -> str:
    return {
        "districts": "district",
        "street-offices": "street office",
        "communities": "community",
        "grids": "grid",
        "departments": "department",
    }.get(kind, kind)


def as_rows(table: Table, records: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Stored rows as CSV rows (the export), in the import's own format."""
    return [{c.name: _text(c, r.get(c.name)) for c in table.columns} for r in records]


def _text(column: Column, value: Any) -> str:
    if column.kind == "bool":
        return "true" if value else "false"
    return "" if value is None else str(value)
