"""Category names for messages: a category a city imported after the release is named in its
residents' and staff's messages, not shown as its code."""

from __future__ import annotations

import asyncpg

from services.notifier import texts
from services.notifier.catalogue import refresh_names, take_catalogue
from services.notifier.settings import MIGRATIONS
from shared.catalogue import Catalogue
from shared.db import create_pool, migrate
from shared.localstack import LocalStack
from tests.helpers.services import fresh_database

CODE = "heating.radiator-leak-test"
LEAK = {
    "code": CODE,
    "name": {"zh-CN": "暖气片漏水", "en": "Leaking radiator"},
    "group": "utilities",
    "department": "heating",
    "deadlines": {"acknowledge_hours": 1, "resolve_hours": 8},
}


async def test_an_imported_category_is_named_in_messages(stack: LocalStack) -> None:
    url = await fresh_database(stack.postgres.url, "notifier_catalogue")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, "notifier", MIGRATIONS)
        assert texts.category_name(CODE, "zh-CN") == CODE  # not in the packaged catalogue
        catalogue = Catalogue.model_validate({"categories": [LEAK]})
        assert (await take_catalogue(conn, catalogue, retire_others=False)).written == 1
        assert (
            await take_catalogue(conn, catalogue, retire_others=False)
        ).written == 1  # again: replaced, not doubled
    finally:
        await conn.close()
    pool = await create_pool(url, "notifier", max_size=1)
    try:
        assert await refresh_names(pool) == 1
    finally:
        await pool.close()
    assert texts.category_name(CODE, "zh-CN") == "暖气片漏水"
    assert texts.category_name(CODE, "en") == "Leaking radiator"
    message = texts.render(
        "resident",
        "CaseResolved",
        "sms",
        "zh-CN",
        {
            "category_name": texts.category_name(CODE, "zh-CN"),
            "note": "已修好",
            "reference": "0A1B2C3D",
            "closes_at": "",
        },
    )
    assert "您反映的问题（暖气片漏水）已处理完毕" in message.text
    # the packaged names are still there
    assert texts.category_name("heating.outage", "en") != "heating.outage"
