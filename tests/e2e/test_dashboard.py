"""The dashboard in Debian's Chromium (Playwright) against a real `energy-engine serve`.

Six simulated hours of a fleet (`energy-engine simulate --backfill 0.25`) for the overview,
the table and the vehicle page; a fleet of 10,000 vehicles for the first paint. Chromium
comes from Debian (`apt-get install -y chromium`; `.ci/run` installs it): without it these
tests fail, since browser downloads are impossible here.
ENERGY_DASHBOARD_SCREENSHOTS=DIR saves the README's screenshots (overview.png, vehicle.png)
to DIR.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import orjson
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from energy_engine.auth import keys
from tests.conftest import AUTH, cloned_database
from tests.e2e.test_serve import serve
from tests.readings import meter, vehicle

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
KEY = AUTH["Authorization"].removeprefix("Bearer ")
SCREENSHOTS = os.environ.get("ENERGY_DASHBOARD_SCREENSHOTS")
FLEET = 30  # vehicles and meters simulated: two pages of 25
BIG_FLEET = 10_000


T = TypeVar("T")


def in_thread(function: Callable[[], T]) -> T:
    """`function()` on a thread of its own: while Playwright's synchronous API is open it keeps
    an event loop running on this one, where asyncio.run (the database set-up) refuses to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(function).result()


@contextmanager
def clone(postgres_url: str, template: str, prefix: str) -> Iterator[str]:
    """conftest.cloned_database, entered and left in_thread."""
    database = cloned_database(postgres_url, template, prefix)
    url = in_thread(database.__enter__)
    try:
        yield url
    finally:
        in_thread(lambda: database.__exit__(None, None, None))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, one for the module."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def engine(
    postgres_url: str, template_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """An engine holding six simulated hours of FLEET vehicles and meters; its base URL."""
    with (
        clone(postgres_url, template_database, "dashboard") as url,
        serve({"DATABASE_URL": url}, tmp_path_factory.mktemp("dashboard")) as (base, _),
    ):
        command = [sys.executable, "-m", "energy_engine.cli", "simulate", "--url", base]
        # A whole day for the README's screenshots; six hours are enough for the checks.
        backfill = "1" if SCREENSHOTS else "0.25"
        command += ["--vehicles", str(FLEET), "--meters", str(FLEET), "--backfill", backfill]
        command += ["--seed", "7", "--faulty-share", "0.2"]
        env = {**os.environ, "ENERGY_API_KEY": KEY}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        yield base


def api(base: str, path: str, **params: Any) -> Any:
    """The JSON answer of GET `path` with the tests' key."""
    response = httpx.get(f"{base}{path}", params=params, headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def open_page(browser: Browser, base: str, path: str = "/") -> Page:
    """A fresh tab on the dashboard with the key already in its session, data loaded."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(f"sessionStorage.setItem('energy-engine.key', {KEY!r})")
    page = context.new_page()
    page.goto(base + path)
    page.wait_for_selector("body[data-loaded=true]")
    return page


def row_ids(page: Page) -> list[str]:
    """The vehicle ids of the table's rows, top to bottom."""
    ids: list[str] = page.eval_on_selector_all(
        "#vehicle-rows tr[data-vehicle]", "rows => rows.map(r => r.dataset.vehicle)"
    )
    return ids


def expect_rows(page: Page, ids: list[str]) -> None:
    """Wait (5 s at most) until the table shows exactly `ids`, in order."""
    try:
        page.wait_for_function(
            "ids => JSON.stringify([...document.querySelectorAll("
            "'#vehicle-rows tr[data-vehicle]')].map(r => r.dataset.vehicle)) === "
            "JSON.stringify(ids)",
            arg=ids,
            timeout=5000,
        )
    except Exception:
        assert row_ids(page) == ids  # shows what the table holds instead
        raise


def kwh(value: float) -> str:
    return f"{value:,.1f} kWh"


def test_the_key_is_asked_once_and_the_overview_matches_the_api(
    engine: str, browser: Browser
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(engine + "/")
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#key", keys.generate((keys.Scope.READ,), name="nobody").text)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#error")).to_contain_text("unknown or revoked")
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#key", KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("body[data-loaded=true]")
    assert page.evaluate("sessionStorage.getItem('energy-engine.key')") == KEY

    status = api(engine, "/v1/fleet/status")
    report = api(engine, "/v1/analytics/fleet", limit=50)
    assert status["vehicles"] == FLEET and report["totals"]["vehicles"] == FLEET
    expect(page.locator("#vehicles-online")).to_have_text(str(status["vehiclesOnline"]))
    expect(page.locator("#vehicles-known")).to_have_text(f"of {FLEET}")
    expect(page.locator("#meters-online")).to_have_text(str(status["metersOnline"]))
    expect(page.locator("#charging")).to_have_text(str(status["vehiclesCharging"]))
    expect(page.locator("#avg-soc")).to_have_text(f"{status['avgSocOnline']:.1f} %")
    offline = (
        status["vehicles"] - status["vehiclesOnline"] + status["meters"] - status["metersOnline"]
    )
    expect(page.locator("#stale-count")).to_have_text(str(offline))
    totals = report["totals"]
    expect(page.locator("#fleet-ac")).to_have_text(kwh(totals["acConsumedKwh"]))
    expect(page.locator("#fleet-dc")).to_have_text(kwh(totals["dcDeliveredKwh"]))
    expect(page.locator("#fleet-loss")).to_have_text(kwh(totals["lossKwh"]))
    # One display step apart at most: JavaScript's toFixed rounds a tie up, Python's format to
    # even, and the page's last refresh and this request see windows a few seconds apart.
    shown = page.locator("#fleet-efficiency").text_content() or ""
    assert shown.endswith(" %")
    assert abs(float(shown.removesuffix(" %")) - totals["efficiency"] * 100) <= 0.1 + 1e-9
    for health, count in totals["health"].items():
        expect(page.locator(f"#health-filter [data-health={health}] .count")).to_have_text(
            str(count)
        )
    # The table: the API's first page in its order, each row with its live state.
    assert row_ids(page) == [v["vehicleId"] for v in report["vehicles"]]
    first = report["vehicles"][0]
    live = api(engine, f"/v1/vehicles/{first['vehicleId']}/status")
    cells = page.locator(f"tr[data-vehicle='{first['vehicleId']}'] td").all_inner_texts()
    assert cells[1] == f"{live['soc']:.1f} %"
    assert cells[3] == ("online" if live["online"] else "offline")
    assert cells[7] == first["health"].replace("insufficient_data", "too little data")
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "overview.png"))
    # At a phone's width the tiles fold and only the table scrolls sideways, not the page.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.evaluate("document.querySelector('.table-wrap').clientWidth") < 390
    page.context.close()


