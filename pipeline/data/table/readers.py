"""Streaming readers of raw tables: CSV/TSV (optionally .gz), Parquet and JSON lines.

Every reader yields `RawBatch`es of a bounded size (a CSV/JSON block of `block_bytes`, or a slice of
one Parquet row group) with only the projected columns, so memory does not grow with the file.
CSV columns are all read as strings (no type inference that could differ between blocks); the
conversion to numbers happens in `values.py`, where an unparseable value can be named by its line.
"""
from __future__ import annotations

import contextlib
import glob
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from models.typed_config import ConfigError
from pipeline.data.schema import SPLITS, DataError
from pipeline.data.table.spec import InputsSpec

T = TypeVar("T")
BATCH_ROWS = 65536  # rows handed on at a time: per-batch overheads stay small, memory bounded
PREFETCH = 2  # batches parsed ahead


@dataclass(frozen=True)
class InputFile:
    """One raw file; `split` is where its rows go (None: the pool carved by the split rule)."""

    path: str
    split: Optional[str]
    format: str
    header_lines: int = 0  # lines before the first data row (a CSV header)


@dataclass(frozen=True)
class RawBatch:
    """Rows `first_row ..` of `file` (0-based data rows), or of Parquet row group `row_group`."""

    table: pa.Table
    file: InputFile
    first_row: int
    row_group: Optional[int] = None
    # text columns read as numbers, already cast to float64 by the reader thread (where the cast
    # succeeded; a column whose cast fails is left to `values.as_numbers`, which names the bad line)
    numbers: dict[str, pa.Array] = field(default_factory=dict)

    def where(self, row: int) -> str:
        """`row` (index in this batch) as a human location: file and line, or row group and row."""
        if self.file.format == "parquet":
            return f"{self.file.path}: row group {self.row_group}, row {self.first_row + row}"
        return f"{self.file.path}: line {self.file.header_lines + self.first_row + row + 1}"


def _format_of(path: str, declared: Optional[str]) -> str:
    if declared is not None:
        return declared
    name = path.lower().removesuffix(".gz")
    for suffix, fmt in ((".csv", "csv"), (".tsv", "tsv"), (".parquet", "parquet"), (".jsonl", "jsonl"),
                        (".json", "jsonl")):
        if name.endswith(suffix):
            return fmt
    raise ConfigError(f"{path}: cannot tell the format from the extension; set inputs.format")


def resolve_inputs(spec: InputsSpec, base: Path, override: Optional[list[str]] = None) -> list[InputFile]:
    """The input files in processing order (train, valid, test; sorted glob matches).

    Spec paths are relative to `base` (the spec's directory); `override` (`--input`) entries are
    `PATH_OR_GLOB` (one pool) or `SPLIT=PATH_OR_GLOB`, relative to the working directory.
    """
    if override:
        groups = _override_groups(override)
        base = Path(".")
    else:
        groups = spec.files if isinstance(spec.files, dict) else {None: spec.files}
    order = sorted(groups, key=lambda s: SPLITS.index(s) if s is not None else -1)
    files = []
    for split in order:
        for pattern in groups[split]:
            full = str(pattern if Path(pattern).is_absolute() else base / pattern)
            matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
            if not matches or not all(Path(m).is_file() for m in matches):
                raise FileNotFoundError(f"input {pattern!r}: no such file ({full})")
            for match in matches:
                fmt = _format_of(match, spec.format)
                files.append(InputFile(match, split, fmt, int(fmt in ("csv", "tsv") and spec.header)))
    return files


def _override_groups(entries: list[str]) -> dict[Optional[str], list[str]]:
    groups: dict[Optional[str], list[str]] = {}
    for entry in entries:
        split, sep, pattern = entry.partition("=")
        if not sep or split not in SPLITS:
            split, pattern = None, entry
        groups.setdefault(split, []).append(pattern)
    if None in groups and len(groups) > 1:
        raise ConfigError(f"--input: give every entry as SPLIT=PATH or none of them, got {entries}")
    if groups and None not in groups and "train" not in groups:
        raise ConfigError("--input: SPLIT=PATH entries need a train=... entry")
    return groups


def file_columns(file: InputFile, spec: InputsSpec) -> list[str]:
    """The column names of `file` (a CSV header line, a Parquet footer, the first JSON block)."""
    if file.format == "parquet":
        return _parquet_file(file).schema_arrow.names
    if file.format in ("csv", "tsv") and not spec.header:
        return list(spec.column_names)
    with _errors_name(file):  # CSV: the header line; JSON: the keys of the first block
        return _open(file, spec, columns=None).schema.names


