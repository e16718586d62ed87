"""Message channels behind one interface: e-mail over SMTP, SMS through an HTTP gateway."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Protocol

import aiohttp
import aiosmtplib

from services.notifier.texts import Message


class Channel(Protocol):
    name: str

    async def send(self, address: str, message: Message, *, delivery_id: str) -> None:
        """Deliver or raise. `delivery_id` is the same on every attempt of one delivery (the
        e-mail's Message-ID, the gateway's `id`): receivers can deduplicate."""

    async def close(self) -> None:
        """Let go of connections."""


class EmailChannel:
    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        subject: str = "网格通 GridDispatch",
        timeout_s: float = 15.0,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.subject = subject
        self.timeout_s = timeout_s

    async def send(self, address: str, message: Message, *, delivery_id: str) -> None:
        msg = EmailMessage()
        msg["Message-ID"] = f"<{delivery_id}@griddispatch>"
        msg["From"] = self.sender
        msg["To"] = address
        msg["Subject"] = message.subject or self.subject
        msg.set_content(message.text, charset="utf-8")
        await aiosmtplib.send(msg, hostname=self.host, port=self.port, timeout=self.timeout_s)

    async def close(self) -> None:
        pass  # a connection per message


class SmsGatewayChannel:
    """POSTs `{"to": phone, "text": text, "id": delivery id}` as JSON to a configurable SMS
    gateway, over one keep-alive session."""

    name = "sms"

    def __init__(self, url: str, token: str = "", *, timeout_s: float = 15.0) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, address: str, message: Message, *, delivery_id: str) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        body = {"to": address, "text": message.text, "id": delivery_id}
        async with self._session.post(self.url, json=body, headers=self.headers) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"SMS gateway answered {resp.status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
