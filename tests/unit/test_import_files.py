"""The importer's file reading: formats, the fast validator against the API's models, chunks."""

from __future__ import annotations

import gzip
import json
import math
import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from energy_engine.errors import ApiError
from energy_engine.importer import files, layout, validation
from energy_engine.importer.chunks import Chunk
from energy_engine.importer.files import UnsupportedFile, file_format, read_chunks
from energy_engine.importer.layout import METER_COLUMNS, VEHICLE_COLUMNS, Layout
from energy_engine.importer.validation import InvalidRows
from energy_engine.ingest.models import AnyReading
from energy_engine.ingest.parse import ReadingParser
from energy_engine.settings import Settings
from tests.readings import iso, meter, minute_ago, vehicle

SETTINGS = Settings(_env_file=None)
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


# The history as migration 0002 left it: sensor values in `real`, energy in double precision.
LAYOUTS = (
    Layout.of(METER_COLUMNS, {"kwh_consumed_ac": "double precision", "voltage": "real"}),
    Layout.of(
        VEHICLE_COLUMNS,
        {"soc": "real", "kwh_delivered_dc": "double precision", "battery_temp": "real"},
    ),
)


def f32(value: float) -> float:
    """`value` as PostgreSQL's real holds it."""
    result: float = struct.unpack("!f", struct.pack("!f", value))[0]
    return result


def staged_rows(payload: bytes) -> list[tuple[Any, ...]]:
    """Decode a binary COPY payload: (microseconds, the values, the device id) a row."""
    if not payload:
        return []
    assert payload.startswith(b"PGCOPY\n\xff\r\n\x00")
    offset = 19
    rows: list[tuple[Any, ...]] = []
    while True:
        (count,) = struct.unpack_from("!h", payload, offset)
        offset += 2
        if count == -1:
            assert offset == len(payload)
            return rows
        fields: list[Any] = []
        for index in range(count):
            (size,) = struct.unpack_from("!i", payload, offset)
            raw = payload[offset + 4 : offset + 4 + size]
            offset += 4 + size
            if index == 0:
                fields.append(struct.unpack("!q", raw)[0])
            elif index == count - 1:
                fields.append(raw.decode())
            else:
                fields.append(struct.unpack("!d" if size == 8 else "!f", raw)[0])
        rows.append(tuple(fields))


def at(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


def write(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def ndjson(items: list[dict[str, Any]]) -> list[str]:
    return [orjson.dumps(item).decode() for item in items]


def chunks_of(path: Path, chunk_rows: int = 1000) -> list[Chunk]:
    return list(read_chunks([path], SETTINGS, chunk_rows, LAYOUTS))


def problems_of(path: Path, chunk_rows: int = 1000) -> list[tuple[int, str | None, str]]:
    with pytest.raises(InvalidRows) as caught:
        chunks_of(path, chunk_rows)
    return [(p.line, p.field, p.reason) for p in caught.value.problems]


# -- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.ndjson", ("ndjson", False)),
        ("a.jsonl", ("ndjson", False)),
        ("a.csv", ("csv", False)),
        ("fleet.2026-11.NDJSON.GZ", ("ndjson", True)),
        ("a.csv.gz", ("csv", True)),
    ],
)
def test_format_comes_from_the_name(name: str, expected: tuple[str, bool]) -> None:
    assert file_format(Path(name)) == expected


@pytest.mark.parametrize("name", ["a.json", "a.txt", "a.gz", "ndjson", "a.ndjson.zip"])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(UnsupportedFile, match="ndjson"):
        file_format(Path(name))


# -- reading NDJSON and CSV ------------------------------------------------------------------


def test_ndjson_mixes_streams_and_skips_blank_lines(tmp_path: Path) -> None:
    t1, t2 = minute_ago(2), minute_ago(1)
    lines = ndjson([meter("M-2", t2, 2.0, 231.0), vehicle("V-1", t1, 1.5, 40.0, 20.0)])
    lines += ["", "  ", *ndjson([meter("M-1", t1, 1.0)])]
    (chunk,) = chunks_of(write(tmp_path / "a.ndjson", lines))
    assert (chunk.first_line, chunk.last_line, chunk.rows, chunk.last_of_file) == (1, 5, 3, True)
    micros1 = (t1 - PG_EPOCH) // timedelta(microseconds=1)
    micros2 = (t2 - PG_EPOCH) // timedelta(microseconds=1)
    # Sorted by device then time, as the merge sorts them.
    assert staged_rows(chunk.meters.copy) == [
        (micros1, 1.0, 230.0, "M-1"),
        (micros2, 2.0, 231.0, "M-2"),
    ]
    assert staged_rows(chunk.vehicles.copy) == [(micros1, 40.0, 1.5, 20.0, "V-1")]
    assert (chunk.meters.read, chunk.meters.kept, chunk.vehicles.read) == (2, 2, 1)
    assert (chunk.first_day, chunk.last_day) == (t1.date(), t2.date())