def test_sorting_filtering_and_paging_follow_the_api(engine: str, browser: Browser) -> None:
    page = open_page(browser, engine)
    page.select_option("#page-size", "25")

    def ids(**params: Any) -> list[str]:
        answer = api(engine, "/v1/analytics/fleet", limit=25, **params)
        return [v["vehicleId"] for v in answer["vehicles"]]

    expect_rows(page, ids())
    page.click("button.sort[data-sort=efficiency]")  # the sorted column again: descending
    expect_rows(page, ids(order="desc"))
    expect(page.locator("th:has(button[data-sort=efficiency])")).to_have_attribute(
        "aria-sort", "descending"
    )
    page.click("button.sort[data-sort=lossKwh]")
    expect_rows(page, ids(sort="lossKwh"))
    page.click("button.sort[data-sort=lossKwh]")
    by_loss = ids(sort="lossKwh", order="desc")
    expect_rows(page, by_loss)

    # Paging: the second page continues where the API's cursor does.
    first_page = api(engine, "/v1/analytics/fleet", limit=25, sort="lossKwh", order="desc")
    second = api(engine, "/v1/analytics/fleet", cursor=first_page["nextCursor"], limit=25)
    page.click("#next")
    expect_rows(page, [v["vehicleId"] for v in second["vehicles"]])
    expect(page.locator("#page-info")).to_have_text(f"page 2 of 2 · {FLEET} vehicles")
    expect(page.locator("#next")).to_be_disabled()
    page.click("#prev")
    expect_rows(page, by_loss)

    # Filtering by health: only that class's vehicles, as many as the API counts.
    counts = api(engine, "/v1/analytics/fleet")["totals"]["health"]
    assert counts["critical"] > 0, counts  # --faulty-share makes some
    page.click("#health-filter [data-health=critical]")
    critical = ids(sort="lossKwh", order="desc", health="critical")
    expect_rows(page, critical)
    assert len(critical) == counts["critical"]
    badges = page.locator("#vehicle-rows .badge").all_inner_texts()
    assert badges == ["critical"] * len(critical)
    page.click("#health-filter [data-health=anomaly]")
    expect_rows(page, ids(sort="lossKwh", order="desc", health=["critical", "anomaly"]))
    page.click("#health-filter [data-health=critical]")  # off again: anomalies alone
    expect_rows(page, ids(sort="lossKwh", order="desc", health="anomaly"))
    page.click("#health-filter [data-health=anomaly]")
    # A class no vehicle is in: the empty state, and no pages.
    empty = next(health for health, count in counts.items() if count == 0)
    page.click(f"#health-filter [data-health={empty}]")
    expect(page.locator("#vehicle-rows td.state")).to_have_text("No vehicle matches the filter.")
    expect(page.locator("#page-info")).to_have_text("page 1 of 1 · 0 vehicles")
    expect(page.locator("#next")).to_be_disabled()
    page.context.close()


