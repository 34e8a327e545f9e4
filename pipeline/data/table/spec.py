"""The import spec of `mtrec prepare table`: typed dataclasses parsed from YAML, and their checks.

`load_spec(path)` reads the file with the configs' YAML parser (safe_load, `1e6` a number, a duplicate
key an error) and builds `TableSpec` with `models.typed_config.from_dict`: an unknown key is a
ConfigError naming the key path (e.g. `spec.yaml: categorical[2]: unknown key(s) ['bukets'] ...`),
and every `validate(path)` below checks what a type cannot say (a rule with two operators, a hash
feature without `buckets`, ...).
docs/DATA.md "Bring your own data" is the reference of every key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

from models.typed_config import ConfigError, from_dict, parse_yaml
from pipeline.data.schema import SPLITS

Format = Literal["csv", "tsv", "parquet", "jsonl"]
Scalar = Union[float, str]  # YAML numbers compare numerically, strings as text
DenseStep = Literal["log1p", "zscore", "minmax"]
SplitName = Literal["train", "valid", "test"]


def auto_embedding_dim(num_embeddings: int) -> int:
    """The documented rule for `embedding_dim: auto`: 6 * n^(1/4) rounded to a multiple of 4 in [4, 64]
    (multiples of 4 suit the fbgemm kernels)."""
    return int(min(64, max(4, 4 * round(6.0 * num_embeddings ** 0.25 / 4.0))))


@dataclass(frozen=True)
class InputsSpec:
    """Where the rows come from. `files`: a list of paths/globs (one pool, split by `splits`) or a
    mapping split -> list (each file's rows go to its split; see SplitSpec for carving)."""

    files: Union[tuple[str, ...], dict[str, tuple[str, ...]]]
    format: Optional[Format] = None  # None: from the extension (.csv/.tsv[.gz], .parquet, .jsonl/.json[.gz])
    delimiter: Optional[str] = None  # CSV field separator; None: "," (csv) or tab (tsv)
    header: bool = True  # CSV: the first line holds the column names
    column_names: tuple[str, ...] = ()  # CSV without a header line: the names, in file order
    null_values: tuple[str, ...] = ("",)  # CSV: these exact strings are read as null
    block_bytes: int = 1 << 20  # CSV/JSON read block (cache-sized blocks parse fastest; must hold a line)

    def validate(self, path: str) -> None:
        if isinstance(self.files, dict):
            unknown = sorted(set(self.files) - set(SPLITS))
            if unknown:
                raise ConfigError(f"{path}.files: unknown split(s) {unknown}; allowed: {list(SPLITS)}")
            if "train" not in self.files:
                raise ConfigError(f"{path}.files: a mapping needs a `train` entry")
        if not self.files or (isinstance(self.files, dict) and not all(self.files.values())):
            raise ConfigError(f"{path}.files: at least one file is required")
        if not self.header and not self.column_names:
            raise ConfigError(f"{path}.column_names: required when header is false")
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ConfigError(f"{path}.delimiter: must be one character, got {self.delimiter!r}")
        if self.block_bytes < 64:
            raise ConfigError(f"{path}.block_bytes: must be >= 64 (and hold the longest line), got {self.block_bytes}")


@dataclass(frozen=True)
class RuleSpec:
    """A 0/1 value from one raw column: the first operator set decides; none set = the value itself."""

    column: str
    equals: Optional[Scalar] = None
    one_of: Optional[tuple[Scalar, ...]] = None
    greater_than: Optional[float] = None
    at_least: Optional[float] = None

    @property
    def operator(self) -> Optional[str]:
        return next((k for k in ("equals", "one_of", "greater_than", "at_least") if getattr(self, k) is not None),
                    None)

    @property
    def is_text(self) -> bool:
        """True when the rule compares text (string values), false when it compares numbers."""
        values = [self.equals] if self.equals is not None else list(self.one_of or ())
        return any(isinstance(v, str) for v in values)

    def validate(self, path: str) -> None:
        ops = [k for k in ("equals", "one_of", "greater_than", "at_least") if getattr(self, k) is not None]
        if len(ops) > 1:
            raise ConfigError(f"{path}: one operator per rule, got {ops}")
        if self.one_of is not None:
            if not self.one_of:
                raise ConfigError(f"{path}.one_of: empty list")
            if len({isinstance(v, str) for v in self.one_of}) > 1:
                raise ConfigError(f"{path}.one_of: mixes numbers and strings {list(self.one_of)}")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    label: RuleSpec
    kind: Literal["binary", "regression"] = "binary"
    mask: Optional[RuleSpec] = None  # the task applies where this rule is 1
    loss_weight: float = 1.0

    def validate(self, path: str) -> None:
        if self.kind == "regression" and self.label.operator is not None:
            raise ConfigError(f"{path}.label: a regression label is the column's value; "
                              f"{self.label.operator!r} makes it 0/1 (use kind: binary)")
        if self.loss_weight < 0:
            raise ConfigError(f"{path}.loss_weight: must be >= 0, got {self.loss_weight}")


@dataclass(frozen=True)
class DenseSpec:
    """A float32 input. Order: cast -> fill nulls -> `transform` steps (statistics fitted on train)."""

    name: str
    column: Optional[str] = None  # raw column; None = name
    fill: Union[float, Literal["mean", "error"]] = "mean"  # a number, the train mean, or nulls are an error
    transform: tuple[DenseStep, ...] = ()
    invalid: Literal["error", "null"] = "error"  # text that is no number: an error, or treated as null

    @property
    def source(self) -> str:
        return self.column or self.name

    def validate(self, path: str) -> None:
        steps = list(self.transform)
        if "log1p" in steps[1:]:
            raise ConfigError(f"{path}.transform: log1p must come first, got {steps}")
        if len([s for s in steps if s in ("zscore", "minmax")]) > 1 or len(set(steps)) != len(steps):
            raise ConfigError(f"{path}.transform: at most log1p then one of zscore/minmax, got {steps}")
        if isinstance(self.fill, float) and not math.isfinite(self.fill):
            raise ConfigError(f"{path}.fill: must be finite, got {self.fill}")


@dataclass(frozen=True)
class CategoricalSpec:
    """An id feature. Ids: 0 = null; vocab: 1 = out of vocabulary, 2.. = the train vocabulary in
    sorted order; hash: 1 + bucket; bucketize: 1 + number of boundaries <= value."""

    name: str
    column: Optional[str] = None  # raw column; None = name
    encoding: Literal["vocab", "hash", "bucketize"] = "vocab"
    min_count: int = 1  # vocab: values seen fewer times on train are out of vocabulary
    buckets: Optional[int] = None  # hash: number of buckets (required)
    boundaries: tuple[float, ...] = ()  # bucketize: given boundaries ...
    quantiles: Optional[int] = None  # ... or this many buckets at train quantiles
    multi_hot: bool = False  # a bag of ids: a list column, or a string split at `separator`
    separator: Optional[str] = None
    embedding_dim: Union[int, Literal["auto"]] = "auto"  # auto: auto_embedding_dim(num_embeddings)
    pooling: Literal["sum", "mean"] = "sum"

    @property
    def source(self) -> str:
        return self.column or self.name

    def validate(self, path: str) -> None:
        if self.encoding == "hash" and (self.buckets is None or self.buckets < 1):
            raise ConfigError(f"{path}.buckets: encoding hash needs buckets >= 1, got {self.buckets}")
        if self.encoding != "hash" and self.buckets is not None:
            raise ConfigError(f"{path}.buckets: only for encoding hash (encoding is {self.encoding!r})")
        if self.encoding == "bucketize":
            self._validate_bucketize(path)
        elif self.boundaries or self.quantiles is not None:
            raise ConfigError(f"{path}: boundaries/quantiles are only for encoding bucketize")
        if self.min_count < 1:
            raise ConfigError(f"{path}.min_count: must be >= 1, got {self.min_count}")
        if self.separator is not None and (not self.multi_hot or self.separator == ""):
            raise ConfigError(f"{path}.separator: needs multi_hot: true and a non-empty string")
        if isinstance(self.embedding_dim, int) and self.embedding_dim < 1:
            raise ConfigError(f"{path}.embedding_dim: must be >= 1 or auto, got {self.embedding_dim}")

    def _validate_bucketize(self, path: str) -> None:
        if bool(self.boundaries) == (self.quantiles is not None):
            raise ConfigError(f"{path}: encoding bucketize needs exactly one of boundaries / quantiles")
        if list(self.boundaries) != sorted(set(self.boundaries)):
            raise ConfigError(f"{path}.boundaries: must be strictly increasing, got {list(self.boundaries)}")
        if self.quantiles is not None and self.quantiles < 2:
            raise ConfigError(f"{path}.quantiles: must be >= 2, got {self.quantiles}")
        if self.multi_hot:
            raise ConfigError(f"{path}.multi_hot: not supported with encoding bucketize")


@dataclass(frozen=True)
class SplitSpec:
    """files: each file's rows go to its split. hash / time: the pool (a `files` list, or the files
    listed under `train`) is carved into train/valid/test; files listed under valid/test stay there."""

    method: Literal["files", "hash", "time"] = "files"
    column: Optional[str] = None  # hash: the column hashed (None = the key, or the generated row_id); time: required
    fractions: dict[SplitName, float] = field(default_factory=dict)  # hash: valid/test shares of the pool
    cutoffs: dict[SplitName, Scalar] = field(default_factory=dict)  # time: valid/test start (number or ISO date)
    seed: int = 0  # hash: salt; another seed draws another carve

    def validate(self, path: str) -> None:
        used = {"hash": "fractions", "time": "cutoffs"}.get(self.method)
        for key in ("fractions", "cutoffs"):
            if getattr(self, key) and key != used:
                raise ConfigError(f"{path}.{key}: not used by method {self.method!r}")
        if "train" in self.fractions or "train" in self.cutoffs:
            raise ConfigError(f"{path}: train is the rest of the pool; give valid/test only")
        if self.method == "hash":
            if not self.fractions or any(f < 0 for f in self.fractions.values()) or sum(self.fractions.values()) >= 1:
                raise ConfigError(f"{path}.fractions: valid/test shares >= 0 with a sum < 1, got {self.fractions}")
        if self.method == "time":
            self._validate_time(path)

    def _validate_time(self, path: str) -> None:
        if self.column is None:
            raise ConfigError(f"{path}.column: method time needs the timestamp column")
        if not self.cutoffs or len({isinstance(v, str) for v in self.cutoffs.values()}) > 1:
            raise ConfigError(f"{path}.cutoffs: valid/test cutoffs, all numbers or all ISO dates")
        if "valid" in self.cutoffs and "test" in self.cutoffs and self.cutoffs["valid"] > self.cutoffs["test"]:
            raise ConfigError(f"{path}.cutoffs: valid must not start after test")


@dataclass(frozen=True)
class TableSpec:
    """The whole import spec (`mtrec prepare table --spec FILE`)."""

    name: str
    inputs: InputsSpec
    tasks: tuple[TaskSpec, ...]
    dense: tuple[DenseSpec, ...] = ()
    categorical: tuple[CategoricalSpec, ...] = ()
    splits: SplitSpec = field(default_factory=SplitSpec)
    key: Optional[str] = None  # raw key column (ints as is, strings hashed); None = row_id = input row index
    duplicate_keys: Literal["error", "drop"] = "error"  # drop: keep the first row of each key, count the rest
    weight: Optional[str] = None  # raw sample-weight column (finite, >= 0)
    drop: tuple[str, ...] = ()  # raw columns that must never be features (leakage guard)
    bad_labels: Literal["error", "drop"] = "error"  # drop: rows with a null/unparseable label or mask, counted
    row_group_rows: int = 4096
    file_rows: int = 1 << 20

    def validate(self, path: str) -> None:
        if not self.name:
            raise ConfigError(f"{path}.name: must be a non-empty string")
        if not self.tasks:
            raise ConfigError(f"{path}.tasks: at least one task is required")
        if not self.dense and not self.categorical:
            raise ConfigError(f"{path}: no features (dense / categorical)")
        names = ([d.name for d in self.dense] + [c.name for c in self.categorical] + [t.name for t in self.tasks])
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{path}: duplicate feature/task name(s) {dupes}")
        reserved = [n for n in names[:len(names) - len(self.tasks)]
                    if n in ("row_id", "sample_weight") or n.startswith(("label_", "mask_"))]
        if reserved:
            raise ConfigError(f"{path}: feature name(s) {reserved} are reserved for output columns "
                              f"(row_id, sample_weight, label_<task>, mask_<task>)")
        if self.row_group_rows < 1 or self.file_rows < self.row_group_rows or self.file_rows % self.row_group_rows:
            raise ConfigError(f"{path}.file_rows: must be a positive multiple of row_group_rows")
        self._validate_leaks(path)
        if self.splits.method == "files" and not isinstance(self.inputs.files, dict):
            raise ConfigError(f"{path}.splits.method: files needs inputs.files to map splits to files")

    def _validate_leaks(self, path: str) -> None:
        features = {d.source: f"dense {d.name!r}" for d in self.dense}
        features.update({c.source: f"categorical {c.name!r}" for c in self.categorical})
        for column in self.drop:
            if column in features:
                raise ConfigError(f"{path}.drop: {column!r} is dropped but used by {features[column]}")
        for task in self.tasks:
            for rule in (task.label, task.mask):
                if rule is not None and rule.column in features:
                    raise ConfigError(f"{path}.tasks: column {rule.column!r} of task {task.name!r} is also "
                                      f"{features[rule.column]} (a label source must not be a feature)")
        if self.weight in features:
            raise ConfigError(f"{path}.weight: {self.weight!r} is also {features[self.weight]}")

    # -- the raw columns each pass needs -----------------------------------------------------------
    def column_uses(self) -> dict[str, str]:
        """Every raw column the import reads -> the first spec key that names it (fixed order)."""
        uses: dict[str, str] = {}
        for i, d in enumerate(self.dense):
            uses.setdefault(d.source, f"dense[{i}]")
        for i, c in enumerate(self.categorical):
            uses.setdefault(c.source, f"categorical[{i}]")
        for i, t in enumerate(self.tasks):
            uses.setdefault(t.label.column, f"tasks[{i}].label.column")
            if t.mask is not None:
                uses.setdefault(t.mask.column, f"tasks[{i}].mask.column")
        for column, key in ((self.weight, "weight"), (self.key, "key"), (self.splits.column, "splits.column")):
            if column:
                uses.setdefault(column, key)
        return uses

    def raw_columns(self) -> list[str]:
        return list(self.column_uses())

    def numeric_columns(self) -> frozenset[str]:
        """Raw columns read as numbers (dense, bucketized, weight, numeric rules, a numeric time split)."""
        cols = {d.source for d in self.dense} | {c.source for c in self.categorical if c.encoding == "bucketize"}
        cols |= {r.column for t in self.tasks for r in (t.label, t.mask) if r is not None and not r.is_text}
        if self.weight:
            cols.add(self.weight)
        if self.splits.method == "time" and not any(isinstance(v, str) for v in self.splits.cutoffs.values()):
            cols.add(self.splits.column)
        return frozenset(cols)

    def fit_columns(self) -> list[str]:
        """The raw columns pass 1 reads: all but those of hash features (which fit nothing)."""
        hashed = {c.source for c in self.categorical if c.encoding == "hash"}
        needed = {c for t in self.tasks for c in (t.label.column, t.mask.column if t.mask else None) if c}
        needed |= {c for c in (self.weight, self.key, self.splits.column) if c}
        return [c for c in self.raw_columns() if c not in hashed or c in needed]


def load_spec(path: str | Path) -> TableSpec:
    """Parse and validate a spec file; ConfigError names the file and the key path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such spec file")
    raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))  # the configs' parser: 1e6, duplicate keys
    try:
        return from_dict(TableSpec, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
