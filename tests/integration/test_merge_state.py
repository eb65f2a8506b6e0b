"""The hot-row merge and the dirty-hour mark (migrations/0001_baseline.sql), called directly.

The expectation is computed from the readings themselves: the hot row holds the newest reading
ever merged and, as the previous one, the newest reading older than that; a time seen twice
keeps its first values.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

T0 = datetime(2026, 1, 1, tzinfo=UTC)


Prev = tuple[int, float] | None  # a reading's previous one: (minute, kWh)


@dataclass(frozen=True)
class Stream:
    """How to call one stream's merge and read its hot rows back."""

    kind: str
    merge: str
    read: str

    def row(
        self, device: str, at: int, value: float, received: int, prev: Prev
    ) -> tuple[object, ...]:
        """A hot-store row: `device`'s reading at minute `at` (and its previous one, if any)."""
        prev_at = None if prev is None else T0 + timedelta(minutes=prev[0])
        prev_kwh = None if prev is None else prev[1]
        stamp, arrived = T0 + timedelta(minutes=at), T0 + timedelta(seconds=received)
        if self.kind == "meter":
            return (device, stamp, value, value + 200, arrived, prev_at, prev_kwh)
        return (device, stamp, value / 10, value, value / 100, arrived, prev_at, prev_kwh)


METERS = Stream(
    "meter",
    "SELECT merge_meter_state($1::meter_state[])",
    "SELECT meter_id, read_at, kwh_consumed_ac, received_at, prev_read_at, prev_kwh_consumed_ac"
    " FROM meter_state ORDER BY meter_id",
)
VEHICLES = Stream(
    "vehicle",
    "SELECT merge_vehicle_state($1::vehicle_state[])",
    "SELECT vehicle_id, read_at, kwh_delivered_dc, received_at, prev_read_at,"
    " prev_kwh_delivered_dc FROM vehicle_state ORDER BY vehicle_id",
)

# One merge call: per device, (minute, kWh, previous (minute, kWh) or None).
Call = dict[str, tuple[int, float, Prev]]


def expected(calls: list[Call]) -> list[tuple[object, ...]]:
    """The hot rows, by brute force: per device the first values seen at each time."""
    seen: dict[str, dict[int, tuple[float, int]]] = {}
    for received, call in enumerate(calls):
        for device, (at, kwh, prev) in call.items():
            times = seen.setdefault(device, {})
            if prev is not None:
                times.setdefault(prev[0], (prev[1], -1))
            times.setdefault(at, (kwh, received))
    rows: list[tuple[object, ...]] = []
    for device in sorted(seen):
        times = seen[device]
        latest = max(times)
        kwh, received = times[latest]
        older = [t for t in times if t < latest]
        before = max(older) if older else None
        rows.append(
            (
                device,
                T0 + timedelta(minutes=latest),
                kwh,
                T0 + timedelta(seconds=received),
                None if before is None else T0 + timedelta(minutes=before),
                None if before is None else times[before][0],
            )
        )
    return rows


async def merge(
    conn: asyncpg.Connection, stream: Stream, calls: list[Call]
) -> list[tuple[object, ...]]:
    """Merge `calls` one after the other (rows in shuffled order); the hot rows after them."""
    shuffle = random.Random(len(calls)).shuffle
    for received, call in enumerate(calls):
        rows = [stream.row(d, at, kwh, received, prev) for d, (at, kwh, prev) in call.items()]
        shuffle(rows)  # the function writes in device order itself
        await conn.execute(stream.merge, rows)
    return [tuple(row) for row in await conn.fetch(stream.read)]


