"""The image's contents without a container engine: the Dockerfile's build steps (a fresh
virtual environment synced from the runtime lock file, then the project installed as a wheel,
not in development mode) run here, and the installed `griddispatch` migrates a new database,
finds every service and loads its data files from site-packages, not from the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from shared.localstack import LocalStack
from shared.settings import PROJECT_ROOT
from tests.helpers.services import fresh_database

DOCKERFILE = (PROJECT_ROOT / "Dockerfile").read_text()


def run(*cmd: str, cwd: Path = PROJECT_ROOT, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, check=False, env=env, timeout=600
    )
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


async def test_the_images_install_runs_every_service_from_site_packages(
    stack: LocalStack, tmp_path: Path
) -> None:
    # the same steps as the Dockerfile's build stage
    assert (
        "uv pip sync --python /opt/griddispatch/bin/python requirements.runtime.lock" in DOCKERFILE
    )
    assert "--no-deps ." in DOCKERFILE
    assert "USER 10001:10001" in DOCKERFILE
    venv = tmp_path / "opt"
    uv = Path(sys.executable).parent / "uv"
    run(str(uv), "venv", "-q", "--python", sys.executable, str(venv))
    python = str(venv / "bin" / "python")
    run(str(uv), "pip", "sync", "-q", "--python", python, "requirements.runtime.lock")
    run(str(uv), "pip", "install", "-q", "--python", python, "--no-deps", ".")

    url = await fresh_database(stack.postgres.url, "image")
    # run from elsewhere, so nothing can come from the checkout
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "GRIDDISPATCH_DATABASE_URL": url}
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    helptext = run(str(venv / "bin" / "griddispatch"), "--help", cwd=elsewhere, env=env)
    for command in ("serve", "migrate", "keys", "grids", "emergency", "subscriptions"):
        assert command in helptext
    run(str(venv / "bin" / "griddispatch"), "migrate", cwd=elsewhere, env=env)
    found = run(
        python,
        "-c",
        "import shared, services.notifier.texts as t; from shared.catalogue import load_file;"
        "print(shared.__file__); print(len(load_file().categories));"
        "print(t.render('resident', 'CaseResolved', 'email', 'en',"
        " {'category_name': 'x', 'note': 'y', 'reference': 'z', 'closes_at': ''}).subject[:12])",
        cwd=elsewhere,
        env=env,
    ).split("\n")
    assert str(venv) in found[0]
    assert "site-packages" in found[0]
    assert int(found[1]) >= 55
    assert found[2] == "[GridDispatc"

    conn = await asyncpg.connect(url)
    try:
        schemas = {
            r["nspname"]
            for r in await conn.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg_%'"
            )
        }
    finally:
        await conn.close()
    assert {"intake", "router", "escalation", "notifier"} <= schemas
