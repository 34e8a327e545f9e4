"""The feature preparation of BorealisAI/MMoEEx-MTL (`src/data_preprocessing.py`, the code the AdaTT
Census experiment adapts), re-expressed as an mtrec dataset, for investigating the gap to the
AdaTT paper's Table 5 (docs/RESULTS.md). `mtrec prepare census --preprocess mmoeex|mmoeex_aligned`.

What that code does, and how it is expressed here:
- 28 categorical columns are one-hot encoded with `pandas.get_dummies` (non-dummy columns first,
  then per categorical column its categories in sorted order: numerically for the two integer
  coded columns, lexically otherwise). Here: one multi-hot sparse feature `onehot` whose ids are
  the one-hot positions; an embedding bag with sum pooling over it is exactly a linear layer over
  the one-hot vector.
- 9 continuous columns, the instance weight and the year among them, are min-max scaled; the
  scaler is fit on the training file and, separately, on the test file for the test file (no
  clipping). Two integer columns (own business or self-employed, veterans' benefits) stay raw.
- **As run (`mmoeex`)**, the test file is one-hot encoded on its own: its dummy columns are those of
  the categories present in the test file, and the one training column it lacks
  ("detailed household and family stat = Grandchild <18 ever marr not in subfamily") is appended
  at the end. Every test dummy column after that category's place therefore holds the value of the
  next category (or of the next column's first one): valid/test rows are fed to the model with
  their one-hot features shifted by one position from there on. Here the valid/test ids are the
  positions in that test-file column list, so the model sees exactly what the MMoEEx code feeds it.
- `mmoeex_aligned` is the same preparation with that shift removed (valid/test ids are the
  training positions): the control that isolates the misalignment.
Labels and the valid/test split are mtrec's (`--edu-def`; MMoEEx's code as run is
`mmoeex_as_coded`); MMoEEx splits with `DataFrame.sample(frac=0.5, random_state=1)` instead.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.data.census_raw import numeric_column
from pipeline.data.schema import DataError, DenseColumn, SparseColumn

# MMoEEx's lists, in its order, under this project's column names (pipeline/data/census.py).
CATEGORICAL = (
    "class_of_worker", "industry_code", "occupation_code", "enrolled_in_edu_inst_last_wk",
    "major_industry_code", "major_occupation_code", "race", "hispanic_origin", "sex",
    "member_of_labor_union", "reason_for_unemployment", "full_or_part_time_employment_stat",
    "tax_filer_status", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "family_members_under_18",
    "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self", "citizenship",
    "fill_inc_questionnaire_for_veterans_admin",
)
SCALED = ("age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks", "instance_weight",
          "num_persons_worked_for_employer", "weeks_worked_in_year", "year")
RAW_NUMERIC = ("own_business_or_self_employed", "veterans_benefits")
INTEGER_CODED = ("industry_code", "occupation_code")  # pandas reads these as int64: numeric sort order
ONEHOT = "onehot"
PREPROCESS = ("mmoeex", "mmoeex_aligned")


def dummy_columns(table: pa.Table) -> list[tuple[str, str]]:
    """(column, category) of every one-hot column `pandas.get_dummies` makes of `table`, in order."""
    columns = []
    for c in CATEGORICAL:
        values = pc.unique(table[c]).to_pylist()
        if c in INTEGER_CODED:
            bad = [v for v in values if not v.lstrip("-").isdigit()]
            if bad:
                raise DataError(f"census column {c!r} (integer coded): {bad[0]!r} is not an integer")
        columns += [(c, v) for v in sorted(values, key=int if c in INTEGER_CODED else None)]
    return columns


class MMoEExEncoder:
    """The one-hot column lists and min-max ranges of the training and of the test file."""

    def __init__(self, train: pa.Table, test: pa.Table, preprocess: str) -> None:
        if preprocess not in PREPROCESS:
            raise ValueError(f"unknown preprocess {preprocess!r}; expected one of {PREPROCESS}")
        self.preprocess = preprocess
        self.train_columns = dummy_columns(train)
        index = {col: i for i, col in enumerate(self.train_columns)}
        as_run = dummy_columns(test)
        self.missing_in_test = [col for col in self.train_columns if col not in set(as_run)]
        self.extra_in_test = [col for col in as_run if col not in index]
        if self.extra_in_test:  # the MMoEEx code would then feed more columns than the model has
            raise DataError(f"census test file has categories absent from training: {self.extra_in_test[:5]}")
        as_run += self.missing_in_test  # MMoEEx appends the training column the test file lacks
        # valid/test id of each (column, category): its position in the list fed to the model
        self.test_ids = {col: (i if preprocess == "mmoeex" else index[col]) for i, col in enumerate(as_run)}
        self.train_ids = index
        self.ranges = {"train": _ranges(train), "test": _ranges(test)}

    def dense_columns(self) -> tuple[DenseColumn, ...]:
        # get_dummies keeps the non-dummy columns in file order
        return tuple(DenseColumn(c) for c in ("age", "wage_per_hour", "capital_gains", "capital_losses",
                                              "dividends_from_stocks", "instance_weight",
                                              "num_persons_worked_for_employer", "own_business_or_self_employed",
                                              "veterans_benefits", "weeks_worked_in_year", "year"))

    def sparse_columns(self, embedding_dim: int) -> tuple[SparseColumn, ...]:
        return (SparseColumn(name=ONEHOT, column=ONEHOT, num_embeddings=len(self.train_columns),
                             embedding_dim=embedding_dim, layout="list"),)

    def encode(self, raw: pa.Table, file: str) -> dict[str, pa.Array]:
        """Feature columns of `raw` rows of `file` ("train" or "test")."""
        columns: dict[str, pa.Array] = {}
        for c in self.dense_columns():
            values = numeric_column(raw, c.column)
            if c.column in SCALED:
                low, high = self.ranges[file][c.column]
                values = (values - low) / (high - low) if high > low else np.zeros_like(values)
            columns[c.column] = pa.array(values.astype(np.float32))
        ids_of = self.train_ids if file == "train" else self.test_ids
        ids = np.stack([_onehot_ids(raw, c, ids_of) for c in CATEGORICAL], axis=1)  # [rows, 28]
        offsets = pa.array(np.arange(0, ids.size + 1, len(CATEGORICAL), dtype=np.int32))
        columns[ONEHOT] = pa.ListArray.from_arrays(offsets, pa.array(ids.reshape(-1)))
        return columns

    def provenance(self) -> dict[str, Any]:
        shifted = self.preprocess == "mmoeex" and any(
            self.test_ids[col] != self.train_ids[col] for col in self.train_ids)
        return {
            "preprocess": self.preprocess,
            "onehot_columns": len(self.train_columns),
            "missing_in_test_file": [f"{c}={v}" for c, v in self.missing_in_test],
            "valid_test_onehot_shifted": shifted,
            "dense_ranges": {f: {c: list(r) for c, r in rs.items()} for f, rs in self.ranges.items()},
        }


def _onehot_ids(raw: pa.Table, column: str, ids_of: dict[tuple[str, str], int]) -> np.ndarray:
    categories = [v for c, v in ids_of if c == column]
    position = pc.index_in(raw[column], value_set=pa.array(categories, pa.string()))
    if position.null_count:  # cannot happen for the files the encoder was fit on
        raise DataError(f"census column {column!r}: a category outside the one-hot columns")
    return np.array([ids_of[(column, v)] for v in categories], dtype=np.int64)[position.to_numpy()]


def _ranges(table: pa.Table) -> dict[str, tuple[float, float]]:
    return {c: (float(v.min()), float(v.max())) for c in SCALED for v in [numeric_column(table, c)]}

