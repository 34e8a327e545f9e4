"""`mtrec prepare census`: UCI Census-Income (KDD) -> an mtrec Parquet dataset (docs/MATH.md §9).

- Raw: census-income.data.gz (199,523 rows) and census-income.test.gz (99,762 rows), 42 fields,
  values with a leading space (stripped here; trailing spaces are part of some values and kept).
- Splits: train = the data file; the test file is permuted with numpy default_rng(seed) and split
  50/50 into valid (first half of the permutation) and test. row_id = line index in the data file,
  or 199,523 + line index in the test file, so the split membership is persisted in every row.
- Tasks: income (col 41 == "50000+."), never_married (col 7 == "Never married"), education (col 4
  in the set of `--edu-def`, docs/MATH.md §9.2).
- Features: every column except 4, 7 (label sources), 24 (instance weight, kept as the extra column
  `instance_weight`, neither a feature nor the sample weight) and 41. The 7 continuous columns:
  by default (`--preprocess log1p_zscore`) the 4 heavy-tailed money columns (mostly 0, up to 99,999)
  go through log1p, then all 7 are z-scored with train mean/std (not clipped); `--preprocess mtrec`
  (the default before the docs/RESULTS.md ablation, 0.004 lower mean validation AUC) min-max scales
  them with train statistics (valid/test clipped to [0, 1]). Both use the table importer's transforms.
  The 31 categorical columns become scalar int64 ids, vocabulary = sorted distinct train values,
  id = 1 + position, 0 = unseen.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.runtime.atomic import atomic_dir
from pipeline.data.census_mmoeex import PREPROCESS as MMOEEX_PREPROCESS, MMoEExEncoder
from pipeline.data.census_raw import COLUMNS, RAW_FILES, numeric_column, raw_paths, read_raw, sha256
from pipeline.data.schema import (ENCODING_KEY, DatasetSchema, DenseColumn, SparseColumn, SplitWriter, TaskColumn,
                                  encoding_digest, existing_dataset)
from pipeline.data.table.spec import DenseSpec
from pipeline.data.table.transforms import DenseFitter, DenseStats, encode_dense

log = logging.getLogger(__name__)

CONTINUOUS = tuple(COLUMNS[i] for i in (0, 5, 16, 17, 18, 30, 39))
NOT_FEATURES = ("education", "marital_status", "instance_weight", "income")  # columns 4, 7, 24, 41
CATEGORICAL = tuple(c for c in COLUMNS if c not in CONTINUOUS and c not in NOT_FEATURES)
MONEY = ("wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks")  # log1p'd by log1p_zscore
# The continuous-column encodings of the mtrec features (the mmoeex ones bring their own features).
DENSE_PREPROCESS = ("mtrec", "log1p_zscore")

_BACHELORS_UP = ("Bachelors degree(BA AB BS)", "Masters degree(MA MS MEng MEd MSW MBA)",
                 "Prof school degree (MD DDS DVM LLB JD)", "Doctorate degree(PhD EdD)")
EDUCATION_DEFS = {
    # MMoE's ">= college": both Associates degrees and up. Note the space before "/" (sic, UCI).
    "associates_plus": ("Associates degree-occup /vocational", "Associates degree-academic program") + _BACHELORS_UP,
    "bachelors_plus": _BACHELORS_UP,  # MMoEEx's intended definition
    # MMoEEx's code as it runs: its Prof-school literal never matches, so Prof school counts as negative.
    "mmoeex_as_coded": tuple(v for v in _BACHELORS_UP if not v.startswith("Prof school")),
}
TASKS = (
    TaskColumn(name="income", label="label_income"),
    TaskColumn(name="never_married", label="label_never_married"),
    TaskColumn(name="education", label="label_education"),
)


def prepare_census(out: str | os.PathLike, raw_dir: Optional[str] = None, edu_def: str = "associates_plus",
                   seed: int = 0, row_group_rows: int = 4096, overwrite: bool = False,
                   preprocess: str = "log1p_zscore", onehot_dim: int = 128) -> str:
    """Write the census dataset to `out` (atomically); returns a summary.

    preprocess: "log1p_zscore" (this module's features, continuous log1p (money columns) + z-score),
    "mtrec" (the same with continuous min-max), or "mmoeex" / "mmoeex_aligned", the MMoEEx-MTL
    feature preparation as run / with its test-feature shift removed (pipeline/data/census_mmoeex.py),
    whose one multi-hot feature gets embeddings of `onehot_dim`.
    An existing complete `out` made with the same parameters and raw files is left as is; one made
    with other parameters is an error unless `overwrite` (then it is replaced once the new one is
    complete).
    """
    if edu_def not in EDUCATION_DEFS:
        raise ValueError(f"unknown edu_def {edu_def!r}; expected one of {sorted(EDUCATION_DEFS)}")
    if preprocess not in (*DENSE_PREPROCESS, *MMOEEX_PREPROCESS):
        raise ValueError(f"unknown preprocess {preprocess!r}; expected one of {DENSE_PREPROCESS + MMOEEX_PREPROCESS}")
    raw = raw_paths(raw_dir)
    params = {"edu_def": edu_def, "seed": seed, "row_group_rows": row_group_rows,
              "raw_sha256": {p.name: sha256(p) for p in raw.values()}}
    if preprocess != "mtrec":  # only then: min-max datasets made before the option keep their parameters
        params.update(preprocess=preprocess, **({"onehot_dim": onehot_dim} if preprocess in MMOEEX_PREPROCESS else {}))
    existing = existing_dataset(out, params, overwrite=overwrite)
    if existing is not None:
        return f"{out} is up to date (same parameters and raw files)\n{existing.summary()}"

    data, test = (read_raw(raw[k]) for k in ("data", "test"))
    permutation = np.random.default_rng(seed).permutation(test.num_rows)
    half = test.num_rows // 2
    sources = {  # split: (raw table, its line indices, row_id of its line 0)
        "train": (data, np.arange(data.num_rows), 0),
        "valid": (test, np.sort(permutation[:half]), data.num_rows),
        "test": (test, np.sort(permutation[half:]), data.num_rows),
    }
    encoder = _Encoder.fit(data, log1p_zscore=preprocess == "log1p_zscore")
    mmoeex = MMoEExEncoder(data, test, preprocess) if preprocess in MMOEEX_PREPROCESS else None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        splits = {}
        for split, (source, lines, row_id_offset) in sources.items():
            rows = source.take(lines)
            table = encoder.encode(rows, row_id_offset + lines, EDUCATION_DEFS[edu_def])
            if mmoeex is not None:
                table = _with_features(table, mmoeex.encode(rows, "train" if split == "train" else "test"))
            writer = SplitWriter(tmp, split, table.schema, row_group_rows=row_group_rows,
                                 file_rows=-(-table.num_rows // row_group_rows) * row_group_rows, tasks=TASKS)
            writer.write(table)
            splits[split] = writer.close()
        prep = _provenance(params, encoder, data.num_rows, test.num_rows, half)
        # the features are a function of the raw files and the preprocessing (seed and edu_def choose
        # the split and a label only): the same digest, the same encoding
        prep[ENCODING_KEY] = encoding_digest({"census": params["raw_sha256"], "preprocess": preprocess,
                                              "onehot_dim": onehot_dim if mmoeex is not None else None})
        if mmoeex is not None:  # its own features: the mtrec encoding notes do not apply
            prep.pop("dense_ranges")
            prep["normalisation"] = "MMoEEx-MTL's: see mmoeex (pipeline/data/census_mmoeex.py)"
            prep["mmoeex"] = mmoeex.provenance()
        schema = DatasetSchema(
            name="census-income-kdd" if mmoeex is None else f"census-income-kdd-{preprocess}",
            dense=tuple(DenseColumn(c) for c in CONTINUOUS) if mmoeex is None else mmoeex.dense_columns(),
            sparse=(tuple(SparseColumn(name=c, column=c, num_embeddings=len(encoder.vocab[c]) + 1)
                          for c in CATEGORICAL) if mmoeex is None else mmoeex.sparse_columns(onehot_dim)),
            tasks=TASKS,
            splits=splits,
            prep=prep,
        )
        schema.save(tmp)
    log.info("census dataset written to %s", out)
    return DatasetSchema.load(out).summary()


def _with_features(table: pa.Table, features: dict[str, pa.Array]) -> pa.Table:
    """`table`'s row id and labels with `features` in place of its own feature columns."""
    keep = [c for c in table.column_names if c == "row_id" or c == "instance_weight" or c.startswith("label_")]
    columns = {"row_id": table["row_id"], **features}
    columns.update({c: table[c] for c in keep if c not in columns})
    return pa.table(columns)


class _Encoder:
    """Train-split statistics: vocabularies of categorical columns; per continuous column its
    transform (the table importer's: min-max, or log1p (MONEY) + z-score) and fitted DenseStats."""

    def __init__(self, vocab: dict[str, pa.Array], dense: dict[str, tuple[DenseSpec, DenseStats]],
                 zscored: bool) -> None:
        self.vocab = vocab
        self.dense = dense
        self.zscored = zscored

    @classmethod
    def fit(cls, train: pa.Table, log1p_zscore: bool = False) -> "_Encoder":
        vocab = {c: pa.array(sorted(pc.unique(train[c]).to_pylist()), pa.string()) for c in CATEGORICAL}
        dense = {}
        for c in CONTINUOUS:
            steps = (("log1p", "zscore") if c in MONEY else ("zscore",)) if log1p_zscore else ("minmax",)
            spec = DenseSpec(name=c, fill="error", transform=steps)
            fitter = DenseFitter(spec)
            fitter.update(numeric_column(train, c))
            dense[c] = spec, fitter.finish(c)
        return cls(vocab, dense, log1p_zscore)

    def encode(self, raw: pa.Table, row_ids: np.ndarray, education_positive: tuple[str, ...]) -> pa.Table:
        """Feature, label and key columns of `raw` rows (the output column order of the dataset)."""
        columns = {"row_id": pa.array(row_ids.astype(np.int64))}
        for c in CONTINUOUS:
            columns[c] = pa.array(encode_dense(*self.dense[c], numeric_column(raw, c)))
        for c in CATEGORICAL:
            position = pc.index_in(raw[c], value_set=self.vocab[c])  # null where unseen in train
            columns[c] = pc.add(pc.fill_null(position, -1).cast(pa.int64()), 1)
        columns["instance_weight"] = pa.array(numeric_column(raw, "instance_weight"))
        labels = {
            "income": pc.equal(raw["income"], "50000+."),
            "never_married": pc.equal(raw["marital_status"], "Never married"),
            "education": pc.is_in(raw["education"], value_set=pa.array(education_positive)),
        }
        for task in TASKS:
            columns[task.label] = labels[task.name].cast(pa.float32())
        return pa.table(columns)


def _provenance(params: dict, encoder: _Encoder, data_rows: int, test_rows: int, half: int) -> dict:
    prep = {
        "params": params,
        "source": "UCI Census-Income (KDD); raw files and licence note in data/census-income-kdd/SOURCE.md",
        "education_positive": list(EDUCATION_DEFS[params["edu_def"]]),
        "split_indices": (
            f"train = {RAW_FILES['data']} lines 0..{data_rows - 1}, row_id = line; valid/test = {RAW_FILES['test']} "
            f"lines perm[:{half}] / perm[{half}:] with perm = numpy.random.default_rng(seed).permutation({test_rows}), "
            f"row_id = {data_rows} + line"
        ),
        "normalisation": "continuous: min-max with train-split min/max (dense_ranges), clipped to [0, 1]; "
                         "categorical: id = 1 + index in the sorted train vocabulary, 0 = unseen in train",
        "dense_ranges": {c: [stats.min, stats.max] for c, (_, stats) in encoder.dense.items()},
        "instance_weight": "column 24, kept as `instance_weight`; not a feature and not the sample weight "
                           "(set `weight: instance_weight` to use it as one)",
    }
    if encoder.zscored:
        prep.pop("dense_ranges")
        prep["normalisation"] = (f"continuous: log1p of {list(MONEY)}, then (x - mean) / std with train-split "
                                 "mean/std (dense_moments, after log1p), not clipped; " +
                                 prep["normalisation"].split("; ", 1)[1])
        prep["dense_moments"] = {c: [stats.mean, stats.std] for c, (_, stats) in encoder.dense.items()}
    return prep
