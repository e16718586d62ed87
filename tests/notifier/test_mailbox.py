"""The local mailbox of `griddispatch up` keeps what the notifier's own e-mail and SMS
adapters send it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from services.notifier import cli
from services.notifier.channels import EmailChannel, SmsGatewayChannel
from services.notifier.mailbox import Mailbox
from services.notifier.settings import MIGRATIONS
from services.notifier.subscriptions import add_demo_subscriptions
from services.notifier.texts import Message
from shared.db import migrate
from shared.localstack import LocalStack, free_port
from shared.settings import PROJECT_ROOT
from tests.helpers.services import fresh_database


async def test_e_mail_and_sms_land_in_their_files(tmp_path: Path) -> None:
    box = Mailbox(tmp_path, smtp_port=free_port(), sms_port=free_port())
    stop = asyncio.Event()
    running = asyncio.create_task(box.run(stop))
    await asyncio.sleep(0.3)
    email = EmailChannel("127.0.0.1", box.smtp_port, "GridDispatch <noreply@griddispatch.local>")
    sms = SmsGatewayChannel(box.sms_url)
    try:
        await email.send(
            "heating@example.org",
            Message("新案件：暖气不热", subject="【网格通】新案件"),
            delivery_id="d-1",
        )
        await sms.send("13900001234", Message("【网格通】新案件"), delivery_id="d-2")
    finally:
        await email.close()
        await sms.close()
        stop.set()
        await running
    mail = (tmp_path / "mail.log").read_text()
    assert "to heating@example.org" in mail
    assert "Subject: 【网格通】新案件" in mail
    assert "新案件：暖气不热" in mail
    assert (tmp_path / "sms.log").read_text().count("to 13900001234  [d-2]") == 1
    assert box.received == {"email": 1, "sms": 1}


async def test_the_command_runs_until_told_to_stop(tmp_path: Path) -> None:
    smtp_port, sms_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "shared.cli.main", "mailbox", "--folder", str(tmp_path)),
            *("--smtp-port", str(smtp_port), "--sms-port", str(sms_port)),
        ],
        cwd=PROJECT_ROOT,
        env=os.environ,
    )
    try:
        sms = SmsGatewayChannel(f"http://127.0.0.1:{sms_port}/sms")
        for _ in range(100):  # the command starts in a second or two
            try:
                await sms.send("13900005678", Message("测试"), delivery_id="d-3")
                break
            except Exception:
                await asyncio.sleep(0.1)
        await sms.close()
        assert "to 13900005678" in (tmp_path / "sms.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0


async def test_demo_subscriptions_add_what_is_missing_once(stack: LocalStack) -> None:
    url = await fresh_database(stack.postgres.url, "demo_subs")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, "notifier", MIGRATIONS)
        await conn.execute(
            "INSERT INTO notifier.subscriptions (owner_kind, owner, channel, address, locale) "
            "VALUES ('department', 'water', 'email', 'ops@water.example.org', 'en')"
        )
        assert await add_demo_subscriptions(conn, ["heating", "water", "roads"]) == 2
        assert await add_demo_subscriptions(conn, ["heating", "water", "roads"]) == 0
        rows = await conn.fetch(
            "SELECT owner, address FROM notifier.subscriptions WHERE channel = 'email' "
            "ORDER BY owner"
        )
    finally:
        await conn.close()
    assert [(r["owner"], r["address"]) for r in rows] == [
        ("heating", "heating@example.org"),
        ("roads", "roads@example.org"),
        ("water", "ops@water.example.org"),  # its own subscription stays the only one
    ]


def test_without_the_development_extras_the_mailbox_says_what_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The image has no aiosmtpd: `griddispatch mailbox` there explains, with no traceback."""
    monkeypatch.setitem(sys.modules, "aiosmtpd.smtp", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "services.notifier.mailbox", raising=False)
    result = CliRunner().invoke(cli.mailbox_app, [])
    assert result.exit_code == 2
    assert "development tool and needs aiosmtpd" in result.output
    assert "Traceback" not in result.output