def read_all(files: list[InputFile], spec: InputsSpec, columns: list[str],
             numeric: frozenset[str] = frozenset()) -> Iterator[RawBatch]:
    """Every file's batches in order, parsed `PREFETCH` batches ahead in a background thread (pyarrow
    releases the GIL while it parses, so parsing overlaps the caller's work on another core)."""
    return prefetched((b for f in files for b in read_batches(f, spec, columns, numeric)), PREFETCH)


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """`items` produced by a daemon thread at most `depth` ahead; its exceptions re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop, done = threading.Event(), object()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True, name="table-reader")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)


def read_batches(file: InputFile, spec: InputsSpec, columns: list[str],
                 numeric: frozenset[str] = frozenset()) -> Iterator[RawBatch]:
    """Stream `columns` of `file` as RawBatches (bounded memory). `numeric`: the columns the spec
    reads as numbers (JSON lines reads them as float64 whatever its first block looks like)."""
    if file.format == "parquet":
        yield from _parquet_batches(file, columns)
        return
    first, pending = 0, []
    with _errors_name(file):
        reader = _open(file, spec, columns, numeric)
        while True:  # small blocks parse fastest (cache-sized); they are joined into BATCH_ROWS batches
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            pending.append(batch)
            if sum(b.num_rows for b in pending) >= BATCH_ROWS:
                table = _join(pending)
                yield RawBatch(table, file, first, numbers=_cast_numbers(table, numeric))
                first, pending = first + table.num_rows, []
        if pending:
            table = _join(pending)
            yield RawBatch(table, file, first, numbers=_cast_numbers(table, numeric))


def _cast_numbers(table: pa.Table, numeric: frozenset[str]) -> dict[str, pa.Array]:
    """float64 casts of the `numeric` text columns that cast cleanly. Done here, in the reader
    thread, because the casts are a large share of the encoding work and pyarrow releases the GIL
    while it casts: the main thread then only encodes."""
    out = {}
    for name in numeric & set(table.column_names):
        values = one_array(table.column(name))
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            try:
                out[name] = pc.cast(values, pa.float64())
            except pa.ArrowInvalid:
                continue
    return out


def one_array(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as one Array; a single chunk is not copied (combine_chunks would concatenate it)."""
    if isinstance(values, pa.ChunkedArray):
        return values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    return values


def _join(batches: list[pa.RecordBatch]) -> pa.Table:
    """One table of consecutive blocks; JSON blocks may infer different types (int vs double, null)."""
    if len({b.schema for b in batches}) == 1:
        table = pa.Table.from_batches(batches)
    else:
        table = pa.concat_tables([pa.Table.from_batches([b]) for b in batches], promote_options="permissive")
    return table.combine_chunks()  # one contiguous array per column, joined once for every later use


def _parquet_file(file: InputFile) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(file.path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{file.path}: not a readable Parquet file: {e}") from None


def _parquet_batches(file: InputFile, columns: list[str]) -> Iterator[RawBatch]:
    pf = _parquet_file(file)
    for group in range(pf.num_row_groups):
        first = 0
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns):
            yield RawBatch(pa.Table.from_batches([batch]), file, first, group)  # one chunk per column
            first += batch.num_rows


@contextlib.contextmanager
def _errors_name(file: InputFile) -> Iterator[None]:
    """pyarrow's read errors (a bad line, a wrong field count, bad gzip) as DataError naming the file."""
    try:
        yield
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{file.path}: cannot read as {file.format}: {e}") from None


def _open(file: InputFile, spec: InputsSpec, columns: Optional[list[str]], numeric: frozenset[str] = frozenset()):
    stream = pa.input_stream(file.path)  # decompresses .gz (detected from the extension)
    read = pa_json.ReadOptions(block_size=spec.block_bytes)
    if file.format == "jsonl" and columns is None:
        return pa_json.open_json(stream, read_options=read)
    if file.format == "jsonl":
        parse = pa_json.ParseOptions(explicit_schema=_json_schema(file, spec, columns, numeric),
                                     unexpected_field_behavior="ignore")
        return pa_json.open_json(stream, read_options=read, parse_options=parse)
    return pa_csv.open_csv(stream, **_csv_options(file, spec, columns))


def _json_schema(file: InputFile, spec: InputsSpec, columns: list[str], numeric: frozenset[str]) -> pa.Schema:
    """The projected columns' types: float64 for numeric ones, else as inferred from the first block
    (string where it holds only nulls or lacks the key). Pyarrow's streaming JSON reader fixes the
    types after the first block; an explicit schema lets a later block bring new keys, doubles in
    a column that began with integers, or values in one that began with nulls."""
    first = _open(file, spec, None).schema
    def kind(c: str) -> pa.DataType:
        if c in numeric:
            return pa.float64()
        found = first.field(c).type if c in first.names else pa.null()
        return pa.string() if pa.types.is_null(found) else found
    return pa.schema([(c, kind(c)) for c in columns])


def _csv_options(file: InputFile, spec: InputsSpec, columns: Optional[list[str]]) -> dict:
    delimiter = spec.delimiter or ("\t" if file.format == "tsv" else ",")
    read = pa_csv.ReadOptions(block_size=spec.block_bytes,
                              column_names=None if spec.header else list(spec.column_names))
    convert = pa_csv.ConvertOptions(
        include_columns=columns, null_values=list(spec.null_values), strings_can_be_null=True,
        quoted_strings_can_be_null=True,
        column_types={c: pa.string() for c in columns} if columns is not None else None,
    )
    return {"read_options": read, "parse_options": pa_csv.ParseOptions(delimiter=delimiter),
            "convert_options": convert}