def test_rows_leave_sorted_by_device_and_time_the_first_of_a_time_kept(tmp_path: Path) -> None:
    t = [minute_ago(m) for m in (4, 3, 2, 1)]
    items = [
        meter("M-b", t[2], 1.0),
        meter("M-a", t[1], 2.0),
        meter("M-b", t[0], 3.0),
        meter("M-a", t[1], 4.0),  # the same (device, time) again: the first one stays
        meter("M-10", t[0], 5.0),
        meter("M-9", t[0], 6.0),
        meter("M-b", t[3], 7.0),
        meter("M-b", t[1], 8.0),
    ]
    (chunk,) = chunks_of(write(tmp_path / "a.ndjson", ndjson(items)))
    rows = [(row[-1], at(row[0]), row[1]) for row in staged_rows(chunk.meters.copy)]
    assert rows == [
        ("M-10", t[0], 5.0),
        ("M-9", t[0], 6.0),
        ("M-a", t[1], 2.0),
        ("M-b", t[0], 3.0),
        ("M-b", t[1], 8.0),
        ("M-b", t[2], 1.0),
        ("M-b", t[3], 7.0),
    ]
    assert (chunk.meters.read, chunk.meters.kept) == (8, 7)
    # Each device's oldest, second newest and newest row.
    ends = [(row[-1], at(row[0])) for row in staged_rows(chunk.meters.ends)]
    assert ends == [
        ("M-10", t[0]),
        ("M-9", t[0]),
        ("M-a", t[1]),
        ("M-b", t[0]),
        ("M-b", t[2]),
        ("M-b", t[3]),
    ]


def test_a_repeated_row_right_after_the_first_is_dropped_too(tmp_path: Path) -> None:
    t1, t2 = minute_ago(2), minute_ago(1)
    items = [meter("M-1", t1, 1.0), meter("M-1", t1, 2.0), meter("M-1", t2, 3.0)]
    (chunk,) = chunks_of(write(tmp_path / "a.ndjson", ndjson(items)))
    assert (chunk.meters.read, chunk.meters.kept) == (3, 2)
    assert [row[1] for row in staged_rows(chunk.meters.copy)] == [1.0, 3.0]


def test_values_are_packed_in_the_history_columns_types(tmp_path: Path) -> None:
    path = write(tmp_path / "a.ndjson", ndjson([vehicle("V-1", minute_ago(1), 0.1, 33.3, 0.1)]))
    (real,) = chunks_of(path)
    (double,) = list(read_chunks([path], SETTINGS, 10, layout.DOUBLE_LAYOUTS))
    assert staged_rows(real.vehicles.copy)[0][1:4] == (f32(33.3), 0.1, f32(0.1))
    assert staged_rows(double.vehicles.copy)[0][1:4] == (33.3, 0.1, 0.1)


def test_a_value_real_cannot_hold_is_a_problem(tmp_path: Path) -> None:
    # PostgreSQL refuses to round a double this close to 0 to a `real`; say so per row.
    path = write(tmp_path / "a.ndjson", ndjson([meter("M-1", minute_ago(1), 1e-300, 1e-46)]))
    assert problems_of(path) == [
        (1, "voltage", "too close to 0 for the history column (real); write 0")
    ]
    (chunk,) = list(read_chunks([path], SETTINGS, 10, layout.DOUBLE_LAYOUTS))
    assert staged_rows(chunk.meters.copy)[0][1:3] == (1e-300, 1e-46)


def test_history_columns_of_other_types_are_refused() -> None:
    with pytest.raises(layout.UnsupportedHistory, match="double precision and real"):
        Layout.of(METER_COLUMNS, {"kwh_consumed_ac": "numeric", "voltage": "real"})


def test_chunks_split_files_and_every_file_ends_with_its_own(tmp_path: Path) -> None:
    items = [meter("M-1", minute_ago(m), float(m)) for m in range(5, 0, -1)]
    first = write(tmp_path / "a.ndjson", ndjson(items))
    second = write(tmp_path / "b.ndjson.gz", ndjson(items[:2]))
    chunks = list(read_chunks([first, second], SETTINGS, 2, LAYOUTS))
    assert [(c.path.name, c.first_line, c.last_line, c.rows, c.last_of_file) for c in chunks] == [
        ("a.ndjson", 1, 2, 2, False),
        ("a.ndjson", 3, 4, 2, False),
        ("a.ndjson", 5, 5, 1, True),
        ("b.ndjson.gz", 1, 2, 2, False),
        ("b.ndjson.gz", 3, 3, 0, True),  # nothing left: the file's closing chunk is empty
    ]


