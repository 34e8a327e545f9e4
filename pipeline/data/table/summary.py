"""What an import counted, per split: rows, positives, nulls filled, out-of-vocabulary values, drops.

`ImportCounts` is filled batch by batch in pass 2; `as_dict()` is stored in schema.yaml
`prep.summary` and `render()` turns that dict into the lines `mtrec prepare table` prints, so the
printed and the saved summary are the same numbers.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from pipeline.data.schema import SPLITS, SplitInfo


class ImportCounts:
    def __init__(self) -> None:
        self.nulls_filled: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.unparseable: dict[str, int] = defaultdict(int)  # values set to null by `invalid: null`
        self.oov: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        self.null_ids: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.mask_rows: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        self.bad_label_rows: dict[str, int] = defaultdict(int)
        self.duplicate_rows = 0
        self.rows_read = 0

    def as_dict(self, infos: dict[str, SplitInfo], vocab_sizes: dict[str, int], ignored: list[str]) -> dict[str, Any]:
        splits = [s for s in SPLITS if s in infos]
        rates = {task: {s: infos[s].positive_rates[task] for s in splits if task in infos[s].positive_rates}
                 for task in dict.fromkeys(t for s in splits for t in infos[s].positive_rates)}
        return {
            "rows_read": self.rows_read,
            "rows": {s: infos[s].rows for s in splits},
            "positive_rate": rates,
            "mask_rate": {t: {s: _ratio(by[s]) for s in splits} for t, by in self.mask_rows.items()},
            "vocabulary": {f: {"size": n, "oov_rate": {s: _ratio(self.oov[f][s]) for s in splits if s in self.oov[f]}}
                           for f, n in vocab_sizes.items()},
            "null_ids": {f: {s: by[s] for s in splits} for f, by in self.null_ids.items() if any(by.values())},
            "nulls_filled": {c: {s: by[s] for s in splits} for c, by in self.nulls_filled.items() if any(by.values())},
            "unparseable_set_to_null": {c: n for c, n in self.unparseable.items() if n},
            "rows_dropped_bad_label": dict(self.bad_label_rows),
            "rows_dropped_duplicate_key": self.duplicate_rows,
            "ignored_input_columns": ignored,
        }


def _ratio(pair: list[int]) -> float:
    return pair[0] / pair[1] if pair[1] else 0.0


def _per_split(values: dict[str, Any], fmt: str) -> str:
    return ", ".join(f"{s} {format(v, fmt)}" for s, v in values.items())


def render(summary: dict[str, Any]) -> str:
    """The printed summary (one topic per line)."""
    lines = [f"rows: {_per_split(summary['rows'], ',')} (read {summary['rows_read']:,})"]
    lines += [f"positive rate {task}: {_per_split(by, '.2%')}" for task, by in summary["positive_rate"].items()]
    lines += [f"mask rate {task} (rows the task applies to): {_per_split(by, '.2%')}"
              for task, by in summary["mask_rate"].items()]
    lines += [f"vocabulary {f}: {v['size']:,} values; out-of-vocabulary rate {_per_split(v['oov_rate'], '.3%')}"
              for f, v in summary["vocabulary"].items()]
    for key, what in (("nulls_filled", "nulls filled"), ("null_ids", "nulls encoded as id 0")):
        lines += [f"{what} {c}: {_per_split(by, ',')}" for c, by in summary[key].items()]
    for column, n in summary["unparseable_set_to_null"].items():
        lines.append(f"unparseable values set to null {column}: {n:,}")
    dropped = summary["rows_dropped_bad_label"]
    lines.append("rows with an unparseable label dropped: "
                 + (", ".join(f"{t} {n:,}" for t, n in dropped.items()) if dropped else "0"))
    lines.append(f"rows with a duplicate key dropped: {summary['rows_dropped_duplicate_key']:,}")
    if summary["ignored_input_columns"]:
        lines.append(f"input columns not used: {summary['ignored_input_columns']}")
    return "\n".join(lines)
