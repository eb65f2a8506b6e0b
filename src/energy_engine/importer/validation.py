"""Rows validated as the API validates them, packed into a chunk's COPY data as they pass.

Validation takes two paths. Nearly every row of a real file takes the fast one: orjson, exact
type checks, the models' own bounds and id pattern (read from `ingest/models.py` below), and
caches of the few distinct device ids and timestamps a file holds. A row the fast path is not
sure of (a missing or unknown field, a string for a number, a timestamp written another way,
a value out of range, malformed JSON) goes to the referee: the API's Pydantic models, which
accept it or say why not in the API's own words, so every error message is the API's. The
fast path exists because the reader shares two cores with PostgreSQL and the models' own
validation costs more per row than the fast path's parsing, checks and packing together.
tests/unit/test_import_files.py checks that the fast path accepts nothing the models reject
and packs the models' values.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from energy_engine.bounds import duration_text
from energy_engine.errors import reason_of
from energy_engine.importer.chunks import Chunk, Staged
from energy_engine.importer.layout import ONE_MICROSECOND, PG_EPOCH, Layout, id_field, pg_micros
from energy_engine.ingest.models import AnyReading, MeterReading, VehicleReading
from energy_engine.settings import Settings

# The one timestamp spelling the fast path parses itself (with `datetime.fromisoformat`, which
# reads it exactly as Pydantic does); every other spelling is the referee's to judge.
_FAST_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)

Referee = TypeAdapter[MeterReading | VehicleReading]
ANY_READING: Referee = TypeAdapter(AnyReading)
METER_READING: Referee = TypeAdapter(MeterReading)
VEHICLE_READING: Referee = TypeAdapter(VehicleReading)
_STREAM_TAGS = ("meter", "vehicle")


def _bounds(model: type[BaseModel], name: str) -> tuple[float, float]:
    """The closed range a float field of `model` allows, from its `Field(ge=, le=)`."""
    low, high = -math.inf, math.inf
    for constraint in model.model_fields[name].metadata:
        if (ge := getattr(constraint, "ge", None)) is not None:
            low = float(ge)
        elif (le := getattr(constraint, "le", None)) is not None:
            high = float(le)
        else:  # a new kind of rule (gt, multiple_of, …) must be taught to the fast path
            raise TypeError(f"{model.__name__}.{name}: the importer does not know {constraint!r}")
    # Finite bounds, so that a range check also rejects infinities (the models forbid them).
    return max(low, -sys.float_info.max), min(high, sys.float_info.max)


def _id_pattern(model: type[BaseModel], name: str) -> re.Pattern[str]:
    (constraint,) = model.model_fields[name].metadata
    pattern: str = constraint.pattern
    return re.compile(pattern)


_DEVICE_ID = _id_pattern(MeterReading, "meter_id")
assert _DEVICE_ID == _id_pattern(VehicleReading, "vehicle_id"), "one id rule for both streams"
_KWH_AC = _bounds(MeterReading, "kwh_consumed_ac")
_VOLTAGE = _bounds(MeterReading, "voltage")
_SOC = _bounds(VehicleReading, "soc")
_KWH_DC = _bounds(VehicleReading, "kwh_delivered_dc")
_BATTERY_TEMP = _bounds(VehicleReading, "battery_temp")


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one row (or a CSV header) cannot be imported."""

    path: Path
    line: int
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}, line {self.line}"
        return f"{where}, {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class InvalidRows(Exception):
    """Rows that failed validation; nothing of the chunk that holds them gets stored."""

    def __init__(self, problems: list[Problem], first_line: int) -> None:
        self.problems = problems
        self.path = problems[0].path
        self.first_line = first_line
        super().__init__(f"{len(problems)} invalid rows in {self.path}")


