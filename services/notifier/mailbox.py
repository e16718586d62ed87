"""A local mailbox for `griddispatch up`: an SMTP server and an HTTP SMS gateway that keep
what the notifier sends in two files, so that the demo city's e-mail and SMS can be read.

For a developer's machine only: it listens on 127.0.0.1, accepts every message, and stores
what it is given (the demo's addresses and numbers are made up). Production points the
notifier at a real SMTP relay and SMS gateway (`GRIDDISPATCH_NOTIFIER__SMTP_*`, `…SMS_*`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger(__name__)


class Mailbox:
    """Writes each e-mail to `mail.log` and each SMS to `sms.log` in `folder`."""

    def __init__(self, folder: Path, *, smtp_port: int, sms_port: int, host: str = "127.0.0.1"):
        self.folder = folder
        self.smtp_port = smtp_port
        self.sms_port = sms_port
        self.host = host
        self.mail_file = folder / "mail.log"
        self.sms_file = folder / "sms.log"
        self.received = {"email": 0, "sms": 0}

    @property
    def sms_url(self) -> str:
        return f"http://{self.host}:{self.sms_port}/sms"

    def _keep(self, path: Path, text: str) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(text)

    # aiosmtpd's handler hook: the name is its
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        msg = message_from_bytes(content, policy=policy.default)
        body = msg.get_body(("plain",)) if isinstance(msg, EmailMessage) else None
        text = body.get_content() if body is not None else ""
        when = datetime.now(UTC).isoformat(timespec="seconds")
        self._keep(
            self.mail_file,
            f"=== {when}  to {', '.join(envelope.rcpt_tos)}\n"
            f"Subject: {msg['Subject']}\nMessage-ID: {msg['Message-ID']}\n\n{text.rstrip()}\n\n",
        )
        self.received["email"] += 1
        return "250 OK"

    async def _sms(self, request: web.Request) -> web.Response:
        try:
            sms: dict[str, Any] = await request.json()
            to, text = str(sms["to"]), str(sms["text"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected JSON with to and text"}, status=400)
        when = datetime.now(UTC).isoformat(timespec="seconds")
        self._keep(self.sms_file, f"{when}  to {to}  [{sms.get('id', '')}]\n  {text}\n")
        self.received["sms"] += 1
        return web.json_response({"accepted": True}, status=202)

    async def run(self, stop: asyncio.Event) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        smtp = await loop.create_server(
            functools.partial(SMTP, self, hostname="griddispatch-mailbox"),
            self.host,
            self.smtp_port,
        )
        app = web.Application()
        app.router.add_post("/sms", self._sms)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.sms_port).start()
        log.info("mailbox: SMTP on %s:%d, SMS on %s", self.host, self.smtp_port, self.sms_url)
        try:
            await stop.wait()
        finally:
            smtp.close()
            await smtp.wait_closed()
            await runner.cleanup()
