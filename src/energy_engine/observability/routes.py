"""GET /metrics: every metric in Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from energy_engine.deps import PoolDep
from energy_engine.observability import metrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def prometheus_metrics(request: Request, pool: PoolDep) -> Response:
    """Counters, histograms and gauges of every serving process, for Prometheus to scrape
    (metric names and meanings: README, docs/configuration.md)."""
    state = request.app.state
    text = await metrics.render(pool, state.pools, state.writer.queued)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
