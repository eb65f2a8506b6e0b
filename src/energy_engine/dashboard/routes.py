"""GET / (the dashboard's page) and its static files under /dashboard/static/.

The page and its files hold no data and need no key: the browser asks the operator for a
read key once, keeps it in sessionStorage and sends it with each API call it makes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from energy_engine import __version__

PAGE_PATH = "/"
STATIC_PATH = "/dashboard/static"
_HERE = resources.files("energy_engine.dashboard")


def page() -> str:
    """The dashboard's HTML, its asset URLs tagged with the version (caches renew on upgrade)."""
    text = (_HERE / "templates" / "index.html").read_text(encoding="utf-8")
    return text.replace("{{ static }}", STATIC_PATH).replace("{{ version }}", __version__)


def install(app: FastAPI) -> None:
    """Serve the page at `/` and its files; both are open (see the module's docstring)."""
    html = page()  # read once: the file does not change while the engine runs
    app.mount(
        STATIC_PATH, StaticFiles(directory=Path(str(_HERE / "static"))), name="dashboard-static"
    )

    @app.get(PAGE_PATH, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})
