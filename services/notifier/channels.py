"""Resident channels behind one interface: e-mail over SMTP, SMS through an HTTP gateway."""

from __future__ import annotations

from email.message import EmailMessage
from typing import Protocol

import aiohttp
import aiosmtplib


class Channel(Protocol):
    name: str

    async def send(self, address: str, text: str) -> None:
        """Deliver or raise."""


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

    async def send(self, address: str, text: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = address
        msg["Subject"] = self.subject
        msg.set_content(text, charset="utf-8")
        await aiosmtplib.send(msg, hostname=self.host, port=self.port, timeout=self.timeout_s)


class SmsGatewayChannel:
    """POSTs `{"to": phone, "text": text}` as JSON to a configurable SMS gateway."""

    name = "sms"

    def __init__(self, url: str, token: str = "", *, timeout_s: float = 15.0) -> None:
        self.url, self.token = url, token
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(self, address: str, text: str) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as session,
            session.post(self.url, json={"to": address, "text": text}, headers=headers) as resp,
        ):
            if resp.status >= 300:
                raise RuntimeError(f"SMS gateway answered {resp.status}")
