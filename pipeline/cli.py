"""The `mtrec` command line (also `python -m pipeline`, which is what torchrun and TorchX run).

Each sub-command parses its arguments here and hands them to one function in the module that owns
the work; heavy imports happen only inside the chosen command.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings


def _prepare(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> None:
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


def _train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (any world size under torchrun; plain process = 1)")
    p.add_argument("--config", required=True, help="job YAML (configs/*.yaml)")
    p.add_argument("--data", required=True, help="dataset directory written by `mtrec prepare`")
    p.add_argument("--out", required=True, help="run directory: checkpoints, plan, logs, resolved config")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest complete checkpoint (automatic when --out has one)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if --out has checkpoints")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.lr=0.002")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from pipeline.eval.report import render_markdown
    from pipeline.train.trainer import train_main

    summary = train_main(args)
    if summary is not None:  # rank 0
        print(f"trained {summary['steps']} steps on {summary['world_size']} rank(s)"
              f"{' (stopped early)' if summary['stopped_early'] else ''}; validation:")
        print(render_markdown(summary["validation"]))


def _evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="stream a Parquet log through a trained model and report metrics")
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="run directory or one checkpoint directory")
    p.add_argument("--data", required=True, help="Parquet glob or a dataset split directory")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--write-predictions", action="store_true")
    p.add_argument("--auc-mode", choices=["bounded", "exact"], default="bounded")
    p.add_argument("--segment-by", default=None, help="column for a per-segment breakdown")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from pipeline.eval.evaluate import evaluate_main
    from pipeline.eval.report import render_markdown

    report = evaluate_main(args)
    if report is not None:  # rank 0
        print(render_markdown(report))


def _metrics(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("metrics", help="metrics over existing prediction logs (<task>_label, <task>_pred)")
    p.add_argument("--predictions", required=True, help="Parquet glob")
    p.add_argument("--tasks", required=True, help="comma-separated task names")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--auc-mode", choices=["bounded", "exact"], default="bounded")
    p.add_argument("--regression-tasks", default="", help="comma-separated tasks that are regression")
    p.add_argument("--weight-column", default="weight")
    p.add_argument("--segment-by", default=None)
    p.add_argument("--user-column", default=None, help="enables GAUC (log grouped by this column)")
    p.add_argument("--baseline-rates", default=None, help="task=rate,... training positive rates for NE")
    p.add_argument("--batch-rows", type=int, default=1 << 20)
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=_run_metrics)


def _run_metrics(args: argparse.Namespace) -> None:
    from pipeline.eval.metrics_job import metrics_main

    metrics_main(args)


def _compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="per-task deltas of report B against report A (NE diff in %)")
    p.add_argument("report_a")
    p.add_argument("report_b")
    p.set_defaults(func=_run_compare)


def _run_compare(args: argparse.Namespace) -> None:
    from pipeline.eval.report import compare_reports

    print(compare_reports(args.report_a, args.report_b))


def _diagnose(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="average gate / fusion weights per level over a split, with heatmaps")
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", required=True, help="run directory or one checkpoint directory")
    p.add_argument("--data", required=True, help="Parquet glob or a dataset split directory")
    p.add_argument("--out", required=True, help="output directory: gates.json, gates_level<l>.png")
    p.add_argument("--max-batches", type=int, default=None, help="cap the batches per rank (default: all)")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_run_diagnose)


def _run_diagnose(args: argparse.Namespace) -> None:
    from pipeline.eval.diagnose import diagnose_main

    report = diagnose_main(args)
    if report is not None:  # rank 0
        print(f"gate weights of {report['backbone']} over {report['rows']} rows ({len(report['levels'])} "
              f"level(s)) written to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtrec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_prepare, _train, _evaluate, _metrics, _compare, _diagnose):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format=f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # Our own progress at INFO; torch/TorchRec/fbgemm only from WARNING (fbgemm logs every table
        # batch's arguments on the root logger at INFO). Their per-rank warnings about their own
        # internals (ShardedTensor deprecation, DDP on sharded modules, ...) are hidden too: -v shows all.
        for name in ("pipeline", "models"):
            logging.getLogger(name).setLevel(logging.INFO)
        for category in (UserWarning, FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, no traceback wall
        logging.getLogger("mtrec").debug("failed", exc_info=True)
        print(f"mtrec {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
