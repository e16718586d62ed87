"""The operations tools the tests check deploy/ with, installed on first use into
`.local/tools` from the machine's registries: kustomize (Go module proxy), Prometheus and
promtool (Debian's package, unpacked, not installed), and the manifest validator's npm
packages (deploy/k8s/check, from its lock file)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from shared.localstack.prometheus import ensure_prometheus
from shared.settings import PROJECT_ROOT

KUSTOMIZE_VERSION = "v5.7.1"
CHECK_DIR = PROJECT_ROOT / "deploy" / "k8s" / "check"


def _home() -> Path:
    home = Path(os.environ.get("GRIDDISPATCH_LOCAL__HOME", PROJECT_ROOT / ".local")) / "tools"
    home.mkdir(parents=True, exist_ok=True)
    return home


def _run(cmd: list[str], **kwargs: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def kustomize() -> Path:
    binary = _home() / "bin" / "kustomize"
    if not binary.exists():
        _run(
            ["go", "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
            env={**os.environ, "GOBIN": str(binary.parent)},
        )
    return binary


def _prometheus_dir() -> Path:
    return ensure_prometheus(_home())


def promtool() -> Path:
    return _prometheus_dir() / "promtool"


def prometheus() -> Path:
    return _prometheus_dir() / "prometheus"


def manifest_validator() -> list[str]:
    """The command that validates manifests (files as arguments, or stdin)."""
    lock = CHECK_DIR / "package-lock.json"
    stamp = CHECK_DIR / "node_modules" / ".installed"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CHECK_DIR)
        stamp.touch()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("Node.js is needed to validate the Kubernetes manifests")
    return [node, str(CHECK_DIR / "validate.mjs")]
