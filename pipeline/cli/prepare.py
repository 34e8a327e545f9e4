"""`mtrec prepare`: write a Parquet dataset (census, synthetic)."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="write a Parquet dataset (schema.yaml + train/valid/test)")
    kinds = p.add_subparsers(dest="dataset", required=True)
    c = kinds.add_parser("census", help="UCI Census-Income (KDD), shipped in data/census-income-kdd")
    c.add_argument("--out", required=True, help="output dataset directory")
    c.add_argument("--raw", default=None, help="directory with census-income.{data,test}.gz (default: shipped copy)")
    c.add_argument("--edu-def", default="associates_plus",
                   choices=["associates_plus", "bachelors_plus", "mmoeex_as_coded"])
    c.add_argument("--seed", type=int, default=0, help="seed of the validation/test split of the test file")
    c.add_argument("--row-group-rows", type=int, default=4096,
                   help="rows per row group: many small units keep ranks balanced (census: 49 units)")
    c.add_argument("--preprocess", default="mtrec", choices=["mtrec", "mmoeex", "mmoeex_aligned"],
                   help="features: mtrec's, or MMoEEx-MTL's one-hot preparation as run (test features shifted, "
                        "docs/RESULTS.md) / with the shift fixed")
    c.add_argument("--onehot-dim", type=int, default=128, help="embedding dim of the mmoeex one-hot feature")
    c.add_argument("--overwrite", action="store_true", help="replace an existing dataset made differently")
    s = kinds.add_parser("synthetic", help="MMoE-style generator with controllable task correlation")
    s.add_argument("--out", required=True)
    s.add_argument("--rows", type=int, required=True)
    s.add_argument("--tasks", type=int, default=2)
    s.add_argument("--correlation", type=float, default=0.5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dense-dim", type=int, default=512)
    s.add_argument("--sparse-features", type=int, default=4, help="Zipf id features (0 = dense only)")
    s.add_argument("--vocab", type=int, default=1_000_000, help="id vocabulary per sparse feature")
    s.add_argument("--regression", action="store_true", help="also add a regression task (raw y_1)")
    s.add_argument("--valid-fraction", type=float, default=0.1)
    s.add_argument("--test-fraction", type=float, default=0.1)
    s.add_argument("--row-group-rows", type=int, default=65536)
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset made differently")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.dataset == "census":
        from pipeline.data.census import prepare_census

        summary = prepare_census(out=args.out, raw_dir=args.raw, edu_def=args.edu_def, seed=args.seed,
                                 row_group_rows=args.row_group_rows, overwrite=args.overwrite,
                                 preprocess=args.preprocess, onehot_dim=args.onehot_dim)
    else:
        from pipeline.data.synthetic import SyntheticSpec, prepare_synthetic

        spec = SyntheticSpec(rows=args.rows, tasks=args.tasks, correlation=args.correlation, seed=args.seed,
                             dense_dim=args.dense_dim, sparse_features=args.sparse_features, vocab=args.vocab,
                             regression=args.regression, valid_fraction=args.valid_fraction,
                             test_fraction=args.test_fraction, row_group_rows=args.row_group_rows)
        summary = prepare_synthetic(spec, out=args.out, overwrite=args.overwrite)
    print(summary)
