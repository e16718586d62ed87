"""Departments told by e-mail (a real local SMTP server) and grid workers by SMS (an HTTP
gateway), subscribed over the notifier's HTTP API, through the delivery log: retried, dead
after the schedule, replayed; a department's feed topic switched off on its own; and no
address in the log."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.header import decode_header, make_header
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiosmtpd.controller import Controller
from starlette.requests import Request
from starlette.responses import Response

from services.notifier.delivery import replay
from shared import events, topics
from shared.events import wrap
from shared.ids import case_reference
from shared.localstack import LocalStack, free_port
from tests.helpers.http import receiving
from tests.helpers.mail import body_text
from tests.helpers.services import running_service
from tests.notifier.test_service import routed, wait_until

TOKEN = "test-admin-token"
DOWN = "+8613900000099"  # the gateway refuses this number until told otherwise


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[tuple[list[str], str, str]] = []  # recipients, subject, body
        self.ids: list[str] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = message_from_bytes(envelope.content)
        subject = str(make_header(decode_header(msg["Subject"])))
        body = body_text(msg)
        self.mails.append((envelope.rcpt_tos, subject, body))
        self.ids.append(msg["Message-ID"])
        return "250 OK"


class Gateway:
    """An SMS gateway that refuses the numbers in `refuse`, and the first text to `flaky`."""

    def __init__(self, flaky: str) -> None:
        self.calls: list[dict[str, str]] = []
        self.refuse = {DOWN}
        self.flaky = flaky

    async def handle(self, request: Request) -> Response:
        body = await request.json()
        self.calls.append(body)
        first_to_flaky = body["to"] == self.flaky and len(self.to(self.flaky)) == 1
        if body["to"] in self.refuse or first_to_flaky:
            return Response(status_code=500)
        return Response(status_code=202)

    def to(self, number: str) -> list[str]:
        """The texts posted for `number`, in order, refused ones included."""
        return [call["text"] for call in self.calls if call["to"] == number]


async def test_departments_get_email_and_grid_workers_sms(stack: LocalStack, tmp_path) -> None:
    phone = f"139{uuid.uuid4().int % 10**8:08d}"  # this test's own: the log is shared
    mailbox, gateway = Mailbox(), Gateway(flaky=phone)
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    dept, quiet_dept = "heat-" + uuid.uuid4().hex[:6], "roads-" + uuid.uuid4().hex[:6]
    worker, other = "w-" + uuid.uuid4().hex[:6], "w-" + uuid.uuid4().hex[:6]
    async with receiving("/sms", gateway.handle) as sms_port:
        env = {
            **stack.env(),
            "GRIDDISPATCH_NOTIFIER__PORT": str(port),
            "GRIDDISPATCH_NOTIFIER__ADMIN_TOKEN": TOKEN,
            "GRIDDISPATCH_NOTIFIER__SMTP_PORT": str(smtp.port),
            "GRIDDISPATCH_NOTIFIER__SMS_GATEWAY_URL": f"http://127.0.0.1:{sms_port}/sms",
            "GRIDDISPATCH_NOTIFIER__RETRY_SCHEDULE_S": "0,1",
        }
        log = tmp_path / "notifier.log"
        with running_service("notifier", env, ready_url=f"{base}/health/ready", log=log):
            async with httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as api:
                subs = await _subscribe(api, dept, worker, other, phone)
                feed = await api.put(f"/v1/departments/{quiet_dept}/feed", json={"enabled": False})
                assert feed.status_code == 200, feed.text
                await asyncio.sleep(6)  # the feed writer reads the switches every 5 s
                listed = (await api.get("/v1/subscriptions", params={"owner": worker})).json()

            case = routed(dept, worker)
            quiet_case = routed(quiet_dept, other)
            lifecycle = [
                case,
                wrap(events.CaseAcknowledged(by=worker), case_id=case.case_id, producer="t"),
                wrap(
                    events.CaseWarned(
                        deadline="resolve",
                        due_at=datetime.now(UTC) + timedelta(minutes=15),
                        level=0,
                    ),
                    case_id=case.case_id,
                    producer="escalation",
                ),
                quiet_case,
            ]
            producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
            await producer.start()
            for e in lifecycle:
                await producer.send_and_wait(
                    topics.CASES_LIFECYCLE, e.to_json(), key=e.case_id.encode()
                )
            await producer.stop()

            db = await asyncpg.connect(stack.postgres.url)
            try:

                async def settled() -> bool:
                    states = await db.fetch(
                        "SELECT state FROM notifier.deliveries WHERE subscription_id = ANY($1)",
                        list(subs.values()),
                    )
                    return len(states) == 5 and all(s["state"] != "pending" for s in states)

                await wait_until(settled, 60)
                dead = await db.fetchrow(
                    "SELECT id, attempts FROM notifier.deliveries WHERE subscription_id = $1"
                    " AND state = 'dead'",
                    subs["down"],
                )
                # an operator replays the dead letter once the gateway takes the number again
                gateway.refuse.clear()
                assert await replay(db, dead["id"])

                async def replayed() -> bool:
                    return bool(
                        await db.fetchval(
                            "SELECT state = 'delivered' FROM notifier.deliveries WHERE id = $1",
                            dead["id"],
                        )
                    )

                await wait_until(replayed, 30)
            finally:
                await db.close()
            admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap)
            await admin.start()
            try:
                existing = set(await admin.list_topics())
            finally:
                await admin.close()
    smtp.stop()

    # the subscriptions API lists addresses masked and never the secrets
    assert {(s["channel"], s["address"]) for s in listed} == {("sms", f"139****{phone[-4:]}")}
    assert all("secrets" not in s for s in listed)

    # the department: one e-mail per new case and warning (not per acknowledgement), in English
    mails = [(to, subject, body) for to, subject, body in mailbox.mails if case.case_id in body]
    assert [to for to, _, _ in mails] == [["duty@heating.example.org"]] * 2
    subjects = sorted(subject for _, subject, _ in mails)
    assert subjects[0].startswith("[GridDispatch] Deadline near: ")
    assert subjects[1].startswith("[GridDispatch] New case: ")
    assert case_reference(case.case_id) in subjects[1]
    # the case's grid worker: two SMS in Chinese; the first text posted was refused and sent
    # again (like webhooks, the messages of one case promise no order between them)
    texts = [t for t in gateway.to(phone) if case_reference(case.case_id) in t]
    new_case = [
        t for t in texts if t.startswith(f"【网格通】新派单{case_reference(case.case_id)}：")
    ]
    warned = [t for t in texts if t.startswith(f"【网格通】案件{case_reference(case.case_id)}（")]
    assert len(texts) == len(new_case) + len(warned) == 3
    assert texts.count(texts[0]) == 2
    refused_and_retried = [c["id"] for c in gateway.calls if c["text"] == texts[0]]
    assert len(refused_and_retried) == 2
    assert refused_and_retried[0] == refused_and_retried[1]  # the retry keeps its id
    assert len({c["id"] for c in gateway.calls if c["to"] == phone}) == 2  # two messages
    assert len(set(mailbox.ids)) == len(mailbox.ids)  # every e-mail has an id of its own
    assert len(set(new_case)) == len(set(warned)) == 1
    assert "暖气不热/停暖（紧急），网格g-1" in new_case[0]
    assert "的办结时限将于" in warned[0]
    # nothing personal from the escalation chain reaches staff messages
    everything = " ".join([*texts, *(f"{s} {b}" for _, s, b in mails)])
    assert "13900000000" not in everything
    # the other worker's number was refused twice (the schedule), dead, then replayed: three
    assert len(gateway.to(DOWN)) == 3
    assert dead["attempts"] == 2
    # the department with its feed switched off got no feed topic; the other one did
    assert topics.department_feed(dept) in existing
    assert topics.department_feed(quiet_dept) not in existing
    # and the log names no address
    text = log.read_text()
    for secret in (phone, DOWN, "duty@heating.example.org"):
        assert secret not in text


async def _subscribe(
    api: httpx.AsyncClient, dept: str, worker: str, other: str, phone: str
) -> dict[str, int]:
    """Subscribe over HTTP; refusals first (each names what is wrong)."""
    refused = {
        "e-mail for a worker": {
            "owner_kind": "worker",
            "owner": worker,
            "channel": "email",
            "address": "w@example.org",
        },
        "SMS to a gateway": {
            "owner_kind": "worker",
            "owner": "*",
            "channel": "sms",
            "address": phone,
        },
        "a bad number": {
            "owner_kind": "worker",
            "owner": worker,
            "channel": "sms",
            "address": "call me",
        },
        "a bad e-mail": {
            "owner_kind": "department",
            "owner": dept,
            "channel": "email",
            "address": "duty-at-heating",
        },
        "an address on a webhook": {
            "owner_kind": "department",
            "owner": dept,
            "url": "https://example.org/hook",
            "address": phone,
        },
    }
    for why, body in refused.items():
        answer = await api.post("/v1/subscriptions", json=body)
        assert answer.status_code == 422, (why, answer.text)
    anonymous = await api.post(
        "/v1/subscriptions",
        json={"owner_kind": "worker", "owner": worker, "channel": "sms", "address": phone},
        headers={"Authorization": ""},
    )
    assert anonymous.status_code == 403
    subs = {}
    for name, body in {
        "email": {
            "owner_kind": "department",
            "owner": dept,
            "channel": "email",
            "address": "duty@heating.example.org",
            "locale": "en",
        },
        "sms": {"owner_kind": "worker", "owner": worker, "channel": "sms", "address": phone},
        "down": {"owner_kind": "worker", "owner": other, "channel": "sms", "address": DOWN},
    }.items():
        answer = await api.post("/v1/subscriptions", json=body)
        assert answer.status_code == 201, answer.text
        subs[name] = answer.json()["id"]
    return subs
