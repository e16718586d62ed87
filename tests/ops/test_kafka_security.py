"""Kafka security on a real broker: the secured local profile (SASL/SCRAM-SHA-512 logins,
ACLs enforced) with the ACLs of the KafkaUsers in deploy/k8s applied by Kafka's own
`kafka-acls` tool. The four services run on their own users; the notifier can create and write
every department's feed; a department reads its own feed and nothing else, with its own
consumer groups only, and cannot write."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from services.intake import store as intake_store
from services.intake.auth import Role
from services.router import democity
from services.router import store as router_store
from shared.db import migrate
from shared.dlq import read_dead_letters, replay
from shared.kafka import connection_options, create_contract_topics, ensure_topics, make_producer
from shared.localstack import LocalStack, free_port
from shared.localstack.kafka import ADMIN_USER, KafkaNode
from shared.service import discover_services
from shared.settings import PROJECT_ROOT, KafkaSettings
from shared.topics import dead_letter_topics
from tests.helpers.services import fresh_database, running_service

USERS_FILES = [
    PROJECT_ROOT / "deploy/k8s/base/kafka/users.yaml",
    PROJECT_ROOT / "deploy/k8s/base/kafka/departments.yaml",
]
NOTIFIER, ROADS, WATER = "griddispatch-notifier", "dept-roads", "dept-water"
OPERATOR = "griddispatch-dlq"
SERVICE_USERS = {name: f"griddispatch-{name}" for name in ("intake", "router", "escalation")}
USERS = (NOTIFIER, ROADS, WATER, OPERATOR, *SERVICE_USERS.values())


def kafka_users() -> dict[str, dict[str, Any]]:
    found = {}
    for path in USERS_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "KafkaUser":
                found[doc["metadata"]["name"]] = doc
    return found


def acl_commands(user: str, spec: dict[str, Any], admin_config: Path, bootstrap: str) -> list[Any]:
    """kafka-acls invocations granting what the KafkaUser grants, one per kind of grant."""
    grants: dict[tuple[str, str, tuple[str, ...]], list[str]] = defaultdict(list)
    for acl in spec["spec"]["authorization"]["acls"]:
        res = acl["resource"]
        grants[(res["type"], res["patternType"], tuple(acl["operations"]))].append(res["name"])
    commands = []
    for (kind, pattern, operations), names in grants.items():
        args = ["--bootstrap-server", bootstrap, "--command-config", str(admin_config), "--add"]
        args += ["--allow-principal", f"User:{user}"]
        args += ["--resource-pattern-type", "prefixed" if pattern == "prefix" else "literal"]
        for op in operations:
            args += ["--operation", op]
        for name in names:
            args += [f"--{kind}", name]
        commands.append(args)
    return commands


@pytest.fixture(scope="module")
def secured() -> Iterator[tuple[KafkaNode, dict[str, str]]]:
    passwords = {u: secrets.token_urlsafe(16) for u in (ADMIN_USER, *USERS)}
    home = Path(tempfile.mkdtemp(prefix="griddispatch-sasl-"))
    cache = Path(os.environ.get("GRIDDISPATCH_LOCAL__HOME", PROJECT_ROOT / ".local")) / "cache"
    node = KafkaNode(
        home=home,
        cache=cache,
        port=free_port(),
        controller_port=free_port(),
        partitions=1,
        heap="384m",
        scram_users=passwords,
    )
    try:
        node.start(lambda msg: print(msg, flush=True))
        admin = node.admin_client_config()
        users = kafka_users()
        commands = [c for u in USERS for c in acl_commands(u, users[u], admin, node.bootstrap)]
        with ThreadPoolExecutor(2) as pool:
            for result in pool.map(
                lambda args: node.run_tool("org.apache.kafka.tools.AclCommand", *args), commands
            ):
                assert result.returncode == 0, result.stdout + result.stderr
        yield node, passwords
    finally:
        node.stop()
        shutil.rmtree(home, ignore_errors=True)


def login(node: KafkaNode, passwords: dict[str, str], user: str) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers=node.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_username=user,
        sasl_password=passwords[user],
    )


@pytest.fixture(scope="module")
async def feeds(secured: tuple[KafkaNode, dict[str, str]]) -> None:
    """The notifier, logged in as its own KafkaUser, creates and writes two feeds."""
    node, passwords = secured
    notifier = login(node, passwords, NOTIFIER)
    await ensure_topics(connection_options(notifier), ["dept.roads", "dept.water"], partitions=1)
    producer = make_producer(notifier, "notifier")
    await producer.start()
    try:
        await producer.send_and_wait("dept.roads", b"roads case", key=b"c1")
        await producer.send_and_wait("dept.water", b"water case", key=b"c2")
    finally:
        await producer.stop()


async def read(settings: KafkaSettings, topic: str, group: str | None) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        **connection_options(settings),
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        await consumer.start()
        for _ in range(20):
            batches = await consumer.getmany(timeout_ms=500)
            values = [r.value for recs in batches.values() for r in recs]
            if values:
                if group is not None:
                    await consumer.commit()
                return values
        return []
    finally:
        await consumer.stop()


async def test_a_department_reads_its_own_feed(secured, feeds) -> None:
    node, passwords = secured
    roads = login(node, passwords, ROADS)
    assert await read(roads, "dept.roads", "dept-roads.dispatch-desk") == [b"roads case"]


async def test_a_department_cannot_read_another_departments_feed(secured, feeds) -> None:
    node, passwords = secured
    roads = login(node, passwords, ROADS)
    with pytest.raises(TopicAuthorizationFailedError):
        await read(roads, "dept.water", None)
    with pytest.raises(TopicAuthorizationFailedError):
        await read(roads, "dept.water", "dept-roads.dispatch-desk")
    # while water itself can
    water = login(node, passwords, WATER)
    assert await read(water, "dept.water", "dept-water.console") == [b"water case"]


async def test_a_department_uses_only_its_own_consumer_groups(secured, feeds) -> None:
    node, passwords = secured
    roads = login(node, passwords, ROADS)
    with pytest.raises(GroupAuthorizationFailedError):
        await read(roads, "dept.roads", "dept-water.spy")


async def test_a_department_cannot_write_feeds_or_read_the_pipeline(secured, feeds) -> None:
    node, passwords = secured
    roads = login(node, passwords, ROADS)
    producer = AIOKafkaProducer(**connection_options(roads))
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait("dept.roads", b"forged")
    finally:
        await producer.stop()
    with pytest.raises(TopicAuthorizationFailedError):
        await read(roads, "cases.lifecycle", None)


async def test_an_operator_replays_dead_letters_and_can_do_nothing_else(secured) -> None:
    """`griddispatch dlq` on the operator's own KafkaUser: reads a DLQ the router wrote and
    sends the message back to its topic; reads no case topic, writes no feed."""
    node, passwords = secured
    await create_contract_topics(connection_options(login(node, passwords, ADMIN_USER)), 1)
    router = login(node, passwords, SERVICE_USERS["router"])
    key = f"case-{uuid.uuid4()}".encode()
    producer = make_producer(router, "router")
    await producer.start()
    try:
        headers = [("x-dlq-topic", b"cases.intake"), ("x-dlq-consumer", b"router")]
        await producer.send_and_wait("cases.intake.dlq", b"{}", key=key, headers=headers)
    finally:
        await producer.stop()

    operator = login(node, passwords, OPERATOR)
    everything = await read_dead_letters(connection_options(operator), dead_letter_topics())
    assert key in {x.key for x in everything}
    none = await read_dead_letters(
        connection_options(operator), dead_letter_topics(), keep=lambda x: x.key != key
    )
    assert key not in {x.key for x in none}
    [mine] = await read_dead_letters(
        connection_options(operator), dead_letter_topics(), keep=lambda x: x.key == key
    )
    assert await replay(operator, [mine]) == 1
    consumer = AIOKafkaConsumer(
        "cases.intake", **connection_options(router), auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        seen: list[Any] = []
        for _ in range(40):
            batches = await consumer.getmany(timeout_ms=500)
            seen += [r for recs in batches.values() for r in recs if r.key == key]
            if seen:
                break
    finally:
        await consumer.stop()
    [back] = seen
    assert dict(back.headers)["x-replayed-from"] == mine.position.encode()

    with pytest.raises(TopicAuthorizationFailedError):
        await read(operator, "cases.intake", None)
    forger = AIOKafkaProducer(**connection_options(operator))
    await forger.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await forger.send_and_wait("dept.roads", b"forged")
    finally:
        await forger.stop()


async def test_a_wrong_password_is_refused(secured) -> None:
    node, _ = secured
    impostor = login(node, {ROADS: "not-the-password"}, ROADS)
    consumer = AIOKafkaConsumer("dept.roads", **connection_options(impostor))
    with pytest.raises(KafkaConnectionError):
        await consumer.start()
    await consumer.stop()


async def test_every_service_runs_on_its_own_kafka_user(
    secured: tuple[KafkaNode, dict[str, str]], stack: LocalStack, tmp_path: Path
) -> None:
    """The four services, each logged in as its KafkaUser and limited by its ACLs, take a
    report from HTTP to the department's feed; the department reads it with its own login."""
    node, passwords = secured
    admin = login(node, passwords, ADMIN_USER)
    await create_contract_topics(connection_options(admin), partitions=1)
    url = await fresh_database(stack.postgres.url, "acl")
    conn = await asyncpg.connect(url)
    try:
        for spec in discover_services().values():
            if spec.schema:
                await migrate(conn, spec.schema, spec.migrations)
        city = democity.generate(seed=5, scale="small")
        await router_store.load_city(conn, city)
        await router_store.replace_rules(conn, democity.default_rules())
        key = (await intake_store.create_key(conn, "acl", Role.RESIDENT_APP, None)).token
    finally:
        await conn.close()

    ports = {name: free_port() for name in discover_services()}
    base_env = {
        "GRIDDISPATCH_DATABASE_URL": url,
        "GRIDDISPATCH_KAFKA__BOOTSTRAP_SERVERS": node.bootstrap,
        "GRIDDISPATCH_KAFKA__PARTITIONS": "1",
        "GRIDDISPATCH_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        **{f"GRIDDISPATCH_{n.upper()}__PORT": str(p) for n, p in ports.items()},
    }
    with contextlib.ExitStack() as services:
        for name in ports:
            user = f"griddispatch-{name}"
            env = {
                **base_env,
                "GRIDDISPATCH_KAFKA__SASL_USERNAME": user,
                "GRIDDISPATCH_KAFKA__SASL_PASSWORD": passwords[user],
            }
            ready = f"http://127.0.0.1:{ports[name]}/health/ready" if name == "intake" else None
            services.enter_context(
                running_service(name, env, ready_url=ready, log=tmp_path / f"{name}.log")
            )
        grid = next(g for g in city.grids if g["kind"] == "comprehensive")
        lat, lon = democity.point_in(grid, 0.5, 0.5)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['intake']}") as client:
            r = await client.post(
                "/v1/cases",
                headers={"Authorization": f"Bearer {key}"},
                json={
                    "category": "roads.pothole",
                    "description": "路面坑洼",
                    "location": {"lat": lat, "lon": lon},
                },
            )
        assert r.status_code == 202, r.text
        case_id, token = r.json()["case_id"], r.json()["tracking_token"]
        roads = login(node, passwords, ROADS)
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                values = await read(roads, "dept.roads", "dept-roads.acl-check")
            except TopicAuthorizationFailedError:
                values = []  # not created yet (the notifier creates it on the first case)
            seen += [json.loads(v) for v in values if v.startswith(b"{")]
            if any(m["case_id"] == case_id for m in seen):
                break
            await asyncio.sleep(1)
        # the router published the department directory, and intake follows it, on their
        # own logins: the resident reads the department's name
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['intake']}") as client:
            for _ in range(300):
                view = (
                    await client.get(f"/v1/cases/{case_id}", headers={"X-Tracking-Token": token})
                ).json()
                if view.get("department_name"):
                    break
                await asyncio.sleep(0.1)
    assert [m["event_type"] for m in seen if m["case_id"] == case_id] == ["CaseRouted"]
    assert view["department"] == "roads"
    assert view["department_name"] == democity.DEPARTMENT_NAMES["roads"]
    for name in ports:
        log = (tmp_path / f"{name}.log").read_text()
        assert "AuthorizationFailed" not in log, f"{name} was refused something it needs"
