import os
import subprocess
import sys
import uuid

from shared.localstack import LocalStack
from shared.settings import PROJECT_ROOT
from tests.notifier.test_webhooks import SECRET_A

CLI = [sys.executable, "-m", "shared.cli.main"]


def run(stack: LocalStack, *args: str, allow: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack.env(), "GRIDDISPATCH_NOTIFIER__WEBHOOK_ALLOW": allow}
    return subprocess.run(
        [*CLI, *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_subscriptions_and_deliveries_from_the_command_line(stack: LocalStack) -> None:
    dept = "cli-" + uuid.uuid4().hex[:6]
    refused = run(
        stack,
        "subscriptions",
        "add",
        "--department",
        dept,
        "--webhook",
        "http://10.0.0.8/hook",
        "--secret",
        SECRET_A,
    )
    assert refused.returncode == 2
    assert "non-public address" in refused.stderr
    added = run(
        stack,
        "subscriptions",
        "add",
        "--department",
        dept,
        "--webhook",
        "http://127.0.0.1:9/hook",
        "--secret",
        SECRET_A,
        allow="127.0.0.1",
    )
    assert added.returncode == 0, added.stderr
    listed = run(stack, "subscriptions", "list")
    assert dept in listed.stdout
    missing = run(stack, "deliveries", "replay", str(uuid.uuid4()))
    assert missing.returncode == 1
