"""Intake as several server processes on one port: what `griddispatch serve intake` runs (as
`python -m services.intake.workers`) when `GRIDDISPATCH_INTAKE__WORKERS` > 1. uvicorn's
supervisor starts the workers and replaces any that dies; it and every worker log as the
service does (JSON lines, `"service": "intake"`), not in uvicorn's own format."""

from __future__ import annotations

import uvicorn

from services.intake.settings import IntakeSettings
from shared.logging import configure_logging
from shared.settings import get_settings


def main() -> None:
    settings, isettings = get_settings(), IntakeSettings()
    configure_logging("intake", level=settings.log_level, json=settings.log_json)
    uvicorn.run(
        "services.intake.app:asgi",  # each worker calls it, and so configures its own logging
        factory=True,
        host=isettings.host,
        port=isettings.port,
        workers=isettings.workers,
        log_config=None,  # uvicorn's loggers go to ours
        access_log=False,
    )


if __name__ == "__main__":
    main()
