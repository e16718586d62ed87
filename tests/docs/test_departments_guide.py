"""The department guide's webhook receiver (docs/departments.md), run as written against
deliveries signed by the notifier's own signing code: it accepts them, drops a retry, refuses
a forged or replayed one, and keeps working through a secret rotation."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.notifier.webhooks import sign
from shared.settings import PROJECT_ROOT
from tests.notifier.test_webhooks import SECRET_A, SECRET_B

GUIDE = PROJECT_ROOT / "docs" / "departments.md"


def _receiver(secret: str, handled: list[Any]) -> Callable[[bytes, dict[str, str]], int]:
    section = GUIDE.read_text().split("## Receiving webhooks", 1)[1]
    [code] = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    scope: dict[str, Any] = {"SECRET": secret, "handle": handled.append}
    exec(compile(code, str(GUIDE), "exec"), scope)
    receive: Callable[[bytes, dict[str, str]], int] = scope["receive"]
    return receive


def _delivery(
    secrets: list[str], msg_id: str, at: datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(
        {"case_id": "01a22343-0000-7000-8000-000000000001", "event_type": "CaseRouted"}
    )
    return body, sign(secrets, msg_id, at or datetime.now(UTC), body.decode())


def test_the_guides_receiver_takes_each_delivery_once_and_refuses_forgeries() -> None:
    handled: list[Any] = []
    receive = _receiver(SECRET_A, handled)
    body, headers = _delivery([SECRET_A], "msg_1")
    assert receive(body, headers) == 200
    assert receive(body, headers) == 200  # the retry of a delivery it has
    assert handled == [orjson.loads(body)]

    assert receive(body.replace(b"CaseRouted", b"CaseClosed"), headers) == 400
    assert receive(body, {**headers, "webhook-id": "msg_2"}) == 400  # the id is signed too
    late, stale = _delivery([SECRET_A], "msg_3", datetime.now(UTC) - timedelta(minutes=10))
    assert receive(late, stale) == 400  # a replay of an old capture
    assert len(handled) == 1


def test_the_guides_receiver_works_through_a_secret_rotation() -> None:
    handled: list[Any] = []
    old, new = _receiver(SECRET_A, handled), _receiver(SECRET_B, handled)
    body, headers = _delivery([SECRET_A, SECRET_B], "msg_r")  # both during the rotation
    assert old(body, headers) == 200
    assert new(body, headers) == 200
    body, headers = _delivery([SECRET_B], "msg_s")  # the old secret removed
    assert old(body, headers) == 400
    assert new(body, headers) == 200
