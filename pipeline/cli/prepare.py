"""`mtrec prepare`: write a Parquet dataset (census, synthetic, or any table through a spec)."""
from __future__ import annotations

import argparse

from pipeline.cli.options import examples_epilog, output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="write a Parquet dataset (schema.yaml + train/valid/test)")
    kinds = p.add_subparsers(dest="dataset", required=True, metavar="DATASET",
                             help="`mtrec prepare DATASET --help` for its options")
    c = kinds.add_parser("census", help="UCI Census-Income (KDD), shipped in data/census-income-kdd",
                         epilog=examples_epilog("mtrec prepare census --out runs/data/census"),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--out", required=True, type=output_dir, help="output dataset directory")
    c.add_argument("--raw", default=None, help="directory with census-income.{data,test}.gz (default: shipped copy)")
    c.add_argument("--edu-def", default="associates_plus",
                   choices=["associates_plus", "bachelors_plus", "mmoeex_as_coded"],
                   help="which education levels make the positive label of the education task (docs/DATA.md)")
    c.add_argument("--seed", type=int, default=0, help="seed of the validation/test split of the test file")
    c.add_argument("--row-group-rows", type=int, default=4096,
                   help="rows per row group: many small units keep ranks balanced (census: 49 units)")
    c.add_argument("--preprocess", default="log1p_zscore", choices=["log1p_zscore", "mtrec", "mmoeex", "mmoeex_aligned"],
                   help="features: continuous log1p (money columns) + z-score, or min-max (mtrec, the default "
                        "before docs/RESULTS.md's ablation), or MMoEEx-MTL's one-hot preparation as run (test "
                        "features shifted, docs/RESULTS.md) / with the shift fixed")
    c.add_argument("--onehot-dim", type=int, default=128, help="embedding dim of the mmoeex one-hot feature")
    c.add_argument("--overwrite", action="store_true", help="replace an existing dataset made differently")
    s = kinds.add_parser("synthetic", help="MMoE-style generator with controllable task correlation",
                         epilog=examples_epilog("mtrec prepare synthetic --out runs/data/synthetic --rows 100000 "
                                                "--correlation 0.9"),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--out", required=True, type=output_dir, help="output dataset directory")
    s.add_argument("--rows", type=int, required=True, help="rows in all (split into train/valid/test)")
    s.add_argument("--preset", choices=["criteo-like"], default=None,
                   help="criteo-like: 13 counters, 26 Zipf id features (tables up to 10M rows), 3 id lists, tasks "
                        "click / conversion / dwell with a known oracle (docs/BENCHMARKS.md \"Scale\"); uses --rows, --seed, "
                        "--sample, --embedding-dim, --max-table-rows only")
    s.add_argument("--embedding-dim", type=int, default=16, help="criteo-like: dim of every table")
    s.add_argument("--sample", type=int, default=0,
                   help="criteo-like: another draw of rows from the model of --seed (e.g. a scoring log; same oracle)")
    s.add_argument("--max-table-rows", type=int, default=10_000_000,
                   help="criteo-like: table rows = min(raw cardinality, this)")
    s.add_argument("--tasks", type=int, default=2, help="number of binary tasks")
    s.add_argument("--correlation", type=float, default=0.5,
                   help="cosine similarity of the tasks' generating weight vectors (the MMoE paper's knob)")
    s.add_argument("--seed", type=int, default=0, help="generator seed")
    s.add_argument("--dense-dim", type=int, default=512, help="width of the dense feature vector")
    s.add_argument("--sparse-features", type=int, default=4, help="Zipf id features (0 = dense only)")
    s.add_argument("--vocab", type=int, default=1_000_000, help="id vocabulary per sparse feature")
    s.add_argument("--regression", action="store_true", help="also add a regression task (raw y_1)")
    s.add_argument("--valid-fraction", type=float, default=0.1, help="share of the rows in the valid split")
    s.add_argument("--test-fraction", type=float, default=0.1, help="share of the rows in the test split")
    s.add_argument("--row-group-rows", type=int, default=65536,
                   help="rows per Parquet row group (the unit of work dealt to ranks and workers)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing dataset made differently")
    t = kinds.add_parser("table", help="CSV/TSV/Parquet/JSON-lines logs described by a spec (docs/DATA.md)",
                         epilog=examples_epilog("mtrec prepare table --spec examples/adult/spec.yaml "
                                                "--out runs/data/adult"),
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--spec", required=True, help="import spec YAML (docs/DATA.md, Bring your own data)")
    t.add_argument("--input", nargs="+", default=None, metavar="[SPLIT=]PATH_OR_GLOB",
                   help="input files replacing the spec's (relative to the working directory)")
    t.add_argument("--out", required=True, type=output_dir, help="output dataset directory")
    t.add_argument("--reuse-stats", default=None, metavar="DATASET",
                   help="apply the fitted statistics of this earlier import instead of fitting new ones")
    t.add_argument("--overwrite", action="store_true", help="replace an existing dataset made differently")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.dataset == "census":
        from pipeline.data.census import prepare_census

        summary = prepare_census(out=args.out, raw_dir=args.raw, edu_def=args.edu_def, seed=args.seed,
                                 row_group_rows=args.row_group_rows, overwrite=args.overwrite,
                                 preprocess=args.preprocess, onehot_dim=args.onehot_dim)
    elif args.dataset == "table":
        from pipeline.data.table.importer import prepare_table

        summary = prepare_table(args.spec, args.out, inputs=args.input, overwrite=args.overwrite,
                                reuse_stats=args.reuse_stats)
    elif args.preset == "criteo-like":
        from pipeline.data.criteo_like import CriteoLikeSpec, prepare_criteo_like

        spec = CriteoLikeSpec(rows=args.rows, seed=args.seed, sample=args.sample, embedding_dim=args.embedding_dim,
                              max_table_rows=args.max_table_rows)
        summary = prepare_criteo_like(spec, out=args.out, overwrite=args.overwrite)
    else:
        from pipeline.data.synthetic import SyntheticSpec, prepare_synthetic

        spec = SyntheticSpec(rows=args.rows, tasks=args.tasks, correlation=args.correlation, seed=args.seed,
                             dense_dim=args.dense_dim, sparse_features=args.sparse_features, vocab=args.vocab,
                             regression=args.regression, valid_fraction=args.valid_fraction,
                             test_fraction=args.test_fraction, row_group_rows=args.row_group_rows)
        summary = prepare_synthetic(spec, out=args.out, overwrite=args.overwrite)
    print(summary)
