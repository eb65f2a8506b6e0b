"""The storable checks of `ingest.parse`: the quick whole-batch test lets nothing through that
the per-item checks report (a timestamp out of range, a sensor value too small for `real`),
wherever it is in a batch of either stream or both."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.ingest.parse import ReadingParser
from energy_engine.settings import Settings

SETTINGS = Settings(_env_file=None)
PARSER = ReadingParser.for_type(MeterReading | VehicleReading, SETTINGS)

# Minutes from now: inside the accepted range, and just outside either end of it.
ages = st.one_of(
    st.integers(min_value=-4, max_value=60 * 24 * 29),
    st.sampled_from([-6, -60, 60 * 24 * 31, 60 * 24 * 365]),
)
sensor = st.one_of(
    st.floats(min_value=-50, max_value=1000),
    st.sampled_from([0.0, -0.0, 1e-46, -(2.0**-149), 2.0**-150, 5e-324, 1e-44]),
)


# (meter?, age in minutes, sensor values): turned into a reading at the moment the test checks,
# so that its instant and the parser's are microseconds apart whatever the run's length.
Drawn = tuple[bool, int, float, float]
items = st.tuples(st.booleans(), ages, sensor, sensor)


def reading(drawn: Drawn, now: datetime) -> MeterReading | VehicleReading:
    is_meter, age, first, second = drawn
    at = now - timedelta(minutes=age)
    if is_meter:
        return MeterReading.model_construct(
            meter_id="M-1", timestamp=at, kwh_consumed_ac=1.0, voltage=first
        )
    return VehicleReading.model_construct(
        vehicle_id="V-1", timestamp=at, soc=first, kwh_delivered_dc=1.0, battery_temp=second
    )


def expected(batch: list[MeterReading | VehicleReading], now: datetime) -> list[tuple[int, str]]:
    """(index, field) of every problem, checked item by item."""
    latest, oldest = now + SETTINGS.max_future_skew, now - SETTINGS.max_reading_age
    found = []
    for index, item in enumerate(batch):
        if not oldest <= item.timestamp <= latest:
            found.append((index, "timestamp"))
    for index, item in enumerate(batch):
        values = (
            {"voltage": item.voltage}
            if isinstance(item, MeterReading)
            else {"soc": item.soc, "batteryTemp": item.battery_temp}
        )
        found += [(index, f) for f, v in values.items() if 0 < abs(v) <= 2.0**-150]
    return found


@settings(max_examples=300, deadline=None)
@given(st.lists(items, min_size=1, max_size=30))
def test_every_unstorable_value_is_reported_at_its_index(drawn: list[Drawn]) -> None:
    now = datetime.now(UTC)
    batch = [reading(item, now) for item in drawn]
    problems = PARSER.storable_problems(batch, is_batch=True)
    assert [(p.index, p.field) for p in problems] == expected(batch, now)
