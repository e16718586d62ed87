"""Residents who consented hear that their report was accepted and resolved (and closed for
them, when they did not verify it), by e-mail (a real local SMTP server) and SMS (an HTTP
gateway); those who did not, hear nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from typing import Any

import uvicorn
from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import events, topics
from shared.directory import DepartmentEntry
from shared.events import wrap
from shared.ids import case_reference
from shared.localstack import LocalStack, free_port
from shared.settings import PROJECT_ROOT
from tests.helpers.mail import body_text


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        msg = message_from_bytes(envelope.content)
        self.messages.append((envelope.rcpt_tos, body_text(msg)))
        return "250 OK"


CLOSES_AT = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)  # 10:00 in the city


def report(
    email: str | None, phone: str | None, consent: bool, language: str = "zh-CN"
) -> events.Envelope:
    return wrap(
        events.CaseReported(
            category="heating.outage",
            description="暖气不热",
            location=events.Location(lat=47.3, lon=123.9),
            channel=events.Channel.APP,
            reported_at=datetime.now(UTC),
            reporter=events.Contact(
                name="王阿姨",
                email=email,
                phone=phone,
                consent_to_notify=consent,
                language=language,
            ),
        ),
        case_id=str(uuid.uuid4()),
        producer="intake",
    )


def routed(case_id: str, department: str = "heating") -> events.Envelope:
    now = datetime.now(UTC)
    return wrap(
        events.CaseRouted(
            category="heating.outage",
            grid_id="g-1",
            district="longsha",
            department=department,
            worker_id="w-1",
            priority=events.Priority.HIGH,
            deadlines=events.Deadlines(
                acknowledge_by=now + timedelta(hours=1),
                resolve_by=now + timedelta(hours=12),
                warn_before_s=0,
            ),
            escalation_chain=(),
            reported_at=now,
        ),
        case_id=case_id,
        producer="router",
    )


async def test_consenting_residents_are_told_by_email_and_sms(stack: LocalStack, tmp_path) -> None:
    inbox = Inbox()
    smtp_port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    texts: list[dict[str, Any]] = []

    async def gateway(request: Request) -> Response:
        texts.append(await request.json())
        return Response(status_code=202)

    sms_port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[Route("/sms", gateway, methods=["POST"])]),
            port=sms_port,
            log_level="warning",
        )
    )
    serving = asyncio.create_task(server.serve())
    env = {
        **os.environ,
        **stack.env(),
        "GRIDDISPATCH_NOTIFIER__PORT": str(free_port()),
        "GRIDDISPATCH_NOTIFIER__SMTP_PORT": str(smtp_port),
        "GRIDDISPATCH_NOTIFIER__SMS_GATEWAY_URL": f"http://127.0.0.1:{sms_port}/sms",
        "GRIDDISPATCH_NOTIFIER__QUIET_HOURS": "07:00-07:00",
    }  # none: the test runs any time
    # a department of this test's own, named in the directory before the notifier starts
    department = "heat-" + uuid.uuid4().hex[:6]
    directory = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await directory.start()
    entry = DepartmentEntry(code=department, name="市供热公司")
    await directory.send_and_wait(topics.DEPARTMENTS, entry.to_json(), key=department.encode())
    await directory.stop()
    log = open(tmp_path / "notifier.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli.main", "serve", "notifier"],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yes = report("wang@example.org", "13912345678", consent=True)
        no = report("li@example.org", "13800000000", consent=False)
        english = report("anna@example.org", None, consent=True, language="en")
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
        await producer.start()
        for e in (yes, no, english):
            await producer.send_and_wait(topics.CASES_INTAKE, e.to_json(), key=e.case_id.encode())
        # no waiting: the contact and the lifecycle events are read by two consumers, in any
        # order, and the resident must be told either way
        for cid in (yes.case_id, no.case_id, english.case_id):
            first = routed(cid, department)
            # `yes`'s worker went off duty before acknowledging it: a handover, which
            # changes nothing the resident needs to hear about
            moved = first.event().model_copy(update={"worker_id": None, "handed_over_from": "w-1"})
            handover = [wrap(moved, case_id=cid, producer="router")] if cid == yes.case_id else []
            for e in (
                first,
                *handover,
                wrap(
                    events.CaseResolved(by="w-1", note="阀门已更换", closes_at=CLOSES_AT),
                    case_id=cid,
                    producer="intake",
                ),
            ):
                await producer.send_and_wait(topics.CASES_LIFECYCLE, e.to_json(), key=cid.encode())
        # nobody verified `yes`'s resolution: it is closed for them, and they hear of it; the
        # English resident's case an operator closed: they verified it, nothing more to say
        for cid, closed in (
            (yes.case_id, events.CaseClosed(by="griddispatch", automatic=True)),
            (english.case_id, events.CaseClosed(by="ops")),
        ):
            e = wrap(closed, case_id=cid, producer="intake")
            await producer.send_and_wait(topics.CASES_LIFECYCLE, e.to_json(), key=cid.encode())
        await producer.stop()

        def mine(items: list[str]) -> list[str]:
            return [t for t in items if case_reference(yes.case_id) in t]

        for _ in range(600):
            if (
                len(mine([b for _, b in inbox.messages])) >= 3
                and len(mine([t["text"] for t in texts])) >= 3
                and len([b for _, b in inbox.messages if case_reference(english.case_id) in b]) >= 2
            ):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        log.close()
        smtp.stop()
        server.should_exit = True
        await serving
    # (other tests' residents may be told too: this notifier reads cases.intake from the start)
    emails = [(rcpt, body) for rcpt, body in inbox.messages if case_reference(yes.case_id) in body]
    assert [rcpt for rcpt, _ in emails] == [["wang@example.org"]] * 3
    bodies = [body for _, body in emails]
    # the department by the name the router published to the department directory
    assert any("已受理" in b and "由市供热公司负责处理" in b for b in bodies)
    assert any("阀门已更换" in b for b in bodies)
    assert any("已自动结案" in b for b in bodies)
    sms = [t for t in texts if case_reference(yes.case_id) in t["text"]]
    assert [t["to"] for t in sms] == ["13912345678"] * 3
    assert any("已自动结案" in t["text"] for t in sms)
    # the resolution said when it would be closed, in the city's time
    assert any("2026-12-02 10:00前未申请的，将自动结案" in t["text"] for t in sms)
    assert any("2026-12-02 10:00 前未申请重新办理的，本案将自动结案" in b for b in bodies)
    # a resident who asked for English gets English
    in_english = [body for _, body in inbox.messages if case_reference(english.case_id) in body]
    assert len(in_english) == 2
    assert any("has been resolved" in b for b in in_english)
    assert not [b for b in in_english if "已受理" in b or "已处理完毕" in b]
    # the resident who did not consent hears nothing
    assert not [b for _, b in inbox.messages if case_reference(no.case_id) in b]
    assert not [t for t in texts if case_reference(no.case_id) in t["text"]]
    logged = (tmp_path / "notifier.log").read_text()
    assert "13912345678" not in logged  # personal data stays out of the logs
    assert "wang@example.org" not in logged
