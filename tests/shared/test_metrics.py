import httpx

from shared.metrics import OUTBOX_BACKLOG, health_app


async def _get(app, path: str) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://svc"
    ) as client:
        return await client.get(path)


async def test_ready_names_the_failing_checks() -> None:
    async def ok() -> bool:
        return True

    async def broken() -> bool:
        raise ConnectionError("no database")

    app = health_app({"kafka": ok, "database": broken})
    assert (await _get(app, "/health/live")).status_code == 200
    ready = await _get(app, "/health/ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "failed": ["database"]}
    assert (await _get(health_app({"kafka": ok}), "/health/ready")).status_code == 200


async def test_metrics_endpoint_exposes_the_registry() -> None:
    OUTBOX_BACKLOG.labels("demo").set(7)
    body = (await _get(health_app(), "/metrics/")).text
    assert 'griddispatch_outbox_backlog{schema="demo"} 7.0' in body