class Encoder:
    """Validates rows and packs them into one chunk's COPY data at a time."""

    def __init__(self, settings: Settings, layouts: tuple[Layout, Layout]) -> None:
        self.settings = settings
        self.meter_row, self.vehicle_row = layouts[0].row.pack, layouts[1].row.pack
        self.meter_sizes, self.vehicle_sizes = layouts[0].sizes, layouts[1].sizes
        self.meter_tiny, self.vehicle_tiny = layouts[0].tiny, layouts[1].tiny
        self.ids: dict[str, bytes] = {}  # device id -> its packed COPY field
        self.start_chunk()

    def start_chunk(self) -> None:
        """Empty payloads; time limits from the clock now, as the API takes them per request."""
        now = datetime.now(UTC)
        self.oldest = pg_micros(now - self.settings.max_reading_age)
        self.latest = pg_micros(now + self.settings.max_future_skew)
        # Per chunk, so that the days this chunk spans can be read off the cache's misses.
        self.stamps: dict[str, int] = {}
        self.low, self.high = sys.maxsize, -sys.maxsize
        self.meters = Staged()
        self.vehicles = Staged()
        self.problems: list[Problem] = []
        if len(self.ids) > 1_000_000:  # a file of endless distinct ids should not grow memory
            self.ids.clear()

    def meter(self, item: dict[str, Any], line: int) -> bool:
        """Pack a meter reading the fast path is sure of; False leaves it to the referee."""
        kwh = item.get("kwhConsumedAc")
        voltage = item.get("voltage")
        tiny_kwh, tiny_voltage = self.meter_tiny
        if (
            len(item) != 4
            or (type(kwh) is not float and type(kwh) is not int)  # bool is no number
            or (type(voltage) is not float and type(voltage) is not int)
            or not (_KWH_AC[0] <= kwh <= _KWH_AC[1] and _VOLTAGE[0] <= voltage <= _VOLTAGE[1])
            or not (kwh == 0 or kwh > tiny_kwh or kwh < -tiny_kwh)
            or not (voltage == 0 or voltage > tiny_voltage or voltage < -tiny_voltage)
        ):
            return False
        device = self.ids.get(item.get("meterId"))  # type: ignore[arg-type]
        if device is None and (device := self._device(item.get("meterId"))) is None:
            return False
        micros = self.stamps.get(item.get("timestamp"))  # type: ignore[arg-type]
        if micros is None and (micros := self._timestamp(item.get("timestamp"))) is None:
            return False
        size_kwh, size_voltage = self.meter_sizes
        row = self.meter_row(4, 8, micros, size_kwh, kwh, size_voltage, voltage)
        self.meters.add(device, micros, row + device)
        return True

    def vehicle(self, item: dict[str, Any], line: int) -> bool:
        """Pack a vehicle reading the fast path is sure of; False leaves it to the referee."""
        soc = item.get("soc")
        kwh = item.get("kwhDeliveredDc")
        temp = item.get("batteryTemp")
        tiny_soc, tiny_kwh, tiny_temp = self.vehicle_tiny
        if (
            len(item) != 5
            or (type(soc) is not float and type(soc) is not int)
            or (type(kwh) is not float and type(kwh) is not int)
            or (type(temp) is not float and type(temp) is not int)
            or not (
                _SOC[0] <= soc <= _SOC[1]
                and _KWH_DC[0] <= kwh <= _KWH_DC[1]
                and _BATTERY_TEMP[0] <= temp <= _BATTERY_TEMP[1]
            )
            or not (soc == 0 or soc > tiny_soc or soc < -tiny_soc)
            or not (kwh == 0 or kwh > tiny_kwh or kwh < -tiny_kwh)
            or not (temp == 0 or temp > tiny_temp or temp < -tiny_temp)
        ):
            return False
        device = self.ids.get(item.get("vehicleId"))  # type: ignore[arg-type]
        if device is None and (device := self._device(item.get("vehicleId"))) is None:
            return False
        micros = self.stamps.get(item.get("timestamp"))  # type: ignore[arg-type]
        if micros is None and (micros := self._timestamp(item.get("timestamp"))) is None:
            return False
        size_soc, size_kwh, size_temp = self.vehicle_sizes
        row = self.vehicle_row(5, 8, micros, size_soc, soc, size_kwh, kwh, size_temp, temp)
        self.vehicles.add(device, micros, row + device)
        return True

    def _device(self, value: object) -> bytes | None:
        if type(value) is not str or not _DEVICE_ID.fullmatch(value):
            return None
        field = self.ids[value] = id_field(value)
        return field

    def _timestamp(self, value: object) -> int | None:
        if type(value) is not str or not _FAST_TIMESTAMP.fullmatch(value):
            return None
        try:
            micros = pg_micros(datetime.fromisoformat(value))
        except ValueError:  # 2026-02-30 and the like: the referee words the error
            return None
        if not self.oldest <= micros <= self.latest:
            return None
        self._note_time(micros)
        self.stamps[value] = micros
        return micros

    def _note_time(self, micros: int) -> None:
        if micros < self.low:
            self.low = micros
        if micros > self.high:
            self.high = micros

    def referee(
        self, path: Path, line: int, text: bytes | str, referee: Referee = ANY_READING
    ) -> bool:
        """Judge a row with the API's models: pack it, or record why not; False if not packed."""
        try:
            reading = referee.validate_json(text)
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                loc = list(error["loc"])
                if loc and loc[0] in _STREAM_TAGS:
                    loc.pop(0)
                field = ".".join(str(part) for part in loc) or None
                self.problems.append(Problem(path, line, field, reason_of(error)))
            return False
        micros = pg_micros(reading.timestamp)
        # The same limits, words and order as the API's `ingest/parse.py`: a timestamp out of
        # range first, then every value too small to store (all of them, as the API reports).
        problems: list[Problem] = []
        if micros > self.latest:
            reason = f"more than {duration_text(self.settings.max_future_skew)} in the future"
            problems.append(Problem(path, line, "timestamp", reason))
        elif micros < self.oldest:
            reason = f"older than the maximum age of {duration_text(self.settings.max_reading_age)}"
            problems.append(Problem(path, line, "timestamp", reason))
        values: tuple[float, ...]
        names: tuple[str, ...]
        if isinstance(reading, MeterReading):
            values = (reading.kwh_consumed_ac, reading.voltage)
            names, tiny, sizes = ("kwhConsumedAc", "voltage"), self.meter_tiny, self.meter_sizes
        else:
            values = (reading.soc, reading.kwh_delivered_dc, reading.battery_temp)
            names = ("soc", "kwhDeliveredDc", "batteryTemp")
            tiny, sizes = self.vehicle_tiny, self.vehicle_sizes
        problems += (
            Problem(path, line, name, "too close to 0 for the history column (real); write 0")
            for name, value, limit in zip(names, values, tiny, strict=True)
            if value != 0 and -limit <= value <= limit
        )
        if problems:
            self.problems += problems
            return False
        self._note_time(micros)
        fields = [x for pair in zip(sizes, values, strict=True) for x in pair]
        if isinstance(reading, MeterReading):
            device = self.ids.get(reading.meter_id) or id_field(reading.meter_id)
            self.meters.add(device, micros, self.meter_row(4, 8, micros, *fields) + device)
        else:
            device = self.ids.get(reading.vehicle_id) or id_field(reading.vehicle_id)
            self.vehicles.add(device, micros, self.vehicle_row(5, 8, micros, *fields) + device)
        return True

    def take(self, path: Path, first_line: int, last_line: int, last_of_file: bool) -> Chunk:
        """The chunk read so far, or InvalidRows; starts the next chunk."""
        if self.problems:
            raise InvalidRows(self.problems, first_line)
        days: tuple[date | None, date | None] = (None, None)
        if self.meters.read or self.vehicles.read:
            days = (
                (PG_EPOCH + self.low * ONE_MICROSECOND).date(),
                (PG_EPOCH + self.high * ONE_MICROSECOND).date(),
            )
        chunk = Chunk(
            path=path,
            first_line=first_line,
            last_line=last_line,
            meters=self.meters.batch(),
            vehicles=self.vehicles.batch(),
            first_day=days[0],
            last_day=days[1],
            last_of_file=last_of_file,
        )
        self.start_chunk()
        return chunk
