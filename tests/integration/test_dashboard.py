"""GET / and /dashboard/static/: the page and its files load without a key, the API not."""

from __future__ import annotations

import re

import httpx
from fastapi import FastAPI

from energy_engine import __version__
from tests.conftest import app_client


async def test_the_page_and_its_files_load_without_a_key_and_the_api_does_not(
    app: FastAPI,
) -> None:
    async with app_client(app, headers=None) as anonymous:
        page = await anonymous.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assets = re.findall(r'(?:src|href)="(/dashboard/static/[^"?]+)\?v=([^"]+)"', page.text)
        assert sorted(path for path, _ in assets) == [
            "/dashboard/static/dashboard.css",
            "/dashboard/static/dashboard.js",
        ]
        assert {version for _, version in assets} == {__version__}
        for path, kind in zip(
            sorted(path for path, _ in assets), ("text/css", "text/javascript"), strict=True
        ):
            asset = await anonymous.get(path)
            assert asset.status_code == 200
            assert asset.headers["content-type"].startswith(kind)
        # Nothing but the page and its files is opened: the data stays behind the key.
        for path in ("/v1/fleet/status", "/v1/analytics/fleet", "/dashboard/other"):
            refused = await anonymous.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"] == "unauthorized"


async def test_the_page_is_not_part_of_the_api_document(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths
    assert "/v1/vehicles/status" in paths
    assert not [path for path in paths if path.startswith("/dashboard")]


async def test_a_static_file_that_does_not_exist_is_a_404(client: httpx.AsyncClient) -> None:
    missing = await client.get("/dashboard/static/nothing.js")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not_found"