def test_csv_of_each_stream(tmp_path: Path) -> None:
    t = minute_ago(1)
    meters = write(
        tmp_path / "m.csv.gz",
        ["timestamp,voltage,meterId,kwhConsumedAc", f'{iso(t)},230.5,"M-1",12', ""],
    )
    vehicles = write(
        tmp_path / "v.csv",
        ["vehicleId,soc,kwhDeliveredDc,batteryTemp,timestamp", f"V-1,55.5,1e1,-4.25,{iso(t)}"],
    )
    micros = (t - PG_EPOCH) // timedelta(microseconds=1)
    (chunk,) = chunks_of(meters)
    assert staged_rows(chunk.meters.copy) == [(micros, 12.0, 230.5, "M-1")]
    assert chunk.vehicles.read == 0
    (chunk,) = chunks_of(vehicles)
    assert staged_rows(chunk.vehicles.copy) == [(micros, 55.5, 10.0, -4.25, "V-1")]


def test_empty_files_hold_no_rows(tmp_path: Path) -> None:
    for name in ("e.csv", "e.ndjson"):
        (chunk,) = chunks_of(write(tmp_path / name, []))
        assert (chunk.rows, chunk.last_of_file, chunk.first_day) == (0, True, None)


# -- invalid input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("meterId,vehicleId,timestamp", [(1, None, "the header must name meterId or vehicleId")]),
        ("soc,timestamp", [(1, None, "the header must name meterId or vehicleId")]),
        ("meterId,kwhConsumedAc,timestamp", [(1, "voltage", "missing column")]),
        (
            "meterId,kwhConsumedAc,voltage,timestamp,note",
            [(1, "note", "not a column of this stream")],
        ),
        (
            "meterId,kwhConsumedAc,voltage,timestamp,voltage",
            [(1, "voltage", "column named twice")],
        ),
    ],
)
def test_csv_header_problems(
    tmp_path: Path, header: str, expected: list[tuple[int, str | None, str]]
) -> None:
    found = problems_of(write(tmp_path / "x.csv", [header, "a,b,c,d"]))
    assert [(line, field) for line, field, _ in found] == [(x[0], x[1]) for x in expected]
    assert all(reason.startswith(x[2]) for (_, _, reason), x in zip(found, expected, strict=True))


def test_csv_cells_are_read_strictly(tmp_path: Path) -> None:
    t = iso(minute_ago(1))
    path = write(
        tmp_path / "x.csv",
        [
            "meterId,kwhConsumedAc,voltage,timestamp",
            f"M-1,1.0,230,{t}",
            f"M-1,abc,230,{t}",  # 3: not a number
            f"M-2,,230,{t}",  # 4: empty cell
            f"M-3,+1,230,{t}",  # 5: not a JSON number
            "M-4,1,230",  # 6: a cell short
            f"M 5,1,2000,{t}",  # 7: two problems
        ],
    )
    assert problems_of(path) == [
        (3, "kwhConsumedAc", "Input should be a valid number"),
        (4, "kwhConsumedAc", "Field required"),
        (5, "kwhConsumedAc", "Input should be a valid number"),
        (6, None, "3 cells where the header names 4 columns"),
        (7, "meterId", "String should match pattern '^[A-Za-z0-9._:-]{1,64}$'"),
        (7, "voltage", "Input should be less than or equal to 1000"),
    ]


def test_ndjson_problems_name_line_and_field(tmp_path: Path) -> None:
    t = minute_ago(1)
    good = meter("M-1", t, 1.0)
    path = write(
        tmp_path / "x.ndjson",
        [
            orjson.dumps(good).decode(),
            '{"meterId": "M-1", ',  # 2
            orjson.dumps({**good, "voltage": "230"}).decode(),  # 3
            orjson.dumps({**vehicle("V-1", t, 1.0), "meterId": "M-1"}).decode(),  # 4
            "[1, 2]",  # 5
        ],
    )
    found = problems_of(path)
    assert [(line, field) for line, field, _ in found] == [
        (2, None),
        (3, "voltage"),
        (4, None),
        (5, None),
    ]
    assert found[0][2].startswith("Invalid JSON")
    assert found[1][2] == "Input should be a valid number"
    assert found[2][2] == "an item needs exactly one of meterId or vehicleId"


