"""A local Prometheus (Debian's build, unpacked into the cache — not installed) scraping the
services, with the alert rules of deploy/prometheus loaded: `griddispatch up` starts one, and
the tests check the rules and dashboards with it and its promtool."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from shared.localstack.process import StackError
from shared.settings import PROJECT_ROOT

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "prometheusrule.yaml"


def ensure_prometheus(cache: Path) -> Path:
    """The folder holding `prometheus` and `promtool`, fetched on the first call with
    `apt-get download` (Debian's registry) and unpacked with `dpkg-deb -x`."""
    root = cache / "prometheus"
    bin_dir = root / "usr" / "bin"
    if (bin_dir / "promtool").exists() and (bin_dir / "prometheus").exists():
        return bin_dir
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        download = ["apt-get", "download", "-q", "prometheus"]
        try:
            if subprocess.run(download, cwd=tmp, capture_output=True, check=False).returncode:
                # a new machine may have no package lists yet
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=True)
                subprocess.run(download, cwd=tmp, capture_output=True, check=True)
            [deb] = Path(tmp).glob("prometheus_*.deb")
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, check=True)
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            raise StackError(f"could not fetch Debian's prometheus package: {exc}") from exc
    return bin_dir


def rule_groups() -> dict[str, Any]:
    """The `spec` of deploy/prometheus/prometheusrule.yaml: a plain Prometheus rule file."""
    spec: dict[str, Any] = yaml.safe_load(RULES.read_text())["spec"]
    return spec


def write_rules(folder: Path) -> Path:
    """The alert rules as a plain rule file in `folder` (for Prometheus and promtool)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "alerts.rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups(), sort_keys=False))
    return path


def write_config(folder: Path, targets: dict[str, int], *, interval: str = "5s") -> Path:
    """prometheus.yml (and the rule file beside it) scraping `job name → port` on loopback."""
    rules = write_rules(folder)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [rules.name],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics/",
                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            }
            for job, port in targets.items()
        ],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def command(bin_dir: Path, folder: Path, port: int) -> list[str]:
    return [
        str(bin_dir / "prometheus"),
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
