"""Personal data written into free text: masked the same way in Python (what readers are
shown) and in PostgreSQL (what erasure stores)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.localstack import LocalStack
from shared.privacy import mask_in_text, masked_sql


@pytest.mark.parametrize(
    ("text", "everything", "contacts_kept"),
    [
        ("联系电话13912345678，谢谢", "联系电话***，谢谢", None),
        ("座机0452-2712345", "座机***", None),
        ("写信 wang.ayi@example.org", "写信 ***", None),
        ("老人身份证23020219450312002X", "老人身份证***", "老人身份证***"),
        (
            "身份证 230202194503120021 电话13912345678",
            "身份证 *** 电话***",
            "身份证 *** 电话13912345678",
        ),
        # not identity numbers: a month 13, a longer number, a code with letters around it
        ("230202194513120021", None, None),
        ("2302021945031200211", None, None),
        ("Q230202194503120021A", None, None),
        ("订单号2026112913912345678", None, None),
    ],
)
def test_what_readers_without_the_right_are_shown(
    text: str, everything: str | None, contacts_kept: str | None
) -> None:
    assert mask_in_text(text) == (everything or text)
    assert mask_in_text(text, keep_contacts=True) == (contacts_kept or text)


FRAGMENTS = st.sampled_from(
    [
        "13912345678",
        "0452-2712345",
        "04522712345",
        "23020219450312002X",
        "230202194503120021",
        "230202194513120021",
        "a@b.cn",
        "x.y+z@example.org",
        "@",
        "-",
        "X",
        "0",
        "1",
        "9",
        "订单",
        " ",
        "，",
    ]
)


@pytest.fixture(scope="module")
def pg(stack: LocalStack) -> str:
    return stack.postgres.url


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(FRAGMENTS, max_size=8).map("".join))
def test_postgresql_masks_as_python_does(pg: str, text: str) -> None:
    async def in_postgres() -> str:
        conn = await asyncpg.connect(pg)
        try:
            return str(await conn.fetchval(f"SELECT {masked_sql('$1::text')}", text))
        finally:
            await conn.close()

    assert asyncio.run(in_postgres()) == mask_in_text(text), repr(text)


def test_the_reporters_own_name_is_masked_where_their_words_repeat_it() -> None:
    said = "我是王秀兰，电话13912345678，王秀兰的女儿也住这里"
    assert mask_in_text(said, names=("王秀兰",)) == "我是***，电话***，***的女儿也住这里"
    assert mask_in_text(said, names=(None, "")) == "我是王秀兰，电话***，王秀兰的女儿也住这里"
    assert mask_in_text("王家暖气不热", names=("王",)) == "王家暖气不热"  # too short to mask


NAMES = st.sampled_from([None, "", "王", "王秀兰", "Li Wei", "0452", "a@b"])
NAMED = st.sampled_from(["王", "王秀兰", "Li Wei", "0452", "a@b"])


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(FRAGMENTS | NAMED, max_size=8).map("".join), NAMES)
def test_postgresql_masks_a_name_as_python_does(pg: str, text: str, name: str | None) -> None:
    async def in_postgres() -> str:
        conn = await asyncpg.connect(pg)
        try:
            sql = f"SELECT {masked_sql('$1::text', '$2::text')}"
            return str(await conn.fetchval(sql, text, name))
        finally:
            await conn.close()

    assert asyncio.run(in_postgres()) == mask_in_text(text, names=(name,)), (text, name)
