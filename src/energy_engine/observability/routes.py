"""GET /metrics: every metric in Prometheus text format."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from energy_engine.deps import PoolDep
from energy_engine.observability import metrics
from energy_engine.queue import stream

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

# The text format by the name every Prometheus release knows. Recent prometheus_client calls
# its CONTENT_TYPE_LATEST version 1.0.0; for names without dots or UTF-8, as all of these are,
# `generate_latest` writes the same text either way.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {TEXT_FORMAT: {}}, "description": "Prometheus text"}},
)
async def prometheus_metrics(request: Request, pool: PoolDep) -> Response:
    """Counters, histograms and gauges of every serving process, for Prometheus to scrape
    (metric names and meanings: README, docs/configuration.md)."""
    state = request.app.state
    more = []
    if state.jetstream is not None:
        try:
            lag = await stream.lag(state.jetstream, state.settings)
        except Exception as exc:  # the process's own metrics matter most then
            log.warning("queue lag unavailable: %s: %s", type(exc).__name__, exc)
        else:
            more.append(metrics.queue_lag_family(lag.pending, lag.unacknowledged))
    text = await metrics.render(pool, state.pools, state.writer.queued, more)
    return Response(text, media_type=TEXT_FORMAT)
