"""Raw column values -> numbers or text, vectorised, with errors that name the row and column.

CSV columns arrive as strings, Parquet/JSON columns with their own types; these helpers give the
same result for both: numbers as float64 (NaN = null), text with integers written in decimal, so a
CSV's "123" and a Parquet int64 123 hash, count and compare alike.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.schema import DataError
from pipeline.data.table.readers import RawBatch, one_array

# What counts as a number in text (surrounding whitespace is trimmed first).
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity|nan)$"


def column(batch: RawBatch, name: str) -> pa.Array:
    """One column of the batch as a single Array."""
    return one_array(batch.table.column(name))


def bad_value(batch: RawBatch, name: str, rows: np.ndarray, what: str, hint: str = "") -> DataError:
    """DataError naming the first of `rows` (indices in the batch), its value and how many there are."""
    first = int(rows[0])
    value = column(batch, name)[first].as_py()
    more = f"; {len(rows)} such row(s) in this block" if len(rows) > 1 else ""
    return DataError(f"{batch.where(first)}, column {name!r}: {what} {value!r}{more}{hint}")


def as_text(values: pa.Array) -> pa.Array:
    """Strings as they are; integers (and other scalars) in their canonical text form."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    if pa.types.is_dictionary(values.type):
        return as_text(values.dictionary_decode())
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), pa.string())
    return pc.cast(values, pa.string())


def as_numbers(batch: RawBatch, name: str, invalid: str = "error") -> tuple[np.ndarray, int]:
    """The column as float64 with NaN for nulls; returns (values, count of unparseable values).

    invalid "error": text that is no number (or an infinite value) raises DataError naming the
    line; "null": such values become NaN and are counted. Text is cast directly (the fast path);
    only when that fails is it trimmed and matched against a number pattern to find the bad rows.
    """
    values = column(batch, name)
    bad = 0
    try:
        numbers = batch.numbers[name] if name in batch.numbers else pc.cast(values, pa.float64())
    except pa.ArrowInvalid:
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise DataError(f"{batch.file.path}: column {name!r} of type {values.type} is not numeric") from None
        numbers, bad = _parse_text(batch, name, pc.utf8_trim_whitespace(values), invalid)
    except pa.ArrowNotImplementedError:
        raise DataError(f"{batch.file.path}: column {name!r} of type {values.type} is not numeric") from None
    numbers = numbers.to_numpy(zero_copy_only=False)
    infinite = np.flatnonzero(np.isinf(numbers))
    if len(infinite):
        if invalid == "error":
            raise bad_value(batch, name, infinite, "infinite value")
        numbers[infinite] = np.nan
    return numbers, bad + len(infinite)


def _parse_text(batch: RawBatch, name: str, text: pa.Array, invalid: str) -> tuple[pa.Array, int]:
    ok = pc.fill_null(pc.match_substring_regex(text, _NUMBER, ignore_case=True), True)
    bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
    if len(bad) and invalid == "error":
        raise bad_value(batch, name, bad, "not a number:")
    try:
        return pc.cast(pc.if_else(ok, text, pa.scalar(None, text.type)), pa.float64()), len(bad)
    except pa.ArrowInvalid as e:  # text the pattern accepts but Arrow does not parse
        raise DataError(f"{batch.file.path}: column {name!r}: {e}") from None


def text_lists(batch: RawBatch, name: str, separator: Optional[str]) -> tuple[pa.Array, np.ndarray]:
    """A multi-hot column as (flat text values without nulls/empties, row index of each value).

    A list column is used as is; a string column is split at `separator`. Null or empty lists and
    empty tokens contribute no values.
    """
    values = column(batch, name)
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        if separator is None:
            raise DataError(f"{batch.file.path}: column {name!r} is text; a multi-hot feature over text needs "
                            f"`separator`")
        values = pc.split_pattern(values, separator)
    elif not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
        raise DataError(f"{batch.file.path}: column {name!r} has type {values.type}; multi_hot needs a list "
                        f"column or a delimited string")
    flat = as_text(pc.list_flatten(values))
    rows = pc.list_parent_indices(values).to_numpy()
    keep = pc.and_(pc.is_valid(flat), pc.not_equal(pc.fill_null(flat, ""), "")).to_numpy(zero_copy_only=False)
    return flat.filter(pa.array(keep)), rows[keep]