def test_a_vehicle_page_draws_its_charts_and_assignments(engine: str, browser: Browser) -> None:
    page = open_page(browser, engine)
    vehicle_id = row_ids(page)[0]
    page.click(f"tr[data-vehicle='{vehicle_id}'] a")
    page.wait_for_url(f"**/#/vehicles/{vehicle_id}")
    expect(page.locator("#vehicle-title")).to_have_text(vehicle_id)
    for chart in ("energy", "efficiency", "soc", "temp"):
        expect(page.locator(f"#chart-{chart} svg")).to_be_visible()
    live = api(engine, f"/v1/vehicles/{vehicle_id}/status")
    expect(page.locator("#v-soc")).to_have_text(f"{live['soc']:.1f} %")
    expect(page.locator("#v-meter")).to_have_text(live["meterId"])
    series = api(engine, f"/v1/analytics/performance/{vehicle_id}/series")
    hours_with_ac = sum(p["acConsumedKwh"] is not None for p in series["points"])
    assert hours_with_ac >= 5
    # AC and DC lines through the hours they have; the 0.85 line across the efficiency chart.
    expect(page.locator("#chart-energy polyline.ac")).not_to_have_count(0)
    expect(page.locator("#chart-energy polyline.dc")).not_to_have_count(0)
    points = page.eval_on_selector_all(
        "#chart-energy polyline.ac",
        "lines => lines.flatMap(l => l.getAttribute('points').split(' '))",
    )
    assert len(points) >= hours_with_ac - 2  # a lone hour between gaps is a dot, not a line
    expect(page.locator("#chart-efficiency line.reference")).to_have_count(1)
    expect(page.locator("#chart-soc polygon.band")).not_to_have_count(0)
    expect(page.locator("#chart-temp polyline.temp")).not_to_have_count(0)
    assignments = api(engine, f"/v1/vehicles/{vehicle_id}/assignments")
    expect(page.locator("#assignment-rows tr")).to_have_count(len(assignments))
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "vehicle.png"), full_page=True)
    # 7 days: the same charts over the longer window (the simulated hours and empty ones).
    page.click("#windows button[data-window='168']")
    expect(page.locator("#windows button[data-window='168']")).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(page.locator("#chart-energy svg")).to_be_visible()
    # At a phone's width nothing spills sideways: the page is as wide as the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.context.close()


def test_an_unknown_vehicle_shows_the_error_and_the_fleet_link_recovers(
    engine: str, browser: Browser
) -> None:
    page = open_page(browser, engine)
    page.goto(engine + "/#/vehicles/nobody-9")
    expect(page.locator("#error")).to_have_text("Error: vehicle 'nobody-9' is unknown")
    expect(page.locator("#live")).to_have_text("not updating")
    expect(page.locator("#v-state")).to_have_text("…")  # the loading state stays, no numbers
    page.click("#vehicle a[href='#/']")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#vehicle-rows tr[data-vehicle]")).to_have_count(FLEET)
    page.context.close()


def test_a_new_reading_appears_without_a_reload(engine: str, browser: Browser) -> None:
    vehicle_id = "vehicle-00001"
    page = open_page(browser, engine, f"/?poll=1#/vehicles/{vehicle_id}")
    expect(page.locator("#chart-energy svg")).to_be_visible()
    page.evaluate("window.notReloaded = true")
    latest = api(engine, f"/v1/vehicles/{vehicle_id}/status")
    at = max(datetime.now(UTC), datetime.fromisoformat(latest["timestamp"]) + timedelta(seconds=1))
    reading = vehicle(vehicle_id, at, latest["kwhDeliveredDc"] + 0.5, soc=12.3, temp=41.5)
    sent = httpx.post(f"{engine}/v1/ingest/vehicle", json=reading, headers=AUTH)
    assert sent.json() == {"accepted": 1, "duplicates": 0}
    expect(page.locator("#v-soc")).to_have_text("12.3 %", timeout=5000)
    expect(page.locator("#v-temp")).to_have_text("41.5 °C")
    expect(page.locator("#v-state")).to_have_text("online · charging")
    assert page.evaluate("window.notReloaded") is True
    page.context.close()


