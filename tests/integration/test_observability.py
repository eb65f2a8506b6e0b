"""GET /metrics, request ids and the log line per request, in-process (one process: the
default registry). tests/e2e/test_observability.py checks the same over `serve --workers 2`."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from prometheus_client import REGISTRY, generate_latest
from pydantic import ValidationError

from energy_engine.asgi import Receive, Scope, Send, answer
from energy_engine.importer.run import ImportStopped, import_files
from energy_engine.observability import logs, metrics
from energy_engine.observability.requests import RequestLog
from energy_engine.settings import LogFormat, Settings
from tests.conftest import PrivatePostgres
from tests.readings import iso, meter, minute_ago, vehicle
from tests.scrape import Key, delta, readings, samples, value


async def scrape(client: httpx.AsyncClient) -> dict[Key, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_reading_counters_match_what_was_sent(client: httpx.AsyncClient) -> None:
    at = minute_ago(5)
    before = await scrape(client)
    batch = [meter("M-1", at, 1.0), meter("M-2", at, 2.0), vehicle("V-1", at, 3.0)]
    answers = [
        await client.post("/v1/ingest", json=batch),
        await client.post("/v1/ingest", json=[*batch[:2], meter("M-3", at, 1.0)]),
        await client.post("/v1/ingest/vehicle", json=vehicle("V-1", at, 3.0)),
    ]
    assert [a.json() for a in answers] == [
        {"accepted": 3, "duplicates": 0},
        {"accepted": 1, "duplicates": 2},
        {"accepted": 0, "duplicates": 1},
    ]
    # Two invalid items of three (one with two problems), a body that is no JSON, an item of
    # a mixed body that lacks its fields.
    bad = [
        meter("M-4", at, 1.0),
        {**meter("M-5", at, 1.0), "kwhConsumedAc": "many"},
        {"meterId": "M-6", "timestamp": iso(at)},
    ]
    refused = [
        await client.post("/v1/ingest/meter", json=bad),
        await client.post("/v1/ingest/vehicle", content=b"{not json"),
        await client.post("/v1/ingest", json=[{"meterId": "M-7"}]),
    ]
    assert [r.status_code for r in refused] == [422, 400, 422]
    after = await scrape(client)

    assert delta(before, after, "energy_readings_total") == {
        readings("meter", "accepted"): 3,
        readings("vehicle", "accepted"): 1,
        readings("meter", "duplicate"): 2,
        readings("vehicle", "duplicate"): 1,
        readings("meter", "rejected"): 2,
        readings("vehicle", "rejected"): 1,
        readings("unknown", "rejected"): 1,
    }
    # Valid bodies only: 3 + 3 + 1 readings in three requests.
    assert delta(before, after, "energy_ingest_batch_readings_count") == {
        ("energy_ingest_batch_readings_count", (("transport", "http"),)): 3
    }
    assert delta(before, after, "energy_ingest_batch_readings_sum") == {
        ("energy_ingest_batch_readings_sum", (("transport", "http"),)): 7
    }
    # Every reading written went through a group commit, each commit timed.
    commits = value(after, "energy_ingest_commit_readings_count") - value(
        before, "energy_ingest_commit_readings_count"
    )
    assert 1 <= commits <= 3
    assert (
        value(after, "energy_ingest_commit_seconds_count")
        - value(before, "energy_ingest_commit_seconds_count")
        == commits
    )
    assert (
        value(after, "energy_ingest_commit_readings_sum")
        - value(before, "energy_ingest_commit_readings_sum")
        == 7
    )


async def test_gauges_of_the_process(client: httpx.AsyncClient, settings: Settings) -> None:
    scraped = await scrape(client)
    assert value(scraped, "energy_ingest_queue_readings") == 0
    assert value(scraped, "energy_db_pool_max_connections", pool="request") == (
        settings.pool_max_size
    )
    assert value(scraped, "energy_db_pool_max_connections", pool="writer") == (
        settings.writer_connections
    )
    for pool in ("request", "writer"):
        opened = value(scraped, "energy_db_pool_connections", pool=pool)
        assert 1 <= opened <= value(scraped, "energy_db_pool_max_connections", pool=pool)
        assert 0 <= value(scraped, "energy_db_pool_in_use_connections", pool=pool) <= opened


async def test_gauges_from_the_database(
    client: httpx.AsyncClient, conn: asyncpg.Connection, settings: Settings
) -> None:
    scraped = await scrape(client)
    assert value(scraped, "energy_partitions_ahead_days") == settings.partition_days_ahead
    assert value(scraped, "energy_rollup_lag_seconds") == 0
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    await conn.execute(
        "INSERT INTO rollup_dirty (stream, device_id, hour, generation) VALUES"
        " ('meter', 'M-1', $1, 1), ('vehicle', 'V-1', $2, 2)",
        hour,
        hour + timedelta(hours=1),
    )
    lag = value(await scrape(client), "energy_rollup_lag_seconds")
    age = (datetime.now(UTC) - hour).total_seconds()
    assert age - 60 < lag <= age
    last = datetime.now(UTC).date() + timedelta(days=settings.partition_days_ahead)
    await conn.execute(f"DROP TABLE vehicle_readings_p{last:%Y%m%d}")  # one stream short
    scraped = await scrape(client)
    assert value(scraped, "energy_partitions_ahead_days") == settings.partition_days_ahead - 1


async def test_retention_last_run(client: httpx.AsyncClient) -> None:
    at = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
    metrics.retention_ran(at)
    assert value(await scrape(client), "energy_retention_last_run_timestamp_seconds") == (
        at.timestamp()
    )


async def test_request_latency_is_labelled_by_route_template(client: httpx.AsyncClient) -> None:
    await client.post("/v1/ingest/vehicle", json=vehicle("V-42", minute_ago(1), 1.0))
    before = await scrape(client)
    codes = [
        (await client.get("/v1/analytics/performance/V-42")).status_code,
        (await client.get("/v1/vehicles/V-42/status")).status_code,
        (await client.get("/v1/vehicles/NOBODY/status")).status_code,
        (await client.get("/no/such/path/V-42")).status_code,
        (await client.request("BREW", "/v1/ingest")).status_code,
        (await client.get("/health/live")).status_code,
    ]
    assert codes == [200, 200, 404, 404, 405, 200]
    after = await scrape(client)
    changed = delta(before, after, "energy_http_request_duration_seconds_count")
    name = "energy_http_request_duration_seconds_count"

    def key(route: str, method: str, status: int) -> Key:
        labels = {"route": route, "method": method, "status": str(status)}
        return (name, tuple(sorted(labels.items())))

    assert changed == {
        key("/v1/analytics/performance/{vehicleId}", "GET", 200): 1,
        key("/v1/vehicles/{vehicleId}/status", "GET", 200): 1,
        key("/v1/vehicles/{vehicleId}/status", "GET", 404): 1,
        key("unmatched", "GET", 404): 1,
        key("/v1/ingest", "other", 405): 1,
        key("/health/live", "GET", 200): 1,
        key("/metrics", "GET", 200): 1,  # the scrape before
    }
    assert not [k for k in after if "V-42" in str(k) or "NOBODY" in str(k)]


async def test_request_id_is_taken_or_made_and_echoed(client: httpx.AsyncClient) -> None:
    given = await client.get("/health/live", headers={"X-Request-ID": "gw-7f3a:1.2"})
    assert given.headers["x-request-id"] == "gw-7f3a:1.2"
    made = [(await client.get("/health/live")).headers["x-request-id"] for _ in range(3)]
    assert len(set(made)) == 3
    assert all(re.fullmatch(r"[0-9a-f]{20}", rid) for rid in made)
    for refused in ("has space", "x" * 129, "tab\there", ""):
        rid = (await client.get("/health/live", headers={"X-Request-ID": refused})).headers[
            "x-request-id"
        ]
        assert re.fullmatch(r"[0-9a-f]{20}", rid), refused
    # The lean routes too, errors included.
    lean = await client.post("/v1/ingest/meter", content=b"[", headers={"X-Request-ID": "lean-1"})
    assert (lean.status_code, lean.headers["x-request-id"]) == (400, "lean-1")


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Every log line written during the test, formatted as `serve` writes them (JSON)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


async def test_one_log_line_per_request(client: httpx.AsyncClient, log_lines: io.StringIO) -> None:
    body = orjson.dumps(meter("M-1", minute_ago(1), 1.0))
    response = await client.post(
        "/v1/ingest/meter?x=1",
        content=body,
        headers={"X-Request-ID": "req-1", "content-type": "application/json"},
    )
    assert response.status_code == 200
    unknown = await client.get("/v1/vehicles/V-9/status")
    requests = [line for line in parsed(log_lines) if line["logger"] == "energy_engine.request"]
    assert len(requests) == 2
    first, second = requests
    assert set(first) == {
        "time",
        "level",
        "logger",
        "pid",
        "message",
        "request_id",
        "method",
        "route",
        "path",
        "status",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "client",
        "key_id",
    }
    assert first["request_id"] == "req-1"
    assert (first["level"], first["message"]) == ("info", "request")
    assert (first["method"], first["route"], first["path"], first["status"]) == (
        "POST",
        "/v1/ingest/meter",
        "/v1/ingest/meter",
        200,
    )
    assert first["bytes_in"] == len(body)
    assert first["bytes_out"] == len(response.content)
    assert 0 < first["duration_ms"] < 10_000
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert (second["route"], second["path"], second["status"]) == (
        "/v1/vehicles/{vehicleId}/status",
        "/v1/vehicles/V-9/status",
        404,
    )
    assert second["request_id"] == unknown.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{20}", second["request_id"])
    # The key's id when authentication names one, never the key itself.
    assert first["key_id"] is None or isinstance(first["key_id"], str)
    key = response.request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    assert not key or key not in log_lines.getvalue()


async def test_a_bug_answers_500_and_every_line_of_its_request_has_its_id(
    client: httpx.AsyncClient, conn: asyncpg.Connection, log_lines: io.StringIO
) -> None:
    # Make the write fail inside PostgreSQL: a bug as far as the engine can tell.
    await conn.execute(
        "ALTER TABLE vehicle_readings ADD CONSTRAINT no_hot_batteries CHECK (battery_temp < 90)"
    )
    hot = vehicle("V-1", minute_ago(2), 1.0, temp=95)
    response = await client.post("/v1/ingest", json=[hot], headers={"X-Request-ID": "bug-1"})
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert response.headers["x-request-id"] == "bug-1"
    ours = [line for line in parsed(log_lines) if line.get("request_id") == "bug-1"]
    assert [(line["logger"], line["level"]) for line in ours] == [
        ("energy_engine.request", "error"),  # the traceback
        ("energy_engine.request", "info"),  # the request's line
    ]
    assert "CheckViolation" in ours[0]["exception"]
    assert ours[1]["status"] == 500


async def _chatty(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that logs while answering, from two loggers."""
    logging.getLogger("energy_engine.test").warning("working on it")
    logging.getLogger("asyncpg.test").info("a library line")
    await answer(send, 200, b"{}")