def test_problems_stop_reading_after_a_limit(tmp_path: Path) -> None:
    lines = ["{}"] * (files.MAX_PROBLEMS + 50)
    found = problems_of(write(tmp_path / "x.ndjson", lines))
    assert len(found) == files.MAX_PROBLEMS


def test_a_problem_in_a_later_chunk_comes_after_the_chunks_before(tmp_path: Path) -> None:
    items = ndjson([meter("M-1", minute_ago(m), 1.0) for m in range(8, 1, -1)])
    items[4] = "{}"
    chunks = read_chunks([write(tmp_path / "x.ndjson", items)], SETTINGS, 3, LAYOUTS)
    assert next(chunks).last_line == 3
    with pytest.raises(InvalidRows) as caught:
        next(chunks)
    assert caught.value.first_line == 4
    assert [p.line for p in caught.value.problems] == [5]


# -- the same rules as the API ---------------------------------------------------------------


def api_problems(item: Any) -> list[tuple[str | None, str]]:
    """What POST /v1/ingest says about `item` (empty when it takes it)."""
    parser = ReadingParser.for_type(AnyReading, SETTINGS)
    try:
        parser.parse(json.dumps([item]).encode())  # json: integers beyond 64 bits too
    except ApiError as exc:
        return [(e.field, e.reason) for e in exc.body.errors]
    return []


def import_problems(tmp_path: Path, item: Any) -> list[tuple[str | None, str]]:
    path = write(tmp_path / "one.ndjson", [orjson.dumps(item).decode()])
    try:
        chunks_of(path)
    except InvalidRows as exc:
        return [(p.field, p.reason) for p in exc.problems]
    return []


@pytest.mark.parametrize(
    "change",
    [
        {"timestamp": iso(minute_ago(0) + timedelta(days=1))},  # ahead however long the run
        {"timestamp": iso(minute_ago(0) - timedelta(days=31))},
        {"timestamp": "2026-01-01T10:00:00"},
        {"timestamp": 1700000000},
        {"kwhConsumedAc": -1},
        {"kwhConsumedAc": True},
        {"voltage": None},
        {"meterId": ""},
        {"meterId": "x" * 65},
        {"extra": 1},
    ],
)
def test_problems_are_worded_as_the_api_words_them(tmp_path: Path, change: dict[str, Any]) -> None:
    item = {**meter("M-1", minute_ago(1), 1.0), **change}
    expected = api_problems(item)
    assert expected
    assert import_problems(tmp_path, item) == expected


