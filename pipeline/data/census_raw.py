"""The raw UCI Census-Income (KDD) files: their 42 fields, where the shipped copy lives, and
reading them as strings. Shared by both census preparations (pipeline/data/census.py and
pipeline/data/census_mmoeex.py), which import this module and never each other's internals."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

import pipeline
from pipeline.data.schema import DataError

RAW_FILES = {"data": "census-income.data.gz", "test": "census-income.test.gz"}

# The 42 fields in file order (names after census-income.names; index 24 is the instance weight).
COLUMNS = (
    "age", "class_of_worker", "industry_code", "occupation_code", "education", "wage_per_hour",
    "enrolled_in_edu_inst_last_wk", "marital_status", "major_industry_code", "major_occupation_code", "race",
    "hispanic_origin", "sex", "member_of_labor_union", "reason_for_unemployment",
    "full_or_part_time_employment_stat", "capital_gains", "capital_losses", "dividends_from_stocks",
    "tax_filer_status", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", "income",
)
INCOME_VALUES = ("- 50000.", "50000+.")
def shipped_raw_dir() -> Path:
    """data/census-income-kdd of the checkout this package was imported from, else of the current
    directory (an installed package, e.g. the Docker image whose WORKDIR holds data/)."""
    candidates = [Path(pipeline.__file__).resolve().parents[1], Path.cwd()]
    for root in candidates:
        if (root / "data" / "census-income-kdd").is_dir():
            return root / "data" / "census-income-kdd"
    return candidates[0] / "data" / "census-income-kdd"  # the error message then names the checkout path


def raw_paths(raw_dir: Optional[str]) -> dict[str, Path]:
    directory = Path(raw_dir) if raw_dir is not None else shipped_raw_dir()
    paths = {k: directory / name for k, name in RAW_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        hint = "pass --raw DIR" if raw_dir is None else "see data/census-income-kdd/SOURCE.md"
        raise FileNotFoundError(f"census raw file(s) not found: {missing} ({hint})")
    return paths


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_raw(path: Path) -> pa.Table:
    """All 42 fields as strings with the leading space removed; errors name the file."""
    try:
        table = pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(column_names=list(COLUMNS)),
            convert_options=pa_csv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS},
                                                  strings_can_be_null=False),
        )
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: not a 42-field census file: {e}") from None
    table = pa.table({c: pc.utf8_ltrim(table[c], characters=" ") for c in COLUMNS})
    bad_income = pc.invert(pc.is_in(table["income"], value_set=pa.array(INCOME_VALUES)))
    if pc.any(bad_income).as_py():
        line = int(np.flatnonzero(bad_income.to_numpy())[0])
        raise DataError(f"{path}: line {line + 1}, column 41 (income): {table['income'][line]} is not one of "
                        f"{list(INCOME_VALUES)}")
    return table


def numeric_column(table: pa.Table, column: str) -> np.ndarray:
    """A raw census column as float64; a value that is no number is an error naming the column."""
    try:
        return table[column].cast(pa.float64()).to_numpy()
    except pa.ArrowInvalid as e:
        raise DataError(f"census column {column!r} (numeric): {e}") from None