@pytest.mark.parametrize("log_format", list(LogFormat))
async def test_every_line_written_during_a_request_carries_its_id(log_format: LogFormat) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    gathered = (logging._srcfile, logging.logThreads, logging.logMultiprocessing)
    logs.configure(Settings(_env_file=None, log_format=log_format), stream)
    try:
        app = RequestLog(_chatty, lean=[], log_requests=True)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://engine") as http:
            await http.get("/anything", headers={"X-Request-ID": "chat-1"})
            await http.get("/anything", headers={"X-Request-ID": "chat-2"})
        logging.getLogger("energy_engine.test").warning("between requests")
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)
        logging._srcfile, logging.logThreads, logging.logMultiprocessing = gathered
    # httpx, the client, logs each response outside the request.
    lines = [line for line in stream.getvalue().splitlines() if "httpx" not in line]
    assert len(lines) == 7
    if log_format is LogFormat.JSON:
        ids = [orjson.loads(line).get("request_id") for line in lines]
        assert orjson.loads(lines[2])["route"] == "unmatched"
    else:
        ids = [m[1] if (m := re.search(r" \[(chat-\d)\] ", line)) else None for line in lines]
        assert re.search(r" \[chat-1\] request method=GET route=unmatched .*status=200", lines[2])
    assert ids == ["chat-1"] * 3 + ["chat-2"] * 3 + [None]


