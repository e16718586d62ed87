import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.events import (
    CaseAcknowledged,
    CaseReported,
    Channel,
    DecodeError,
    Location,
    decode,
    envelope_json,
    first_seen,
    peek_event_type,
    trusted,
    wrap,
)
from shared.ids import derived_event_id, new_event_id
from shared.settings import PROJECT_ROOT


def _report() -> CaseReported:
    return CaseReported(
        category="heating.outage",
        description="No heating in building 3 since last night",
        location=Location(lat=47.35, lon=123.92),
        channel=Channel.APP,
        reported_at=datetime(2026, 1, 10, 8, 0, tzinfo=UTC),
    )


def test_wrap_and_decode_round_trip() -> None:
    env = wrap(_report(), case_id="c-1", producer="intake")
    env2, event = decode(env.to_json())
    assert env2 == env
    assert isinstance(event, CaseReported)
    assert event.location.lat == 47.35
    assert env.event_type == "CaseReported"
    assert env.schema_version == 1


def test_envelope_json_is_plain_and_keyed_by_case() -> None:
    import json

    env = wrap(CaseAcknowledged(by="w-1"), case_id="c-9", producer="intake")
    data = json.loads(env.to_json())
    assert data["case_id"] == "c-9"
    assert data["payload"] == {"by": "w-1", "note": None}
    assert data["occurred_at"].endswith("Z")


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"event_id": "x"}',
        wrap(CaseAcknowledged(by="w"), case_id="c", producer="p")
        .to_json()
        .replace(b"CaseAcknowledged", b"CaseVanished"),
        wrap(CaseAcknowledged(by="w"), case_id="c", producer="p")
        .to_json()
        .replace(b'"by":"w"', b'"by":7'),
    ],
)
def test_decode_rejects_malformed_messages(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw)


def test_peek_reads_the_event_type_without_validating() -> None:
    raw = wrap(CaseAcknowledged(by="w"), case_id="c", producer="p").to_json()
    assert peek_event_type(raw) == "CaseAcknowledged"
    assert peek_event_type(raw.replace(b'"by":"w"', b'"by":7')) == "CaseAcknowledged"
    for junk in (b"not json", b"[1, 2]", b'{"event_type": 3}', b"{}"):
        assert peek_event_type(junk) is None


def test_event_ids() -> None:
    a, b = new_event_id(), new_event_id()
    assert a.version == 7
    assert a < b  # time-ordered
    src = uuid.uuid4()
    assert derived_event_id(src, "routed") == derived_event_id(src, "routed")
    assert derived_event_id(src, "routed") != derived_event_id(src, "warned")
    # the standard UUIDv5 (ids derived before an upgrade must be derived the same after it)
    namespace = uuid.UUID("6f1c3f2e-6b1e-4a57-9a51-2f0d8c1f4d10")
    assert derived_event_id(src, "routed") == uuid.uuid5(namespace, f"{src}/routed")
    assert type(derived_event_id(src, "routed")) is uuid.UUID


def test_trusted_builds_the_validated_model_and_insists_on_every_field() -> None:
    report = _report()
    built = trusted(CaseReported, **dict(report))
    assert built == report
    assert built.model_dump_json() == report.model_dump_json()
    with pytest.raises(TypeError, match="exactly its fields"):
        trusted(CaseAcknowledged, by="w")  # `note` left out: its default would be missing


