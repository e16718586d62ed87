"""Generates the published form of the Kafka contract from the pydantic models:
one JSON Schema per event (envelope + typed payload) under `docs/schemas/`, and an AsyncAPI 3.0
document `docs/asyncapi.json`. Run `griddispatch contract generate` (or `make schemas`);
a test fails when the committed files differ from what the models say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, create_model

from shared import topics
from shared.directory import DepartmentEntry
from shared.events import EVENT_TYPES, Envelope, Event
from shared.feed import feed_message_schema
from shared.settings import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"

# Who writes and who reads each topic (mirrors docs/architecture.md).
TOPIC_ROLES: dict[str, dict[str, Any]] = {
    topics.CASES_INTAKE: {
        "description": "New reports and reroute requests, keyed by case_id.",
        "producers": ["intake"],
        "consumers": ["router"],
    },
    topics.CASES_LIFECYCLE: {
        "description": "Everything that happens to a case after intake, keyed by case_id.",
        "producers": ["router", "intake", "escalation"],
        "consumers": ["escalation", "notifier", "intake"],
    },
}


def envelope_model(event: type[Event]) -> type[BaseModel]:
    """The envelope of one event type, with `payload` typed."""
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in Envelope.model_fields.items()
    }
    fields["event_type"] = (Literal[event.EVENT_TYPE], ...)
    fields["schema_version"] = (Literal[event.SCHEMA_VERSION], ...)
    fields["payload"] = (event, ...)
    model: type[BaseModel] = create_model(
        f"{event.EVENT_TYPE}Envelope",
        __doc__=(event.__doc__ or event.EVENT_TYPE).strip(),
        **fields,
    )
    return model


def event_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema, one per event type and version."""
    out: dict[str, dict[str, Any]] = {}
    for name, cls in sorted(EVENT_TYPES.items()):
        schema = envelope_model(cls).model_json_schema(mode="serialization")
        schema["$id"] = f"griddispatch:{name}:v{cls.SCHEMA_VERSION}"
        schema["x-topic"] = cls.TOPIC
        out[f"{name}.v{cls.SCHEMA_VERSION}.json"] = schema
    return out


def _message(name: str, summary: str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "title": name,
        "summary": summary,
        "contentType": "application/json",
        "bindings": {"kafka": {"key": {"type": "string", "description": key}}},
        "payload": payload,
    }


def _operation(action: str, channel_id: str) -> dict[str, Any]:
    return {"action": action, "channel": {"$ref": f"#/channels/{channel_id}"}}


def _refs(*names: str) -> dict[str, Any]:
    return {n: {"$ref": f"#/components/messages/{n}"} for n in names}


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for name, cls in sorted(EVENT_TYPES.items()):
        messages[name] = _message(
            name,
            (cls.__doc__ or name).strip().splitlines()[0],
            "case_id",
            {"$ref": f"schemas/{name}.v{cls.SCHEMA_VERSION}.json"},
        )
    for topic, role in TOPIC_ROLES.items():
        names = sorted(n for n, c in EVENT_TYPES.items() if topic == c.TOPIC)
        channel_id = topic.replace(".", "_")
        channels[channel_id] = {
            "address": topic,
            "description": role["description"],
            "messages": _refs(*names),
        }
        for producer in role["producers"]:
            operations[f"{producer}_sends_{channel_id}"] = _operation("send", channel_id)
        for consumer in role["consumers"]:
            operations[f"{consumer}_receives_{channel_id}"] = _operation("receive", channel_id)
        channels[f"{channel_id}_dlq"] = {
            "address": topics.dlq(topic),
            "description": f"Poison messages of {topic}, unchanged, with the error in "
            "x-dlq-* headers.",
        }
    channels["directory_departments"] = {
        "address": topics.DEPARTMENTS,
        "description": "The department directory: each department's name, keyed by its code; "
        "compacted (cleanup.policy=compact), one partition; an empty value (tombstone) when a "
        "department is removed. Readers follow it whole, without a consumer group.",
        "messages": _refs("DepartmentEntry"),
    }
    messages["DepartmentEntry"] = _message(
        "DepartmentEntry",
        "One department's entry in the directory.",
        "department code",
        DepartmentEntry.model_json_schema(),
    )
    operations["router_sends_directory_departments"] = _operation("send", "directory_departments")
    for reader in ("router", "intake", "notifier"):
        operations[f"{reader}_receives_directory_departments"] = _operation(
            "receive", "directory_departments"
        )
    channels["dept"] = {
        "address": "dept.{code}",
        "description": "One feed per department: its cases, with personal data minimised. "
        "The same message is the body of the department's webhooks.",
        "parameters": {"code": {"description": "department code"}},
        "messages": _refs("DepartmentFeedMessage"),
    }
    messages["DepartmentFeedMessage"] = _message(
        "DepartmentFeedMessage",
        "One lifecycle event of a case assigned to the department.",
        "case_id",
        {"$ref": "schemas/DepartmentFeedMessage.json"},
    )
    operations["notifier_sends_dept"] = _operation("send", "dept")
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "GridDispatch Kafka contract",
            "version": "1",
            "description": "Every case message is a JSON envelope keyed by case_id; the "
            "department directory is keyed by department code.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {"host": "127.0.0.1:19092", "protocol": "kafka"},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render() -> dict[str, str]:
    """Relative path under docs/ → file text."""
    files = {
        f"schemas/{name}": json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
        for name, schema in event_schemas().items()
    }
    files["schemas/DepartmentFeedMessage.json"] = (
        json.dumps(feed_message_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    )
    files["asyncapi.json"] = json.dumps(asyncapi(), indent=2, ensure_ascii=False) + "\n"
    return files


def write(docs: Path = DOCS) -> list[Path]:
    written = []
    schema_dir = docs / "schemas"
    schema_dir.mkdir(parents=True, exist_ok=True)
    files = render()
    for stale in schema_dir.glob("*.json"):
        if f"schemas/{stale.name}" not in files:
            stale.unlink()
    for rel, text in files.items():
        path = docs / rel
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_files(docs: Path = DOCS) -> list[str]:
    """What differs between docs/ and the models (empty when up to date)."""
    files = render()
    stale = [
        rel
        for rel, text in files.items()
        if not (docs / rel).exists() or (docs / rel).read_text(encoding="utf-8") != text
    ]
    extra = [
        f"schemas/{p.name}"
        for p in (docs / "schemas").glob("*.json")
        if f"schemas/{p.name}" not in files
    ]
    return stale + extra
