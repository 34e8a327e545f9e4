"""Pass 1 (fit the train statistics) and the fitted statistics as saved in schema.yaml `prep.fitted`.

`fit_stats` streams only the files that can hold train rows, with only the columns that need
fitting, and keeps exactly the train rows pass 2 will write (`rows.rows_of`). `Fitted.save` writes
vocabularies to `vocab/<feature>.parquet` and returns the mapping stored under `prep.fitted`;
`load_fitted` reads both back (`mtrec prepare table --reuse-stats DATASET`), so new logs are
encoded exactly like the dataset the model was trained on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.typed_config import ConfigError
from pipeline.data.schema import DataError, DatasetSchema, encoding_digest
from pipeline.data.table.readers import InputFile, read_all
from pipeline.data.table.rows import RowState, dense_raw, rows_of
from pipeline.data.table.spec import CategoricalSpec, TableSpec
from pipeline.data.table.splits import TRAIN
from pipeline.data.table.transforms import (CategoricalEncoder, DenseFitter, DenseStats, QuantileSampler,
                                            VocabCounter, Vocabulary)
from pipeline.data.table.values import as_numbers, as_text, column, text_lists

HASH_DOC = "splitmix64(fnv1a64(utf8 text)); integers as decimal text (docs/DATA.md, Bring your own data)"
IDS_DOC = ("0 = null; vocab: 1 = out of vocabulary, 2 + i = i-th value of the sorted train vocabulary; "
           "hash: 1 + hash mod buckets; bucketize: 1 + number of boundaries <= value")


@dataclass
class Fitted:
    dense: dict[str, DenseStats]
    encoders: dict[str, CategoricalEncoder]

    def vocab_sizes(self) -> dict[str, int]:
        return {n: len(e.vocabulary) for n, e in self.encoders.items() if e.spec.encoding == "vocab"}

    def encoding_digest(self, spec: TableSpec) -> str:
        """What a raw value becomes: each feature's steps (not its source column, which new logs may
        name differently, nor fit-only settings such as min_count, whose result is below), the fitted
        statistics, and every vocabulary in id order."""
        dense = {d.name: {"transform": list(d.transform), "invalid": d.invalid, **asdict(self.dense[d.name])}
                 for d in spec.dense}
        categorical = {c.name: {"encoding": c.encoding, "buckets": c.buckets, "multi_hot": c.multi_hot,
                                "separator": c.separator, "num_embeddings": self.encoders[c.name].num_embeddings,
                                "boundaries": [float(b) for b in self.encoders[c.name].boundaries]}
                       for c in spec.categorical}
        vocabularies = (text for name in sorted(self.encoders) if self.encoders[name].vocabulary is not None
                        for text in (f"vocabulary {name}", *_joined(self.encoders[name].vocabulary.values)))
        return encoding_digest({"dense": dense, "categorical": categorical}, vocabularies)

    def save(self, dataset_dir: Path) -> dict:
        """Write the vocabularies; return the `prep.fitted` mapping."""
        categorical = {}
        for name, enc in self.encoders.items():
            entry = {"encoding": enc.spec.encoding, "num_embeddings": enc.num_embeddings}
            if enc.spec.encoding == "vocab":
                (dataset_dir / "vocab").mkdir(exist_ok=True)
                enc.vocabulary.save(dataset_dir / "vocab" / f"{name}.parquet")
                entry.update(vocab_file=f"vocab/{name}.parquet", size=len(enc.vocabulary))
            elif enc.spec.encoding == "hash":
                entry["buckets"] = enc.spec.buckets
            else:
                entry["boundaries"] = [float(b) for b in enc.boundaries]
            categorical[name] = entry
        return {"hash": HASH_DOC, "ids": IDS_DOC, "dense": {n: asdict(s) for n, s in self.dense.items()},
                "categorical": categorical}


def _joined(values: pa.Array, block: int = 65536) -> Iterator[str]:
    """The values as NUL-joined blocks: digested like one value at a time, without a Python string
    per value of a vocabulary of millions held at once."""
    for start in range(0, len(values), block):
        yield "\0".join(values.slice(start, block).to_pylist())


def fit_stats(spec: TableSpec, files: list[InputFile]) -> Fitted:
    """Pass 1 over the files that can hold train rows."""
    dense = {d.name: DenseFitter(d) for d in spec.dense}
    vocab = {c.name: VocabCounter() for c in spec.categorical if c.encoding == "vocab"}
    quantiles = {c.name: QuantileSampler() for c in spec.categorical if c.quantiles is not None}
    classes = np.zeros((2, len(spec.tasks)))  # positives, labelled rows (mask 1) of each task on train
    state = RowState()
    train_files = [f for f in files if f.split in (None, "train")]
    for batch in read_all(train_files, spec.inputs, spec.fit_columns(), spec.numeric_columns()):
        rows = rows_of(batch, spec, state)
        train = rows.keep & (rows.splits == TRAIN)
        for d in spec.dense:
            dense[d.name].update(dense_raw(batch, d)[train])
        for c in spec.categorical:
            if c.name in vocab:
                _count_train_values(vocab[c.name], batch, c, train)
            if c.name in quantiles:
                quantiles[c.name].update(as_numbers(batch, c.source, "null")[0][train])
        masks = rows.labels.masks[train]
        classes += [(rows.labels.labels[train] * masks).sum(0), masks.sum(0)]
    _check_classes(spec, classes, train_files)
    try:
        return Fitted(
            dense={name: fitter.finish(name) for name, fitter in dense.items()},
            encoders={c.name: CategoricalEncoder(
                c, vocab[c.name].finish(c.min_count) if c.name in vocab else None,
                quantiles[c.name].finish(c.quantiles, c.name) if c.name in quantiles else c.boundaries)
                for c in spec.categorical},
        )
    except ValueError as e:
        raise DataError(f"{[f.path for f in train_files]}: {e}") from None


def _count_train_values(counter: VocabCounter, batch, c: CategoricalSpec, train: np.ndarray) -> None:
    """Count the text values of the train rows (every element of a multi-hot list): each distinct
    value once per batch, counted with a bincount over its dictionary index (no copy of the text)."""
    if c.multi_hot:
        values, value_rows = text_lists(batch, c.source, c.separator)
        train = train[value_rows]
    else:
        values = as_text(column(batch, c.source))
    encoded = values.dictionary_encode()
    index = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
    counts = np.bincount(index[train & (index >= 0)], minlength=len(encoded.dictionary))
    counter.update(encoded.dictionary, counts)


def _check_classes(spec: TableSpec, classes: np.ndarray, files: list[InputFile]) -> None:
    names = [f.path for f in files]
    for t, task in enumerate(spec.tasks):
        positives, labelled = classes[:, t]
        if labelled == 0:
            raise DataError(f"{names}: task {task.name!r} has no labelled train rows (mask rule never 1?)")
        if task.kind == "binary" and positives in (0, labelled):
            raise DataError(f"{names}: task {task.name!r} has a single class on train: all {labelled:,.0f} "
                            f"labelled rows are {int(positives > 0)} (check the label rule {task.label})")


def load_fitted(spec: TableSpec, dataset_dir: Path) -> Fitted:
    """The statistics of an earlier import (`--reuse-stats`); ConfigError when they do not fit `spec`."""
    fitted = DatasetSchema.load(dataset_dir).prep.get("fitted")
    where = f"--reuse-stats {dataset_dir}"
    if not fitted:
        raise ConfigError(f"{where}: no prep.fitted in schema.yaml (not written by `mtrec prepare table`)")
    dense = {}
    for d in spec.dense:
        if d.name not in fitted["dense"]:
            raise ConfigError(f"{where}: no fitted statistics for dense {d.name!r}")
        dense[d.name] = DenseStats(**fitted["dense"][d.name])
    encoders = {}
    for c in spec.categorical:
        entry = fitted["categorical"].get(c.name)
        if entry is None or entry["encoding"] != c.encoding or entry.get("buckets") != c.buckets:
            raise ConfigError(f"{where}: categorical {c.name!r} was not fitted with encoding {c.encoding!r}"
                              f"{f' and {c.buckets} buckets' if c.buckets else ''}")
        vocabulary = Vocabulary.load(Path(dataset_dir) / entry["vocab_file"]) if c.encoding == "vocab" else None
        encoders[c.name] = CategoricalEncoder(c, vocabulary, tuple(entry.get("boundaries", ())))
    return Fitted(dense, encoders)
