"""deploy/k8s checked offline: both overlays build; every object validates against the
Kubernetes and CRD schemas; the Kafka resources match the Kafka contract and each service's
declared access exactly; every service is deployed safely (probes, limits, non-root, a
disruption budget, scraped, autoscaled on its real consumer groups); secrets by reference."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from services.escalation.settings import EscalationSettings
from services.intake.settings import IntakeSettings
from services.notifier.settings import NotifierSettings
from services.router.settings import RouterSettings
from shared import dlq, topics
from shared.catalogue import load_file
from shared.service import KafkaAccess, discover_services
from shared.settings import PROJECT_ROOT, KafkaSettings, Settings
from tests.helpers import ops_tools

OVERLAYS = ("dev", "prod")
SERVICES = discover_services()

Acl = tuple[str, str, str, str]  # resource type, name, pattern, operation


def build(overlay: str) -> str:
    proc = subprocess.run(
        [str(ops_tools.kustomize()), "build", str(PROJECT_ROOT / "deploy/k8s/overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    return {overlay: build(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def prod(built: dict[str, str]) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(built["prod"]) if d]


STRIMZI_USER_KEYS = {"password", "sasl.jaas.config"}  # what the User Operator writes


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def validate(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ops_tools.manifest_validator(), input=text, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_kubernetes_and_crd_schemas(
    built: dict[str, str], overlay: str
) -> None:
    result = validate(built[overlay])
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = set(re.findall(r"^ok +(\w+)/", result.stdout, re.M))
    # built-in kinds and the custom resources of all four operators were checked
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Job"} <= kinds
    assert {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"} <= kinds
    assert {"ScaledObject", "TriggerAuthentication", "Cluster"} <= kinds
    assert {"ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds


def test_validator_rejects_a_broken_custom_resource(built: dict[str, str]) -> None:
    objects = [d for d in yaml.safe_load_all(built["dev"]) if d]
    user = next(o for o in objects if o["kind"] == "KafkaUser")
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Fly"]
    result = validate(yaml.safe_dump_all(objects))
    assert result.returncode == 1
    assert re.search(r"FAILED KafkaUser/\S+ \(kafka.strimzi.io/v1\): .*operations", result.stdout)


def test_every_contract_topic_has_a_kafka_topic(prod: list[dict[str, Any]]) -> None:
    declared = {t["spec"]["topicName"]: t["spec"] for t in of_kind(prod, "KafkaTopic").values()}
    assert set(declared) == set(topics.all_contract_topics())
    for name, spec in declared.items():
        assert spec["replicas"] == 3
        if name in topics.case_topics():
            assert spec["partitions"] == KafkaSettings().partitions
        else:  # the directory: compacted, so that every department's latest entry stays
            assert spec["partitions"] == 1
            assert spec["config"]["cleanup.policy"] == "compact"


def _granted(user: dict[str, Any]) -> set[Acl]:
    acls = user["spec"]["authorization"]["acls"]
    return {
        (a["resource"]["type"], a["resource"]["name"], a["resource"]["patternType"], op)
        for a in acls
        for op in a["operations"]
    }


def _needed(access: KafkaAccess) -> set[Acl]:
    need: set[Acl] = set()
    for topic, group in access.reads:
        need |= {("topic", topic, "literal", "Read"), ("topic", topic, "literal", "Describe")}
        need.add(("group", group, "literal", "Read"))
    for topic in access.follows:
        need |= {("topic", topic, "literal", "Read"), ("topic", topic, "literal", "Describe")}
    for topic in access.writes:
        need |= {("topic", topic, "literal", "Write"), ("topic", topic, "literal", "Describe")}
    if access.feeds:
        need |= {("topic", "dept.", "prefix", op) for op in ("Create", "Write", "Describe", "Read")}
    return need


def test_kafka_users_grant_each_service_and_department_exactly_what_it_needs(
    prod: list[dict[str, Any]],
) -> None:
    users = of_kind(prod, "KafkaUser")
    expected: dict[str, set[Acl]] = {
        f"griddispatch-{name}": _needed(spec.kafka) for name, spec in SERVICES.items()
    }
    expected["griddispatch-dlq"] = _needed(dlq.KAFKA_ACCESS)  # `griddispatch dlq …`
    for code in {c.department for c in load_file().categories}:
        expected[f"dept-{code}"] = {
            ("topic", topics.department_feed(code), "literal", "Read"),
            ("topic", topics.department_feed(code), "literal", "Describe"),
            ("group", f"dept-{code}.", "prefix", "Read"),
        }
    assert set(users) == set(expected)
    for name, user in users.items():
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        assert _granted(user) == expected[name], name
    # every service reads something and the declarations are not empty by accident
    assert all(spec.kafka.reads for spec in SERVICES.values())


def _secret_refs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]
        for value in node.values():
            yield from _secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_refs(value)


def test_no_secret_of_ours_shares_a_name_with_a_kafka_users(prod: list[dict[str, Any]]) -> None:
    """Strimzi writes each KafkaUser's password into a Secret of the user's name: a Secret we
    make by hand under such a name (a token, say) would be taken over, or would block it."""
    users = set(of_kind(prod, "KafkaUser"))
    refs = [ref for o in prod for ref in _secret_refs(o)]
    assert refs
    clashing = [r for r in refs if r["name"] in users and r["key"] not in STRIMZI_USER_KEYS]
    assert not clashing


def test_department_group_prefixes_cannot_overlap() -> None:
    prefixes = [f"dept-{c}." for c in {c.department for c in load_file().categories}]
    for a in prefixes:
        assert not [b for b in prefixes if b != a and b.startswith(a)]


def test_department_users_are_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, "deploy/k8s/departments.py", "--check"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_city_s_own_departments_get_users_too(tmp_path: Path) -> None:
    (tmp_path / "departments.csv").write_text(
        "\ufeffcode,name,contact\nheating,市供热公司,\nlegal-aid,法律援助中心,12348\n", "utf-8"
    )
    out = tmp_path / "departments.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "deploy/k8s/departments.py",
            "--departments",
            str(tmp_path / "departments.csv"),
            str(out),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    users = {u["metadata"]["name"]: u for u in yaml.safe_load_all(out.read_text("utf-8")) if u}
    assert "dept-legal-aid" in users  # the city's own
    assert "dept-water" in users  # the catalogue's, still
    acls = users["dept-legal-aid"]["spec"]["authorization"]["acls"]
    assert acls[0]["resource"]["name"] == "dept.legal-aid"


def test_keda_scales_every_service_on_the_groups_it_consumes(prod: list[dict[str, Any]]) -> None:
    scaled = of_kind(prod, "ScaledObject")
    assert set(scaled) == set(SERVICES)
    for name, spec in SERVICES.items():
        triggers = [t for t in scaled[name]["spec"]["triggers"] if t["type"] == "kafka"]
        groups = {(t["metadata"]["topic"], t["metadata"]["consumerGroup"]) for t in triggers}
        assert groups == set(spec.kafka.reads), name
        assert scaled[name]["spec"]["maxReplicaCount"] <= KafkaSettings().partitions


def test_every_service_is_deployed_safely(prod: list[dict[str, Any]]) -> None:
    deployments = of_kind(prod, "Deployment")
    pdbs = of_kind(prod, "PodDisruptionBudget")
    monitors = of_kind(prod, "ServiceMonitor")
    assert set(deployments) == set(SERVICES)
    for name in SERVICES:
        pod = deployments[name]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["args"] == ["serve", name]
        assert container["image"].endswith(":0.1.0")
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert container["resources"]["limits"]["memory"]
        assert container["resources"]["requests"]["cpu"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        env = {e["name"]: e for e in container["env"]}
        assert env["GRIDDISPATCH_KAFKA__SASL_USERNAME"]["value"] == f"griddispatch-{name}"
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
        relabel = monitors[name]["spec"]["endpoints"][0]["relabelings"][0]
        assert relabel["replacement"] == f"griddispatch-{name}"


def test_secrets_only_by_reference(built: dict[str, str]) -> None:
    for text in built.values():
        objects = [d for d in yaml.safe_load_all(text) if d]
        assert not [o for o in objects if o["kind"] == "Secret"]
        for o in objects:
            pod = o.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                for env in container.get("env", []):
                    if re.search(r"PASSWORD|TOKEN|SECRET|DATABASE_URL", env["name"]):
                        assert "secretKeyRef" in env.get("valueFrom", {}), env["name"]


def test_dev_overlay_is_small(built: dict[str, str]) -> None:
    objects = [d for d in yaml.safe_load_all(built["dev"]) if d]
    counts: dict[str, set[int]] = defaultdict(set)
    for o in objects:
        if o["kind"] in ("Deployment", "KafkaNodePool", "KafkaTopic"):
            counts[o["kind"]].add(o["spec"].get("replicas"))
    assert counts == {"Deployment": {1}, "KafkaNodePool": {1}, "KafkaTopic": {1}}
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {
        "griddispatch-dev"
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_the_services_create_are_replicated_as_the_cluster_expects(
    built: dict[str, str], overlay: str
) -> None:
    """Department feeds are created by the notifier, not by a KafkaTopic: with fewer replicas
    than the cluster's min.insync.replicas every acks=all write to them would be refused."""
    objects = [d for d in yaml.safe_load_all(built[overlay]) if d]
    config = of_kind(objects, "ConfigMap")["griddispatch-config"]["data"]
    kafka = next(iter(of_kind(objects, "Kafka").values()))["spec"]["kafka"]["config"]
    factor = int(config["GRIDDISPATCH_KAFKA__REPLICATION_FACTOR"])
    assert factor == int(kafka["default.replication.factor"])
    assert factor >= int(kafka["min.insync.replicas"])
    brokers = sum(
        pool["spec"]["replicas"]
        for pool in of_kind(objects, "KafkaNodePool").values()
        if "broker" in pool["spec"]["roles"]
    )
    assert factor <= brokers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_map_is_settings_the_services_accept(
    built: dict[str, str], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every name in the shared ConfigMap is a setting the services read (a misspelt one would
    be ignored without a word) and every value valid (a bad one would stop every pod)."""
    objects = [d for d in yaml.safe_load_all(built[overlay]) if d]
    config = of_kind(objects, "ConfigMap")["griddispatch-config"]["data"]
    services: list[type[BaseSettings]] = [
        IntakeSettings,
        RouterSettings,
        EscalationSettings,
        NotifierSettings,
    ]
    for name, value in config.items():
        monkeypatch.setenv(name, value)
        model: type[BaseModel] = Settings
        path = name.removeprefix("GRIDDISPATCH_").lower().split("__")
        for cls in services:
            prefix = str(cls.model_config.get("env_prefix", "")).lower()
            if name.lower().startswith(prefix):
                model, path = cls, [name.lower().removeprefix(prefix)]
        for part in path:
            assert part in model.model_fields, f"{name}: no setting {part!r} in {model.__name__}"
            annotation = model.model_fields[part].annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
    settings = Settings()
    for cls in services:
        cls()
    longest_ms = max(
        int(t["spec"]["config"].get("retention.ms", 0))
        for t in of_kind(objects, "KafkaTopic").values()
    )
    assert timedelta(days=settings.retention.dedup_days) > timedelta(milliseconds=longest_ms)
    assert settings.retention.personal_data_days == int(
        config["GRIDDISPATCH_RETENTION__PERSONAL_DATA_DAYS"]
    )