async def test_request_log_can_be_turned_off(client_with: Any, log_lines: io.StringIO) -> None:
    async with client_with(request_log=False) as http:
        response = await http.get("/health/live")
    assert response.headers["x-request-id"]  # the id is still given
    assert not [line for line in parsed(log_lines) if line["logger"] == "energy_engine.request"]


async def test_imported_readings_are_counted(
    conn: asyncpg.Connection, settings: Settings, tmp_path: Path
) -> None:
    at = minute_ago(3)
    good = [meter("M-1", at, 1.0), meter("M-1", at, 1.0), vehicle("V-1", at, 2.0)]
    (tmp_path / "good.ndjson").write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in good))
    bad = [meter("M-2", at, 1.0), {"meterId": "M-3"}, {"vehicleId": "V-3", "soc": "x"}]
    (tmp_path / "bad.ndjson").write_bytes(b"".join(orjson.dumps(i) + b"\n" for i in bad))
    before = samples(generate_latest(REGISTRY).decode())
    await import_files(conn, [tmp_path / "good.ndjson"], settings, chunk_rows=100)
    with pytest.raises(ImportStopped):
        await import_files(conn, [tmp_path / "bad.ndjson"], settings, chunk_rows=100)
    after = samples(generate_latest(REGISTRY).decode())
    assert delta(before, after, "energy_readings_total") == {
        readings("meter", "accepted", "import"): 1,
        readings("meter", "duplicate", "import"): 1,  # the same reading twice in the file
        readings("vehicle", "accepted", "import"): 1,
        readings("unknown", "rejected", "import"): 2,
    }


