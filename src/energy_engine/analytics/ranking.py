"""A fleet page: every vehicle's sort value, health counts and totals in one pass."""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from energy_engine.analytics.figures import (
    health,
    rounded_dc,
    rounded_efficiency,
    rounded_loss,
)
from energy_engine.analytics.fleet import sides
from energy_engine.analytics.models import FleetSort, FleetTotals, Health, Order
from energy_engine.analytics.query import FleetQuery
from energy_engine.settings import Settings

# The sort value of each order: the figures' own rounded numbers, so the order is the shown one.
SORTED_BY = {
    FleetSort.EFFICIENCY: rounded_efficiency,
    FleetSort.LOSS_KWH: rounded_loss,
    FleetSort.DC_DELIVERED_KWH: rounded_dc,
}

SortKey = tuple[bool, float, str]


def sort_key(value: float | None, vehicle_id: str, ascending: bool) -> SortKey:
    """Vehicles without a value last in either order; ties by vehicle id."""
    if value is None:
        return (True, 0.0, vehicle_id)
    return (False, value if ascending else -value, vehicle_id)


@dataclass(slots=True)
class Ranking:
    """One pass over the fleet: the page's keys, how many match, and the totals."""

    keys: list[SortKey]
    matching: int
    totals: FleetTotals


def rank(
    rows: Sequence[asyncpg.Record],
    query: FleetQuery,
    after: SortKey | None,
    limit: int,
    settings: Settings,
) -> Ranking:
    """The first `limit` + 1 keys after `after` (one more tells whether a next page follows),
    the number of vehicles matching the filter, and the fleet's totals."""
    # A loop over plain floats: only a page of the fleet is shown, so only the page's
    # vehicles get their full figures.
    value_of = SORTED_BY[query.sort]
    ascending = query.order is Order.ASC
    wanted = set(query.health)
    counts = dict.fromkeys(Health, 0)
    ac_total = dc_with_ac = dc_total = 0.0
    matching = 0
    keys = []
    for row in rows:  # fleet.fleet_rows: the vehicle id first
        vehicle_id = row[0]
        ac, dc = sides(row)
        judged = health(ac, dc, settings)
        counts[judged] += 1
        dc_total += dc or 0.0
        if ac is not None:
            ac_total += ac
            dc_with_ac += dc or 0.0
        if wanted and judged not in wanted:
            continue
        matching += 1
        key = sort_key(value_of(ac, dc), vehicle_id, ascending)
        if after is None or key > after:
            keys.append(key)
    totals = FleetTotals(
        vehicles=len(rows),
        ac_consumed_kwh=round(ac_total, 6),
        dc_delivered_kwh=round(dc_total, 6),
        loss_kwh=round(ac_total - dc_with_ac, 6),
        efficiency=round(dc_with_ac / ac_total, 4) if ac_total else None,
        health=counts,
    )
    # A partial selection, not a sort of the fleet.
    return Ranking(heapq.nsmallest(limit + 1, keys), matching, totals)
