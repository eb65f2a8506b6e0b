"""Reading GET /metrics the way Prometheus does, with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

# A sample: its name (with _total, _bucket, …) and its labels, sorted.
Key = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: str) -> dict[Key, float]:
    """Every sample of a scrape by name and labels; a name or label set twice fails."""
    found: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"{key} appears twice"
            found[key] = sample.value
    return found


def value(scraped: Mapping[Key, float], name: str, **labels: str) -> float:
    """One sample's value, 0 when absent (a counter nobody has touched yet)."""
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Mapping[Key, float], after: Mapping[Key, float], name: str) -> dict[Key, float]:
    """How the samples called `name` changed between two scrapes (unchanged ones left out)."""
    keys = {k for k in (*before, *after) if k[0] == name}
    changes = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in changes.items() if v}


def readings(stream: str, outcome: str, transport: str = "http") -> Key:
    """The key of one `energy_readings_total` sample."""
    labels = {"transport": transport, "stream": stream, "outcome": outcome}
    return ("energy_readings_total", tuple(sorted(labels.items())))
