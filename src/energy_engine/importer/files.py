"""Files of readings: their format by name, read line by line into validated chunks.

A file is read in chunks of rows; each row is validated and packed as it is read
(`validation.py`), and a chunk leaves as COPY data sorted by (device, time) (`chunks.py`).
Reading runs in a worker thread while the event loop stores the chunk before (`run.py`).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import re
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from energy_engine.importer.chunks import Chunk
from energy_engine.importer.layout import DOUBLE_LAYOUTS, Layout
from energy_engine.importer.validation import (
    METER_READING,
    VEHICLE_READING,
    Encoder,
    InvalidRows,
    Problem,
    Referee,
)
from energy_engine.ingest.models import MeterReading, VehicleReading
from energy_engine.settings import Settings

Format = Literal["csv", "ndjson"]
_SUFFIXES: dict[str, Format] = {".csv": "csv", ".ndjson": "ndjson", ".jsonl": "ndjson"}

# More problems than this in one chunk and reading stops: the file needs fixing first.
MAX_PROBLEMS = 20

# A number as JSON writes it: what a CSV cell must look like to be read as one.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# A CSV header's columns: the API's field names of its stream.
METER_FIELDS = tuple(f.alias or n for n, f in MeterReading.model_fields.items())
VEHICLE_FIELDS = tuple(f.alias or n for n, f in VehicleReading.model_fields.items())
_NUMBER_FIELDS = frozenset(
    f.alias or n
    for model in (MeterReading, VehicleReading)
    for n, f in model.model_fields.items()
    if f.annotation is float
)


class UnsupportedFile(ValueError):
    """A file whose name does not say CSV or NDJSON."""


class UnreadableFile(Exception):
    """A file that cannot be read to its end (gone, truncated, not gzip after all)."""


def file_format(path: Path) -> tuple[Format, bool]:
    """The format a file's name announces, and whether it is gzip-compressed."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    if compressed:
        suffixes.pop()
    found = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise UnsupportedFile(
            f"{path}: name it *.csv, *.ndjson or *.jsonl, optionally followed by .gz"
        )
    return found, compressed


ReadProgress = Callable[[Path, int, int], None]
"""Called now and then with a file, the bytes of it read so far and the rows read so far."""

_REPORT_EVERY = 0x3FFF  # lines between progress reports, minus one
# Lines between explicit releases of the GIL, minus one (about 3 ms of reading). Reading runs in
# a thread while the event loop sends the chunk before it to PostgreSQL; without these releases
# the event loop waits long for the GIL after each socket call, and PostgreSQL waits with it
# (docs/performance.md, "Write path notes").
_YIELD_EVERY = 0x3FF


def _ndjson_chunks(
    path: Path,
    lines: Iterable[bytes],
    encoder: Encoder,
    chunk_rows: int,
    report: Callable[[int], None],
) -> Iterator[Chunk]:
    meter, vehicle, loads = encoder.meter, encoder.vehicle, orjson.loads
    first = 1
    line = rows = in_chunk = 0
    for line, text in enumerate(lines, 1):
        try:
            item = loads(text)
            stored = type(item) is dict and (
                meter(item, line) if "meterId" in item else vehicle(item, line)
            )
        except (orjson.JSONDecodeError, TypeError):  # TypeError: an unhashable id or timestamp
            stored = False
        if not stored:
            if text.isspace():  # blank lines (a trailing one, above all) hold nothing
                continue
            stored = encoder.referee(path, line, text)
        if stored:
            rows += 1
            in_chunk += 1
        elif len(encoder.problems) >= MAX_PROBLEMS:
            break
        if not line & _YIELD_EVERY:
            time.sleep(0)  # see _YIELD_EVERY
        if not line & _REPORT_EVERY:
            report(rows)
        if in_chunk >= chunk_rows:
            yield encoder.take(path, first, line, last_of_file=False)
            first = line + 1
            in_chunk = 0
    report(rows)
    yield encoder.take(path, first, max(line, first), last_of_file=True)


def _csv_header(path: Path, header: list[str]) -> tuple[Callable[..., bool], Referee]:
    """The fast check and the referee for a CSV file's stream, or InvalidRows."""
    columns = set(header)
    if ("meterId" in columns) == ("vehicleId" in columns):
        problem = Problem(path, 1, None, "the header must name meterId or vehicleId, not both")
        raise InvalidRows([problem], 1)
    fields = METER_FIELDS if "meterId" in columns else VEHICLE_FIELDS
    problems = [Problem(path, 1, name, "missing column") for name in fields if name not in columns]
    problems += [
        Problem(path, 1, name, "not a column of this stream (Extra inputs are not permitted)")
        for name in header
        if name not in fields
    ]
    problems += [
        Problem(path, 1, name, "column named twice")
        for name in sorted(columns)
        if header.count(name) > 1
    ]
    if problems:
        raise InvalidRows(problems, 1)
    if "meterId" in columns:
        return Encoder.meter, METER_READING
    return Encoder.vehicle, VEHICLE_READING