@pytest.mark.parametrize(
    "traceparent", [None, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
)
@pytest.mark.parametrize(
    "occurred_at",
    [
        datetime(2026, 1, 12, 8, 0, 1, 5, tzinfo=UTC),
        datetime(2026, 1, 12, 8, 0, 1, tzinfo=UTC),  # no fraction of a second
        datetime(2026, 1, 12, 16, 0, 1, 250000, tzinfo=timezone(timedelta(hours=8))),
    ],
)
def test_envelope_json_is_the_envelopes_own_json(
    traceparent: str | None, occurred_at: datetime
) -> None:
    from tests.escalation.conftest import routed

    routed_event = routed(
        at=datetime(2026, 1, 12, 8, 0, 0, 123456, tzinfo=UTC), ack_s=3600, resolve_s=7200
    ).event()
    for event in (_report(), routed_event, CaseAcknowledged(by="w-1", note="到了")):
        kw: dict[str, Any] = {
            "case_id": "c-7",
            "producer": "router",
            "event_id": new_event_id(),
            "occurred_at": occurred_at,
            "traceparent": traceparent,
        }
        assert envelope_json(event, **kw) == wrap(event, **kw).to_json()


def test_first_seen_keeps_the_new_events_once_in_order() -> None:
    a, b, c = (wrap(CaseAcknowledged(by=w), case_id="c", producer="p") for w in "abc")
    items = [(e, e.event()) for e in (a, b, a, c, b)]
    fresh = first_seen(items, {a.event_id, b.event_id})
    assert [env for env, _ in fresh] == [a, b]


def test_case_references_tell_cases_of_the_same_minute_apart() -> None:
    from shared.ids import case_reference, new_case_id

    ids = [new_case_id() for _ in range(1000)]
    # the first 8 digits of a UUIDv7 are its time: all alike here
    assert len({i[:8] for i in ids}) <= 2
    refs = {case_reference(i) for i in ids}
    assert len(refs) >= 999  # 32 random bits each
    assert all(len(r) == 8 and r == r.upper() for r in refs)
    assert case_reference("01a21d85-0000-7000-8000-00000a1b2c3d") == "0A1B2C3D"


def _with(raw: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    message = orjson.loads(raw)
    edit(message)
    return orjson.dumps(message)


def test_fields_a_newer_release_added_are_ignored_not_refused() -> None:
    """Tolerant reader: adding an optional field is a compatible change, whichever service is
    upgraded first; the unknown fields are dropped, never passed on."""
    env = wrap(_report(), case_id="c-1", producer="intake")

    def newer(message: dict[str, Any]) -> None:
        message["tenant"] = "qiqihar"
        message["payload"]["urgency_hint"] = "high"
        message["payload"]["location"]["floor"] = 3

    env2, event = decode(_with(env.to_json(), newer))
    assert (env2.event_id, env2.case_id, env2.occurred_at) == (
        env.event_id,
        env.case_id,
        env.occurred_at,
    )
    assert not hasattr(env2, "tenant")
    assert event == _report()
    written = envelope_json(event, case_id="c-1", producer="p")
    assert b"floor" not in written
    assert b"urgency_hint" not in written


def test_a_schema_version_newer_than_this_release_is_refused() -> None:
    """A new schema version means old readers would misread the event: it is a poison message
    for them (dead-lettered, replayed once they are upgraded), never guessed at."""
    raw = wrap(CaseAcknowledged(by="w"), case_id="c", producer="p").to_json()
    assert decode(_with(raw, lambda m: m.update(schema_version=1)))[0].schema_version == 1
    with pytest.raises(DecodeError, match="schema_version 2 is newer than this release reads"):
        decode(_with(raw, lambda m: m.update(schema_version=2)))


def test_our_own_code_cannot_misspell_a_field(tmp_path: Path) -> None:
    """Reading ignores unknown fields, so building an event with a misspelt one would lose it
    silently at run time: the type checker refuses it (pydantic's mypy plugin,
    `init_forbid_extra` in pyproject.toml)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from shared.events import CaseAcknowledged\n"
        'CaseAcknowledged(by="w-1", note="ok")\n'
        'CaseAcknowledged(by="w-1", nota="typo")\n'
    )
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", str(probe)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    errors = [line for line in checked.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, checked.stdout + checked.stderr
    assert 'Unexpected keyword argument "nota"' in errors[0]
    assert "probe.py:3:" in errors[0]
