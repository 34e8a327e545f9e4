"""UCI Adult through the no-code path (docs/DATA.md "Bring your own data"): mtrec AdaTT-sp from
`mtrec init-config` over several seeds next to a scikit-learn logistic regression on the same
split and features; prints the Markdown table of docs/RESULTS.md "Adult". Not a test.

    .venv/bin/python benchmarks/adult_table.py                          # 3 seeds, 300 steps each
    .venv/bin/python benchmarks/adult_table.py --seeds 5 --max-steps 600

Data: `mtrec prepare table --spec examples/adult/spec.yaml` (valid = 10% of adult.data by hash,
test = adult.test). mtrec: `mtrec init-config --model adatt_sp` as written, trained with
`--max-steps` and evaluated on test at the best validation checkpoint (benchmarks/_runs.py; runs
recorded in docs/results/adult_runs.jsonl, never re-run). Logistic regression: the same Parquet
splits, every categorical id one-hot (unseen ids ignored), the dense columns as imported (z-scored,
log1p for the money columns), L2 C = 1, lbfgs, fitted on train, one fit per task.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from _runs import REPO, Budget, Ledger, RunSpec, aggregate, fmt_mean_std, prepare_adult, records_for, run_all

TASKS = ("income", "never_married")
MODEL = "adult_adatt_sp"


def logistic_regression(data: Path) -> dict[str, float]:
    """Test AUC per task of a one-hot + dense logistic regression fitted on train."""
    import pyarrow.parquet as pq
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    from pipeline.data.schema import DatasetSchema

    schema = DatasetSchema.load(data)
    tables = {s: pq.read_table(schema.split_paths(s)) for s in ("train", "test")}
    ids = {s: np.column_stack([t[c.column].to_numpy() for c in schema.sparse]) for s, t in tables.items()}
    dense = {s: np.column_stack([t[d.column].to_numpy() for d in schema.dense]) for s, t in tables.items()}
    onehot = OneHotEncoder(handle_unknown="ignore").fit(ids["train"])
    x = {s: sparse.hstack([onehot.transform(ids[s]), sparse.csr_matrix(dense[s])]).tocsr() for s in tables}
    aucs = {}
    for task in schema.tasks:
        y = {s: t[task.label].to_numpy() for s, t in tables.items()}
        model = LogisticRegression(C=1.0, max_iter=2000).fit(x["train"], y["train"])
        aucs[task.name] = float(roc_auc_score(y["test"], model.predict_proba(x["test"])[:, 1]))
    return aucs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=300, help="the documented budget (docs/DATA.md)")
    parser.add_argument("--runs", default=str(REPO / "runs" / "adult_table"), help="run directories")
    parser.add_argument("--ledger", default=str(REPO / "docs" / "results" / "adult_runs.jsonl"))
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    root = Path(args.runs)
    data, config = prepare_adult(root)
    budget = Budget(max_steps=args.max_steps)
    specs = [RunSpec(MODEL, config, False, seed) for seed in range(args.seeds)]
    ledger = Ledger(Path(args.ledger))
    failures = run_all([(s, data) for s in specs], root, budget, ledger, args.jobs)
    records = records_for(ledger, specs, budget)
    mtrec_auc = aggregate([r["test"] for r in records], metrics=("auc",))
    lr = logistic_regression(data)
    print(f"\nUCI Adult, test split ({len(records)} seed(s) of mtrec, {args.max_steps} steps each); test AUC\n")
    print("| model | " + " | ".join(TASKS) + " |")
    print("| --- | " + " | ".join("---:" for _ in TASKS) + " |")
    print("| mtrec AdaTT-sp (`init-config`) | " + " | ".join(fmt_mean_std(mtrec_auc[t]["auc"]) for t in TASKS) + " |")
    print("| logistic regression (scikit-learn) | " + " | ".join(f"{lr[t]:.4f}" for t in TASKS) + " |")
    if failures:
        print("failed runs:", *failures, sep="\n  ", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