def _import_big_fleet(database_url: str, directory: Path) -> None:
    """BIG_FLEET vehicles and meters, each assigned two days ago, with three readings each:
    two in the hour before the last whole one (sealed, so the refresher rolls it up at once and
    the 24 h window has it) and one now (online). The readings are loaded by `energy-engine
    import`, the bulk path, before the engine starts."""
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

    async def assign() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            # In SQL: `import` applies assignments one by one, as the API would (40 s for
            # 10,000). On the hour, before the window: an assignment starting mid-hour inside
            # it makes the fleet read that meter's raw rows, which a settled fleet does not.
            await conn.execute(
                "INSERT INTO assignments (vehicle_id, meter_id, valid_from) "
                "SELECT format('V-%s', lpad(i::text, 5, '0')), format('M-%s', i), $2 "
                "FROM generate_series(1, $1) AS i",
                BIG_FLEET,
                hour - timedelta(days=2),
            )
        finally:
            await conn.close()

    in_thread(lambda: asyncio.run(assign()))
    times = [hour - timedelta(minutes=110), hour - timedelta(minutes=80)]
    times.append(datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5))
    readings = directory / "fleet.ndjson"
    with readings.open("wb") as out:
        for i in range(1, BIG_FLEET + 1):
            # Efficiency varies from 0.70 to 0.99 across the fleet.
            ac = 10.0 + (i % 7)
            dc = ac * (0.70 + (i % 30) / 100)
            for step, at in enumerate(times):
                out.write(orjson.dumps(meter(f"M-{i}", at, 1000.0 + ac * step)) + b"\n")
                reading = vehicle(f"V-{i:05}", at, 500.0 + dc * step, soc=20 + i % 80)
                out.write(orjson.dumps(reading) + b"\n")
    command = [sys.executable, "-m", "energy_engine.cli", "import", "--quiet", str(readings)]
    env = {**os.environ, "DATABASE_URL": database_url}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _rolled_up(database_url: str) -> None:
    """Wait until the refresher has rolled the imported hours up: the fleet is answered from
    rollups, as a settled fleet is in production."""

    async def wait() -> None:
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        conn = await asyncpg.connect(database_url)
        try:
            for _ in range(600):
                # Compared in SQL: the watermark starts at -infinity, which asyncpg cannot
                # give as an aware datetime.
                caught_up = await conn.fetchval(
                    "SELECT coalesce(bool_and(at >= $1), false) "
                    "AND NOT EXISTS (SELECT FROM rollup_dirty) "
                    "FROM rollup_watermarks WHERE name = 'rolled'",
                    hour - timedelta(hours=1),
                )
                if caught_up:
                    return
                await asyncio.sleep(0.1)
            raise AssertionError("the rollups did not catch up in 60 s")
        finally:
            await conn.close()

    in_thread(lambda: asyncio.run(wait()))


@pytest.fixture
def big_engine(postgres_url: str, template_database: str, tmp_path: Path) -> Iterator[str]:
    """An engine holding BIG_FLEET vehicles and meters, rolled up; its base URL."""
    with clone(postgres_url, template_database, "dashboard_big") as url:
        started = time.monotonic()
        _import_big_fleet(url, tmp_path)
        env = {"DATABASE_URL": url, "ENERGY_ROLLUP_REFRESH_EVERY": "PT1S"}
        with serve(env, tmp_path) as (base, _):
            _rolled_up(url)
            print(f"{BIG_FLEET:,} vehicles loaded in {time.monotonic() - started:.1f} s")
            yield base


def test_first_paint_with_ten_thousand_vehicles_is_under_a_second(
    big_engine: str, browser: Browser, record_property: Any
) -> None:
    base = big_engine
    assert api(base, "/v1/fleet/status")["vehiclesOnline"] == BIG_FLEET
    open_page(browser, base).context.close()  # the engine's statements are prepared now
    page = open_page(browser, base)
    expect(page.locator("#vehicles-known")).to_have_text(f"of {BIG_FLEET:,}")
    expect(page.locator("#vehicle-rows tr[data-vehicle]")).to_have_count(50)
    expect(page.locator("#page-info")).to_have_text(f"page 1 of 200 · {BIG_FLEET:,} vehicles")
    first_paint, data = page.evaluate(
        "[performance.getEntriesByName('first-contentful-paint')[0].startTime,"
        " performance.getEntriesByName('dashboard-data')[0].startTime]"
    )
    record_property("first_contentful_paint_ms", round(first_paint))
    record_property("data_rendered_ms", round(data))
    calls = page.evaluate(
        "performance.getEntriesByType('resource').map("
        "e => `${new URL(e.name).pathname} ${e.startTime.toFixed(0)}+${e.duration.toFixed(0)}`)"
    )
    print(f"first contentful paint {first_paint:.0f} ms, data rendered {data:.0f} ms: {calls}")
    assert first_paint < 1000
    # The page with the fleet's numbers and the first 50 rows: the fleet ranking over 10,000
    # vehicles' 24 h of rollups dominates (0.8-1.7 s on a loaded 2-core machine, see
    # docs/dashboard.md); the bound leaves room for CI running other tests beside it.
    assert data < 5000
    page.context.close()