CASES: dict[str, list[Call]] = {
    "first reading": [{"d": (10, 1.0, None)}],
    "first reading with the one before it": [{"d": (10, 2.0, (5, 1.0))}],
    "newer reading": [{"d": (10, 1.0, None)}, {"d": (20, 2.0, None)}],
    "newer pair passes the stored one": [{"d": (10, 1.0, None)}, {"d": (30, 3.0, (20, 2.0))}],
    "newer pair around the stored one": [{"d": (10, 1.0, None)}, {"d": (30, 3.0, (5, 0.5))}],
    "late reading becomes the previous one": [{"d": (10, 1.0, None)}, {"d": (5, 0.5, None)}],
    "late reading after the previous one": [
        {"d": (10, 1.0, (2, 0.2))},
        {"d": (5, 0.5, (1, 0.1))},
    ],
    "late reading before the previous one": [{"d": (10, 1.0, (5, 0.5))}, {"d": (2, 0.2, None)}],
    "same time as the latest, no previous": [{"d": (10, 1.0, None)}, {"d": (10, 9.0, None)}],
    "same time as the latest": [{"d": (10, 1.0, (5, 0.5))}, {"d": (10, 9.0, (7, 0.7))}],
    "same time as the previous": [{"d": (10, 1.0, (5, 0.5))}, {"d": (5, 9.0, None)}],
    "new pair whose previous is the stored latest": [
        {"d": (10, 1.0, None)},
        {"d": (20, 2.0, (10, 9.0))},
    ],
    "several devices at once": [
        {"b": (10, 1.0, None), "a": (20, 2.0, (5, 0.5))},
        {"a": (7, 0.7, None), "c": (1, 0.1, None), "b": (30, 3.0, None)},
    ],
}


@pytest.mark.parametrize("stream", [METERS, VEHICLES], ids=["meter", "vehicle"])
async def test_merge_keeps_the_newest_reading_and_the_one_before(
    conn: asyncpg.Connection, stream: Stream
) -> None:
    found = {}
    for name, calls in CASES.items():  # each case from empty hot rows
        transaction = conn.transaction()
        await transaction.start()
        found[name] = await merge(conn, stream, calls)
        await transaction.rollback()
    assert found == {name: expected(calls) for name, calls in CASES.items()}


def _random_calls(rng: random.Random, devices: int, rounds: int) -> list[Call]:
    calls = []
    for _ in range(rounds):
        call: Call = {}
        for device in rng.sample(range(devices), rng.randint(1, devices)):
            at = rng.randint(0, 20)
            prev = None
            if at and rng.random() < 0.5:
                prev = (rng.randint(0, at - 1), float(rng.randint(0, 99)))
            call[f"d{device}"] = (at, float(rng.randint(0, 99)), prev)
        calls.append(call)
    return calls


@pytest.mark.parametrize("stream", [METERS, VEHICLES], ids=["meter", "vehicle"])
async def test_merge_of_random_arrivals_matches_brute_force(
    conn: asyncpg.Connection, stream: Stream
) -> None:
    calls = _random_calls(random.Random(13), devices=40, rounds=30)
    assert await merge(conn, stream, calls) == expected(calls)


async def test_an_empty_batch_changes_nothing(conn: asyncpg.Connection) -> None:
    await conn.execute(METERS.merge, None)
    await conn.execute("SELECT mark_dirty_hours('meter', NULL, NULL)")
    assert await conn.fetchval("SELECT count(*) FROM meter_state") == 0
    assert await conn.fetchval("SELECT count(*) FROM rollup_dirty") == 0


async def test_marks_each_hour_once_and_renews_its_generation(conn: asyncpg.Connection) -> None:
    mark = "SELECT mark_dirty_hours($1, $2::text[], $3::timestamptz[])"
    at = [T0 + timedelta(minutes=m) for m in (5, 50, 70, 5)]
    await conn.execute(mark, "meter", ["m1", "m1", "m1", "m2"], at)
    first = {
        (r["device_id"], r["hour"]): r["generation"]
        for r in await conn.fetch("SELECT * FROM rollup_dirty WHERE stream = 'meter'")
    }
    hour = timedelta(hours=1)
    assert sorted(first) == [("m1", T0), ("m1", T0 + hour), ("m2", T0)]
    await conn.execute(mark, "meter", ["m1"], [T0 + timedelta(minutes=1)])
    renewed = await conn.fetchval(
        "SELECT generation FROM rollup_dirty WHERE device_id = 'm1' AND hour = $1", T0
    )
    assert renewed > max(first.values())
    assert await conn.fetchval("SELECT count(*) FROM rollup_dirty") == 3
