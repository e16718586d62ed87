"""A single-node Apache Kafka (KRaft) run from Maven Central jars with the machine's Java.

Jars are fetched once by `mvn dependency:copy-dependencies` (deploy/local/kafka/pom.xml) into
`<cache>/kafka-<version>/libs`; storage is formatted on the first start; the broker runs in its
own process group, logs to `<home>/kafka.log`, and is stopped with SIGTERM (SIGKILL after a
grace period).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shared.localstack.process import (
    ManagedProcess,
    Progress,
    StackError,
    port_open,
)
from shared.settings import PROJECT_ROOT

KAFKA_DIR = PROJECT_ROOT / "deploy" / "local" / "kafka"
POM = KAFKA_DIR / "pom.xml"
LOG4J = KAFKA_DIR / "log4j2.properties"
TEMPLATE = KAFKA_DIR / "server.properties.template"
SASL_TEMPLATE = KAFKA_DIR / "server-sasl.properties.template"
ADMIN_USER = "admin"


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    if not match:
        raise StackError(f"{POM} names no kafka.version")
    return match[1]


def ensure_jars(cache: Path, progress: Progress) -> Path:
    """The folder of broker jars, downloading them on the first call."""
    libs = cache / f"kafka-{kafka_version()}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise StackError(f"{tool} is not installed: Kafka needs Java 17+ and Maven")
    libs.mkdir(parents=True, exist_ok=True)
    progress(f"downloading Kafka {kafka_version()} jars from Maven Central (once) …")
    cmd = [
        "mvn",
        "-B",
        "--no-transfer-progress",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={libs}",
        "-DincludeScope=runtime",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise StackError("mvn could not fetch the Kafka jars:\n" + proc.stdout[-3000:])
    count = len(list(libs.glob("*.jar")))
    marker.write_text(f"{count} jars\n")
    progress(f"fetched {count} jars into {libs}")
    return libs


@dataclass
class KafkaNode:
    home: Path
    cache: Path
    port: int
    controller_port: int
    partitions: int = 12
    heap: str = "512m"
    # The secured profile: SASL/SCRAM-SHA-512 logins (user → password, `admin` among them, a
    # super user) and ACLs enforced. None: the plain development broker.
    scram_users: dict[str, str] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "kafka.log"

    @property
    def process(self) -> ManagedProcess:
        return ManagedProcess("kafka", self.home / "kafka.pid")

    def _java(self, libs: Path, main: str, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java",
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            # The JIT's quick tier only: on a 2-core machine shared with the services, the
            # optimising tier's compilations took more of the broker's CPU than its traffic for
            # minutes after a start (an idle broker 25% of a core instead of 10%; a steady
            # 400 messages/s, 7.5 CPU-s in 10 s instead of 3.0).
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _write_config(self) -> Path:
        config = self.home / "server.properties"
        template = TEMPLATE if self.scram_users is None else SASL_TEMPLATE
        config.write_text(
            template.read_text().format(
                port=self.port,
                controller_port=self.controller_port,
                data_dir=self.data_dir,
                partitions=self.partitions,
                admin_user=ADMIN_USER,
                admin_password=(self.scram_users or {}).get(ADMIN_USER, ""),
            )
        )
        return config

    def _scram_arguments(self) -> list[str]:
        if self.scram_users is None:
            return []
        if ADMIN_USER not in self.scram_users:
            raise StackError(f"the secured profile needs a password for {ADMIN_USER!r}")
        args = []
        for user, password in self.scram_users.items():
            args += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
        return args

    def admin_client_config(self) -> Path:
        """A client properties file logging in as the admin, for Kafka's own command-line
        tools (kafka-acls, the console consumer)."""
        if self.scram_users is None:
            raise StackError("the plain broker has no logins")
        path = self.home / "admin.properties"
        path.write_text(client_properties(ADMIN_USER, self.scram_users[ADMIN_USER]))
        return path

    def run_tool(self, main: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one of Kafka's command-line tools (by main class) with the broker's jars."""
        libs = ensure_jars(self.cache, lambda _: None)
        return subprocess.run(
            self._java(libs, main, *args), capture_output=True, text=True, check=False
        )

    def start(self, progress: Progress, timeout_s: float = 60) -> float:
        """Start the broker (formatting storage if new) and wait until it serves requests.
        Returns the seconds from launch to ready."""
        if self.process.running():
            progress(f"Kafka already running at {self.bootstrap}")
            return 0.0
        if port_open(self.port):
            raise StackError(f"port {self.port} is taken: set GRIDDISPATCH_LOCAL__KAFKA_PORT")
        libs = ensure_jars(self.cache, progress)
        self.home.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            cluster_id = subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "random-uuid"),
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
            subprocess.run(
                self._java(
                    libs,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    *self._scram_arguments(),
                ),
                capture_output=True,
                text=True,
                check=True,
            )
            progress(f"formatted Kafka storage in {self.data_dir}")
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        started = time.monotonic()
        self.process.launch(
            self._java(libs, "kafka.Kafka", str(config), heap=self.heap), self.log_file
        )
        progress(f"starting Kafka on {self.bootstrap} …")
        self.process.wait_for_log(
            self.log_file, "Kafka Server started", timeout_s, what="Kafka", offset=log_offset
        )
        if not port_open(self.port):
            raise StackError(f"Kafka said it started but {self.bootstrap} does not answer")
        return time.monotonic() - started

    def stop(self) -> bool:
        return self.process.stop(grace_s=20)


def client_properties(user: str, password: str) -> str:
    return (
        "security.protocol=SASL_PLAINTEXT\n"
        "sasl.mechanism=SCRAM-SHA-512\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{user}" password="{password}";\n'
    )
