"""The baseline for bench/intake.py: the same request model and server settings as intake's
`POST /v1/cases`, validating the body and answering 202, with no authentication lookup,
database or outbox behind it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.intake.lifecycle import Status
from services.intake.models import ReportAccepted, ReportIn
from shared.metrics import NO_OPENTELEMETRY
from shared.service import settle_heap


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settle_heap()  # as intake's app
    yield


app = FastAPI(telemetry=NO_OPENTELEMETRY, lifespan=lifespan)  # as intake's app


@app.post("/v1/cases", status_code=202, response_model=ReportAccepted)
async def report_case(body: ReportIn) -> ReportAccepted:
    return ReportAccepted(
        case_id="0",
        tracking_token="0",
        status=Status.REPORTED,
        status_url="/v1/cases/0",
        possible_duplicate_of=None,
        reference="00000000",
    )
