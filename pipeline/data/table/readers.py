"""Streaming readers of raw tables: CSV/TSV (optionally .gz), Parquet and JSON lines.

Every reader yields `RawBatch`es of a bounded size (a CSV/JSON block of `block_bytes`, or a slice of
one Parquet row group) with only the projected columns, so memory does not grow with the file.
CSV columns are all read as strings (no type inference that could differ between blocks); the
conversion to numbers happens in `values.py`, where an unparseable value can be named by its line.
"""
from __future__ import annotations

import contextlib
import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from models.typed_config import ConfigError
from pipeline.data.schema import SPLITS, DataError
from pipeline.data.table.spec import InputsSpec

PARQUET_BATCH_ROWS = 65536


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


def read_batches(file: InputFile, spec: InputsSpec, columns: list[str]) -> Iterator[RawBatch]:
    """Stream `columns` of `file` as RawBatches (bounded memory)."""
    if file.format == "parquet":
        yield from _parquet_batches(file, columns)
        return
    first = 0
    with _errors_name(file):
        reader = _open(file, spec, columns)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            if file.format == "jsonl":
                batch = _project(batch, columns)
            yield RawBatch(pa.Table.from_batches([batch]), file, first)
            first += batch.num_rows


def _parquet_file(file: InputFile) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(file.path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{file.path}: not a readable Parquet file: {e}") from None


def _parquet_batches(file: InputFile, columns: list[str]) -> Iterator[RawBatch]:
    pf = _parquet_file(file)
    for group in range(pf.num_row_groups):
        first = 0
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=columns):
            yield RawBatch(pa.Table.from_batches([batch]), file, first, group)
            first += batch.num_rows


@contextlib.contextmanager
def _errors_name(file: InputFile) -> Iterator[None]:
    """pyarrow's read errors (a bad line, a wrong field count, bad gzip) as DataError naming the file."""
    try:
        yield
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{file.path}: cannot read as {file.format}: {e}") from None


def _open(file: InputFile, spec: InputsSpec, columns: Optional[list[str]]):
    stream = pa.input_stream(file.path)  # decompresses .gz (detected from the extension)
    if file.format == "jsonl":
        return pa_json.open_json(stream, read_options=pa_json.ReadOptions(block_size=spec.block_bytes))
    return pa_csv.open_csv(stream, **_csv_options(file, spec, columns))


def _project(batch: pa.RecordBatch, columns: list[str]) -> pa.RecordBatch:
    """JSON has no include_columns: select (a key missing from a whole block is a null column)."""
    arrays = [batch.column(c) if c in batch.schema.names else pa.nulls(batch.num_rows) for c in columns]
    return pa.RecordBatch.from_arrays(arrays, names=columns)


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