# Values near and beyond every rule's edge, for the one field of an item that is in doubt.
odd_ids = st.one_of(
    st.text(max_size=70),
    st.sampled_from(["M-1\n", " M-1", "", "é", "x" * 65, "MTR/7"]),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=1),
)
odd_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-50, max_value=1100),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-0.0, 100.0000001, -40.0000001, 1000.0000001, 1e308]),
    st.sampled_from([5e-324, -1e-300, 1e-46, 2.0**-150, -(2.0**-149), 2.0**-149]),  # for real
    st.booleans(),
    st.text(max_size=5),
    st.none(),
)
NOW = datetime.now(UTC).replace(tzinfo=None)  # hypothesis takes naive bounds
ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-3))]
)
recent = st.datetimes(NOW - timedelta(days=29), NOW, timezones=ZONES)
odd_times = st.one_of(
    st.datetimes(NOW - timedelta(days=31), NOW + timedelta(hours=1), timezones=ZONES).flatmap(
        lambda d: st.sampled_from(
            [
                d.isoformat(),
                d.isoformat(timespec="minutes"),
                d.isoformat(sep=" "),
                d.isoformat(timespec="milliseconds").replace("+00:00", "z"),
                d.replace(tzinfo=None).isoformat(),
                d.strftime("%Y%m%dT%H%M%S%z"),
                d.isoformat() + "0",
            ]
        )
    ),
    st.sampled_from(["2026-02-30T10:00:00Z", "2026-11-21T24:00:00Z", "2026-11-21T10:00:60Z"]),
    st.integers(),
)
VALID = {
    "meterId": st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
    "vehicleId": st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
    "kwhConsumedAc": st.one_of(st.floats(0, 1e9), st.integers(0, 2**62)),
    "kwhDeliveredDc": st.one_of(st.floats(0, 1e9), st.integers(0, 2**62)),
    "voltage": st.one_of(st.floats(0, 1000), st.integers(0, 1000)),
    "soc": st.one_of(st.floats(0, 100), st.integers(0, 100)),
    "batteryTemp": st.one_of(st.floats(-40, 100), st.integers(-40, 100)),
    "timestamp": recent.map(lambda d: d.isoformat().replace("+00:00", "Z")),
}
ODD = {"timestamp": odd_times, "meterId": odd_ids, "vehicleId": odd_ids}


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    """Valid items, and items with one field in doubt, one field missing or one too many."""
    fields = draw(
        st.sampled_from(
            [
                ["meterId", "kwhConsumedAc", "voltage", "timestamp"],
                ["vehicleId", "soc", "kwhDeliveredDc", "batteryTemp", "timestamp"],
            ]
        )
    )
    item = {name: draw(VALID[name]) for name in fields}
    change = draw(st.sampled_from(["none", "value", "drop", "add"]))
    if change == "value":
        name = draw(st.sampled_from(fields))
        item[name] = draw(ODD.get(name, odd_numbers))
    elif change == "drop":
        item.pop(draw(st.sampled_from(fields)))
    elif change == "add":
        item[draw(st.sampled_from(["extra", "meterId", "vehicleId"]))] = draw(VALID["meterId"])
    return item


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(readings())
# A timestamp out of range and a value too small to store: both reported, as by the API.
@example(
    {
        "vehicleId": "0",
        "soc": 3.0674163376925543e-221,
        "kwhDeliveredDc": 0.0,
        "batteryTemp": 0.0,
        "timestamp": "2000-01-01T00:00:00Z",
    }
)
def test_the_fast_path_accepts_only_what_the_models_accept_with_their_values(
    item: dict[str, Any],
) -> None:
    encoder = validation.Encoder(SETTINGS, LAYOUTS)
    check = encoder.meter if "meterId" in item else encoder.vehicle
    try:
        fast = check(item, 7)
    except TypeError:  # an unhashable id: the reader hands such rows to the referee
        fast = False
    refused = api_problems(item)
    if fast:
        assert not refused, f"the fast path took what the API refuses: {item}"
    else:
        # A refusal packs nothing; the referee then judges the row as the API does.
        assert encoder.meters.read == encoder.vehicles.read == 0
        taken = encoder.referee(Path("x.ndjson"), 7, json.dumps(item))
        assert taken == (not refused), (item, refused, encoder.problems)
        assert [p.field for p in encoder.problems] == [field for field, _ in refused]
        if not taken:
            return  # nothing packed: no values to compare
    reading = validation.ANY_READING.validate_json(json.dumps(item))
    staged = encoder.meters if "meterId" in item else encoder.vehicles
    (row,) = staged_rows(staged.batch().copy)
    for name in ("voltage", "soc", "batteryTemp"):  # the `real` columns: nothing rounds to 0
        assert item.get(name, 0) == 0 or f32(item[name]) != 0
    assert row[0] == (reading.timestamp - PG_EPOCH) // timedelta(microseconds=1)
    values = reading.model_dump()
    if "meterId" in item:
        assert row[1:] == (values["kwh_consumed_ac"], f32(values["voltage"]), values["meter_id"])
    else:
        assert row[1:] == (
            f32(values["soc"]),
            values["kwh_delivered_dc"],
            f32(values["battery_temp"]),
            values["vehicle_id"],
        )


def canonical_items() -> Iterator[dict[str, Any]]:
    t = minute_ago(1)
    yield meter("MTR-7", t, 1200.25, 231.5)
    yield vehicle("EV-42", t, 880.0, 61.0, 31.5)
    yield {**meter("a.b:c_d-9", t, 0, 0), "timestamp": t.isoformat(timespec="milliseconds")}
    yield {**vehicle("V", t, 1e6, 100, -40), "timestamp": t.astimezone().isoformat()}


@pytest.mark.parametrize("item", list(canonical_items()))
def test_the_api_shape_takes_the_fast_path(item: dict[str, Any]) -> None:
    encoder = validation.Encoder(SETTINGS, LAYOUTS)
    assert (encoder.meter if "meterId" in item else encoder.vehicle)(item, 1)


def test_the_fast_path_bounds_are_the_models() -> None:
    assert validation._VOLTAGE == (0.0, 1000.0)
    assert validation._SOC == (0.0, 100.0)
    assert validation._BATTERY_TEMP == (-40.0, 100.0)
    assert validation._KWH_AC[0] == validation._KWH_DC[0] == 0.0
    assert validation._KWH_AC[1] < math.inf  # finite, so that a range check refuses infinity
