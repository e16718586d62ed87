"""`griddispatch …` as a subprocess pointed at the test stack."""

from __future__ import annotations

import os
import subprocess
import sys

from shared.localstack import LocalStack
from shared.settings import PROJECT_ROOT

CLI = [sys.executable, "-m", "shared.cli.main"]


def run_cli(
    stack: LocalStack, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env={**os.environ, **stack.env(), **(env or {})},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
