"""/docs is served whole by the engine itself: Swagger UI's files come from an installed
package, never from a CDN, so it works without internet."""

from __future__ import annotations

import re

import httpx


async def test_docs_and_every_asset_it_references_come_from_the_engine(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    urls += re.findall(r"""url:\s*["']([^"']+)["']""", page.text)  # the OpenAPI document
    assert len(urls) >= 4  # script, stylesheet, icon, /openapi.json
    assert "//" not in "".join(urls)  # no other host: every URL is a path on this one
    for url in urls:
        response = await client.get(url)
        assert response.status_code == 200, url
        assert response.content, url
    assert "/openapi.json" in urls