def _csv_item(header: Sequence[str], cells: Sequence[str]) -> dict[str, Any] | None:
    """A CSV row as the JSON object it stands for, numbers parsed; None if any cell is odd."""
    item: dict[str, Any] = {}
    for name, cell in zip(header, cells, strict=True):
        if name in _NUMBER_FIELDS:
            if not _JSON_NUMBER.fullmatch(cell):
                return None
            item[name] = float(cell)
        else:
            item[name] = cell
    return item


def _csv_as_json(header: Sequence[str], cells: Sequence[str]) -> str:
    """The JSON object a CSV row stands for, for the referee: an empty cell is a missing field,
    a cell that is not a JSON number stays a string (and is refused as one)."""
    parts = []
    for name, cell in zip(header, cells, strict=False):
        if cell == "":
            continue
        if name in _NUMBER_FIELDS and _JSON_NUMBER.fullmatch(cell):
            parts.append(f'"{name}":{cell}')
        else:
            parts.append(f'"{name}":{orjson.dumps(cell).decode()}')
    return "{" + ",".join(parts) + "}"


def _csv_chunks(
    path: Path, stream: IO[bytes], encoder: Encoder, chunk_rows: int, report: Callable[[int], None]
) -> Iterator[Chunk]:
    with io.TextIOWrapper(stream, encoding="utf-8-sig", newline="") as text:
        yield from _csv_rows(path, csv.reader(text, strict=True), encoder, chunk_rows, report)


def _csv_rows(
    path: Path,
    reader: Any,
    encoder: Encoder,
    chunk_rows: int,
    report: Callable[[int], None],
) -> Iterator[Chunk]:
    try:
        header = next(reader)
    except StopIteration:
        yield encoder.take(path, 1, 1, last_of_file=True)
        return
    except (csv.Error, UnicodeDecodeError) as exc:
        raise InvalidRows([Problem(path, 1, None, f"not a CSV header: {exc}")], 1) from None
    fast, referee = _csv_header(path, header)
    first = 2
    line = rows = in_chunk = 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except (csv.Error, UnicodeDecodeError) as exc:
            encoder.problems.append(Problem(path, reader.line_num + 1, None, f"not CSV: {exc}"))
            break
        line = reader.line_num
        if not cells:
            continue
        if len(cells) != len(header):
            reason = f"{len(cells)} cells where the header names {len(header)} columns"
            encoder.problems.append(Problem(path, line, None, reason))
            stored = False
        else:
            item = _csv_item(header, cells)
            stored = (item is not None and fast(encoder, item, line)) or encoder.referee(
                path, line, _csv_as_json(header, cells), referee
            )
        if stored:
            rows += 1
            in_chunk += 1
        elif len(encoder.problems) >= MAX_PROBLEMS:
            break
        if not line & _YIELD_EVERY:
            time.sleep(0)  # see _YIELD_EVERY
        if not line & _REPORT_EVERY:
            report(rows)
        if in_chunk >= chunk_rows:
            yield encoder.take(path, first, line, last_of_file=False)
            first = line + 1
            in_chunk = 0
    report(rows)
    yield encoder.take(path, first, max(line, first), last_of_file=True)


def read_chunks(
    paths: Sequence[Path],
    settings: Settings,
    chunk_rows: int,
    layouts: tuple[Layout, Layout] = DOUBLE_LAYOUTS,
    progress: ReadProgress | None = None,
) -> Generator[Chunk, None, None]:
    """Validated chunks of at most `chunk_rows` readings, file after file, packed for
    history tables of these (meter, vehicle) layouts.

    Every file ends with a chunk flagged `last_of_file` (empty when the file's rows filled the
    chunks before it). Raises InvalidRows at the first chunk holding an invalid row.
    """
    encoder = Encoder(settings, layouts)
    for path in paths:
        found, compressed = file_format(path)
        try:
            with contextlib.ExitStack() as opened:
                raw = opened.enter_context(path.open("rb"))

                def report(rows: int, path: Path = path, raw: IO[bytes] = raw) -> None:
                    if progress is not None:
                        progress(path, raw.tell(), rows)

                stream: IO[bytes] = raw
                if compressed:  # buffered again so that lines are split in C, not in GzipFile
                    gunzip = gzip.GzipFile(fileobj=raw, mode="rb")
                    stream = opened.enter_context(io.BufferedReader(gunzip, 1 << 20))
                if found == "ndjson":
                    yield from _ndjson_chunks(path, stream, encoder, chunk_rows, report)
                else:
                    yield from _csv_chunks(path, stream, encoder, chunk_rows, report)
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise UnreadableFile(f"{path}: {exc}") from exc