async def test_metrics_answer_while_the_database_is_down(
    client_with: Any, private_postgres: PrivatePostgres
) -> None:
    bounds = {"connect_timeout": timedelta(seconds=2), "acquire_timeout": timedelta(seconds=2)}
    # Without keys: this server's database holds none, and the scrape is what is under test.
    async with client_with(database_url=private_postgres.url, auth=False, **bounds) as http:
        up = await scrape(http)
        assert value(up, "energy_rollup_lag_seconds") == 0
        private_postgres.stop()
        try:
            started = time.monotonic()
            down = await scrape(http)
            assert time.monotonic() - started < 5
            # The process's own metrics, without the gauges the database answers.
            assert ("energy_ingest_queue_readings", ()) in down
            assert ("energy_rollup_lag_seconds", ()) not in down
            assert ("energy_partitions_ahead_days", ()) not in down
        finally:
            private_postgres.start()
        deadline = time.monotonic() + 15
        while ("energy_rollup_lag_seconds", ()) not in (again := await scrape(http)):
            assert time.monotonic() < deadline, "the database gauges did not come back"
            await asyncio.sleep(0.1)
        assert value(again, "energy_rollup_lag_seconds") == 0


DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


async def test_the_sample_dashboard_uses_only_metrics_the_engine_exports(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/v1/ingest/meter", json=meter("M-1", minute_ago(1), 1.0))
    exported = {name for name, _ in await scrape(client)}
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\benergy_[a-z_]+", expr)}
    assert len(used) >= 10
    assert used <= exported, used - exported


def test_log_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENERGY_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("ENERGY_LOG_FORMAT", "plain")
    monkeypatch.setenv("ENERGY_REQUEST_LOG", "false")
    settings = Settings(_env_file=None)
    assert (settings.log_level, settings.log_format, settings.request_log) == (
        "debug",
        LogFormat.PLAIN,
        False,
    )
    for name, wrong in (("ENERGY_LOG_LEVEL", "loud"), ("ENERGY_LOG_FORMAT", "xml")):
        monkeypatch.setenv(name, wrong)
        with pytest.raises(ValidationError):
            Settings(_env_file=None)
        monkeypatch.delenv(name)
