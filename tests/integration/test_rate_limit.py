"""Per-key rate limits: past its burst a key is answered 429 with Retry-After and the JSON
error body, and is served again once it has waited that long; other keys are not affected."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from energy_engine.auth import store
from energy_engine.auth.keys import Scope, generate
from tests.conftest import ClientWith
from tests.readings import meter, minute_ago


async def test_past_the_burst_429_with_retry_after_then_served_again(
    client_with: ClientWith, conn: asyncpg.Connection
) -> None:
    key = generate((Scope.READ,))
    await store.insert_key(conn, key)
    headers = {"Authorization": f"Bearer {key.text}"}
    async with client_with(rate_limit_read="2/3") as http:
        served = [await http.get("/v1/fleet/status", headers=headers) for _ in range(3)]
        assert [r.status_code for r in served] == [200, 200, 200]
        limited = await http.get("/v1/fleet/status", headers=headers)
        assert limited.status_code == 429
        assert limited.headers["content-type"] == "application/json"
        assert limited.json()["error"] == "rate_limited"
        assert set(limited.json()) == {"error", "message", "errors"}
        wait = int(limited.headers["retry-after"])
        assert wait == 1  # one token at 2 a second
        # The admin key (no limit by default) is not held back by another key's bucket.
        assert (await http.get("/v1/fleet/status")).status_code == 200
        await asyncio.sleep(wait)
        assert (await http.get("/v1/fleet/status", headers=headers)).status_code == 200


async def test_a_device_key_has_the_device_limit(
    client_with: ClientWith, conn: asyncpg.Connection
) -> None:
    key = generate((Scope.INGEST,), device_id="M-1")
    await store.insert_key(conn, key)
    headers = {"Authorization": f"Bearer {key.text}"}
    async with client_with(rate_limit_device="1/2", rate_limit_ingest="off") as http:
        answers = [
            await http.post(
                "/v1/ingest/meter", json=meter("M-1", minute_ago(m), m), headers=headers
            )
            for m in range(1, 4)
        ]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("setting", "value"), [("rate_limit_read", "5"), ("rate_limit_ingest", "x/2")]
)
async def test_a_malformed_limit_is_refused(
    client_with: ClientWith, setting: str, value: str
) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="RATE/BURST"):
        async with client_with(**{setting: value}):
            pass
