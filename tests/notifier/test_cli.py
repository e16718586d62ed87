import subprocess
import uuid

from shared.localstack import LocalStack
from tests.helpers.cli import run_cli
from tests.notifier.test_webhooks import SECRET_A


def run(stack: LocalStack, *args: str, allow: str = "") -> subprocess.CompletedProcess[str]:
    return run_cli(stack, *args, env={"GRIDDISPATCH_NOTIFIER__WEBHOOK_ALLOW": allow})


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


def test_email_and_sms_subscriptions_and_the_feed_switch_from_the_command_line(
    stack: LocalStack,
) -> None:
    dept, worker = "cli-" + uuid.uuid4().hex[:6], "w-" + uuid.uuid4().hex[:6]
    sms_to_a_department = run(
        stack, "subscriptions", "add", "--department", dept, "--sms", "13912345678"
    )
    assert sms_to_a_department.returncode == 2
    assert "SMS subscriptions are for one grid worker each" in sms_to_a_department.stderr
    two_targets = run(
        stack, "subscriptions", "add", "--worker", worker, "--sms", "1391234", "--email", "a@b.cn"
    )
    assert two_targets.returncode == 2
    email = run(
        stack, "subscriptions", "add", "--department", dept, "--email", "Duty@Heating.example.org"
    )
    sms = run(
        stack, "subscriptions", "add", "--worker", worker, "--sms", "13912345678", "--locale", "en"
    )
    assert email.returncode == sms.returncode == 0, email.stderr + sms.stderr
    listed = run(stack, "subscriptions", "list").stdout.splitlines()
    mine = [line for line in listed if dept in line or worker in line]
    assert len(mine) == 2
    assert any("email" in line and "D***@heating.example.org (zh-CN)" in line for line in mine)
    assert any("sms" in line and "139****5678 (en)" in line for line in mine)
    assert "13912345678" not in "\n".join(listed)  # numbers are listed masked

    sub_id = next(line.split()[0] for line in mine if "sms" in line)
    assert run(stack, "subscriptions", "disable", sub_id).returncode == 0
    assert run(stack, "subscriptions", "disable", sub_id).returncode == 1  # not active any more
    assert "disabled (by an operator)" in next(
        line for line in run(stack, "subscriptions", "list").stdout.splitlines() if worker in line
    )

    assert run(stack, "subscriptions", "feed", dept, "--off").returncode == 0
    bad = run(stack, "subscriptions", "feed", "no spaces allowed", "--on")
    assert bad.returncode == 2
