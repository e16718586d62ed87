"""Many subscriptions at once from a CSV file (`griddispatch subscriptions import`): every
row checked first, nothing added if any is wrong, and a file imported twice adds nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from services.notifier.settings import MIGRATIONS
from services.notifier.subscriptions import read_csv
from shared.db import migrate
from shared.localstack import LocalStack
from shared.settings import PROJECT_ROOT
from tests.helpers.services import fresh_database
from tests.notifier.test_webhooks import SECRET_A

GOOD = f"""owner_kind,owner,channel,address,locale,url,secrets
worker,w-0001,sms,13900000001,zh-CN,,
worker,w-0002,sms,+8613900000002,en,,
department,heating,email,duty@heating.example.org,,,
department,heating,webhook,,,https://hooks.example.org/heating,{SECRET_A} {SECRET_A}
"""


ALLOW = frozenset({"hooks.example.org"})  # (not resolved: no DNS in the tests)


def test_a_good_file_reads_row_by_row() -> None:
    subs, errors = read_csv(GOOD, ALLOW)
    assert errors == []
    assert [(s.owner, s.channel, s.locale) for s in subs] == [
        ("w-0001", "sms", "zh-CN"),
        ("w-0002", "sms", "en"),
        ("heating", "email", "zh-CN"),
        ("heating", "webhook", "zh-CN"),
    ]
    assert subs[3].secrets == [SECRET_A, SECRET_A]


def test_each_wrong_row_is_named_by_line_and_field() -> None:
    text = """owner_kind,owner,channel,address,url,secrets
worker,w-1,sms,12ab,,
department,roads,email,duty@roads.example.org,,
robot,w-2,sms,13900000003,,
department,roads,webhook,,http://10.0.0.8/hook,whsec_x
worker,*,sms,13900000004,,
"""
    subs, errors = read_csv(text, frozenset())
    assert len(subs) == 1  # only line 3 is right
    assert errors[0].startswith("line 2: ")
    assert "phone number" in errors[0]
    assert errors[1].startswith("line 4: owner_kind: ")
    assert errors[2].startswith("line 5: url or secrets: ")
    assert "non-public" in errors[2]
    assert errors[3].startswith("line 6: ")
    assert "one grid worker" in errors[3]
    assert len(errors) == 4


def test_a_header_it_does_not_know_is_refused() -> None:
    subs, errors = read_csv("who,how\nw-1,sms\n", frozenset())
    assert subs == []
    assert errors == [
        "line 1: the header must name owner_kind, owner, channel, address, locale, url, secrets, "
        "event_types (owner_kind, owner and channel at least); unknown: who, how; "
        "missing: owner_kind, owner, channel"
    ]


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "subscriptions", *args],
        env={
            **os.environ,
            "GRIDDISPATCH_DATABASE_URL": url,
            "GRIDDISPATCH_NOTIFIER__WEBHOOK_ALLOW": ",".join(ALLOW),
        },
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_import_all_or_nothing_and_again(stack: LocalStack, tmp_path: Path) -> None:
    url = asyncio.run(fresh_database(stack.postgres.url, "subs_import"))

    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn, "notifier", MIGRATIONS)
            return int(await conn.fetchval("SELECT count(*) FROM notifier.subscriptions"))
        finally:
            await conn.close()

    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(GOOD, encoding="utf-8")
    bad.write_text(GOOD + "worker,w-0003,sms,not-a-number,,,\n", encoding="utf-8")

    refused = _cli(url, "import", str(bad))
    assert refused.returncode == 2
    assert "line 6: " in refused.stderr
    assert "nothing imported" in refused.stderr
    assert asyncio.run(count()) == 0
    checked = _cli(url, "import", str(good), "--dry-run")
    assert checked.returncode == 0, checked.stderr
    assert asyncio.run(count()) == 0

    first = _cli(url, "import", str(good))
    assert first.returncode == 0, first.stderr
    assert "4 subscription(s) added, 0 already there" in first.stderr
    again = _cli(url, "import", str(good))
    assert "0 subscription(s) added, 4 already there" in again.stderr
    assert asyncio.run(count()) == 4


def test_a_row_may_choose_its_events_and_an_unknown_one_is_named() -> None:
    text = (
        "owner_kind,owner,channel,address,event_types\n"
        "department,heating,email,duty@heating.example.org,CaseEscalated CaseWarned\n"
        "department,water,email,duty@water.example.org,CaseEscalated CaseLost\n"
    )
    subs, errors = read_csv(text, ALLOW)
    assert [s.event_types for s in subs] == [["CaseEscalated", "CaseWarned"]]
    assert len(errors) == 1
    assert errors[0].startswith("line 3: event_types:")
    assert "not a department's event: CaseLost" in errors[0]
