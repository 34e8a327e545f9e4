"""Cheap checks of the result benchmarks' shared machinery (no training: the scripts themselves
are exercised by running them, see docs/RESULTS.md)."""
from __future__ import annotations

import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def runs():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("_runs")
    finally:
        sys.path.remove(str(BENCHMARKS))


def report(auc: float, ne: float | None) -> dict:
    return {"income": {"auc": auc, "ne": ne}}


def test_aggregate_mean_sample_std_and_skips_nulls(runs):
    agg = runs.aggregate([report(0.90, 0.5), report(0.92, None), report(0.94, 0.7)])
    mean, std, n = agg["income"]["auc"]
    assert (round(mean, 12), round(std, 12), n) == (0.92, 0.02, 3)
    assert agg["income"]["ne"][2] == 2  # the null NE is skipped, not counted as 0


def test_run_spec_directories_and_dml_overrides(runs, tmp_path):
    base = runs.RunSpec("m", Path("c.yaml"), False, 3)
    dml = runs.RunSpec("m", Path("c.yaml"), True, 3, ("a=1",))
    assert base.run_dir(tmp_path) != dml.run_dir(tmp_path) and base.key != dml.key
    assert not set(runs.DML_OVERRIDES) & set(base.all_overrides())
    assert set(runs.DML_OVERRIDES) <= set(dml.all_overrides()) and "a=1" in dml.all_overrides()


def test_best_checkpoint_prefers_the_kept_best_step(runs, tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"best_step": 20}))
    assert runs.best_checkpoint(tmp_path) == tmp_path  # not kept: the run's newest checkpoint
    best = tmp_path / "checkpoints" / "step_00000020"
    best.mkdir(parents=True)
    (best / "COMPLETE").write_text("")
    assert runs.best_checkpoint(tmp_path) == best


def test_validation_at_takes_the_last_line_of_the_step(runs, tmp_path):
    lines = [{"kind": "valid", "step": 10, "tasks": {"t": {"auc": 0.1}}},
             {"kind": "train", "step": 10, "loss": 1.0},
             {"kind": "valid", "step": 10, "tasks": {"t": {"auc": 0.2}}},  # a resumed run logs it again
             {"kind": "valid", "step": 20, "tasks": {"t": {"auc": 0.3}}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert runs.validation_at(tmp_path, 10)["tasks"]["t"]["auc"] == 0.2
    assert runs.validation_at(tmp_path, None)["tasks"]["t"]["auc"] == 0.3
    with pytest.raises(ValueError, match="no validation at step 15"):
        runs.validation_at(tmp_path, 15)


def test_ledger_round_trip_and_budget_match(runs, tmp_path):
    path = tmp_path / "out" / "runs.jsonl"
    spec, budget = runs.RunSpec("m", Path("c.yaml"), True, 1), runs.Budget(epochs=4)
    ledger = runs.Ledger(path)
    assert ledger.get(spec, budget) is None
    ledger.add({"key": spec.key, "budget": dataclasses.asdict(budget), "test": report(0.9, 0.5)})
    again = runs.Ledger(path)  # what a later session reads from the committed file
    assert again.get(spec, budget)["test"] == report(0.9, 0.5)
    assert again.get(spec, runs.Budget(epochs=8)) is None  # finished under another budget: not done
    assert not list(path.parent.glob("*.tmp*"))  # rewritten atomically
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(ValueError, match="runs.jsonl:2"):
        runs.Ledger(path)


def test_finished_runs_are_not_retrained(runs, tmp_path):
    spec, budget = runs.RunSpec("m", Path("missing.yaml"), False, 0), runs.Budget()
    ledger = runs.Ledger(tmp_path / "runs.jsonl")
    ledger.add({"key": spec.key, "budget": dataclasses.asdict(budget), "test": report(0.9, 0.5)})
    assert runs.run_all([(spec, tmp_path / "no-data")], tmp_path, budget, ledger, jobs=2) == []
    assert not spec.run_dir(tmp_path).exists()


def test_a_failing_run_is_reported_and_names_its_log(runs, tmp_path):
    spec, budget = runs.RunSpec("m", tmp_path / "missing.yaml", False, 0), runs.Budget(max_steps=1)
    ledger = runs.Ledger(tmp_path / "runs.jsonl")
    failures = runs.run_all([(spec, tmp_path / "no-data")], tmp_path, budget, ledger, jobs=1)
    assert len(failures) == 1 and failures[0].startswith("m|base|0: mtrec train") and "seed_0.log" in failures[0]
    assert ledger.get(spec, budget) is None and "missing.yaml" in (spec.run_dir(tmp_path).parent / "seed_0.log").read_text()


def test_sweep_task_mean_averages_only_the_tasks_that_have_the_metric(runs):
    sweep = importlib.import_module("correlation_sweep")
    report = {"t1": {"auc": 0.8, "mse": None}, "t2": {"auc": 0.6}, "t1_value": {"mse": 2.0}}
    assert sweep.task_mean(report, "auc") == pytest.approx(0.7)
    assert sweep.task_mean(report, "mse") == 2.0
    assert sweep.task_mean(report, "logloss") is None


def test_validation_curve_is_in_step_order_and_keeps_the_later_line(runs, tmp_path):
    lines = [{"kind": "valid", "step": 20, "tasks": {"t": {"auc": 0.3, "auc_mode": "bounded"}}},
             {"kind": "train", "step": 20, "loss": 1.0},
             {"kind": "valid", "step": 10, "tasks": {"t": {"auc": 0.1}}},
             {"kind": "valid", "step": 10, "tasks": {"t": {"auc": 0.2}}}]  # a resumed run logs it again
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert runs.validation_curve(tmp_path) == [{"step": 10, "tasks": {"t": {"auc": 0.2}}},
                                               {"step": 20, "tasks": {"t": {"auc": 0.3}}}]


def _curve(*epochs: tuple[float, float, float]) -> list[dict]:
    """(income, never_married, education) AUC per epoch -> a ledger valid_curve."""
    return [{"step": 10 * (i + 1), "tasks": {t: {"auc": a} for t, a in zip(("income", "never_married", "education"), e)}}
            for i, e in enumerate(epochs)]


def test_ablation_rules_replay_early_stopping(runs):
    ablation = importlib.import_module("census_ablation")
    curve = _curve((0.90, 0.99, 0.88), (0.92, 0.99, 0.87), (0.94, 0.99, 0.86), (0.97, 0.99, 0.85))
    by_education = ablation.Rule("edu", 10, "education")
    epochs, chosen = ablation.select(curve, by_education)
    assert epochs == 3 and chosen["education"]["auc"] == 0.88  # 2 validations without improvement: stop
    epochs, chosen = ablation.select(curve, ablation.Rule("mean", 4, "mean"))
    assert epochs == 4 and chosen["income"]["auc"] == 0.97  # the mean still improves at the end
    assert ablation.select(curve, ablation.Rule("mean, 2 epochs", 2, "mean"))[1]["income"]["auc"] == 0.92
    assert ablation.select(curve, ablation.Rule("last", 3, None)) == (3, curve[2]["tasks"])
    assert ablation.select(curve, ablation.Rule("mean, 5 epochs", 5, "mean")) is None  # the run ended before


def test_ablation_refuses_a_row_redefined_after_its_runs(runs, tmp_path):
    ablation = importlib.import_module("census_ablation")
    ledger, budget = runs.Ledger(tmp_path / "runs.jsonl"), runs.Budget()
    spec = ablation.specs_of("emb_adam", 1)[0]
    ledger.add({"key": spec.key, "budget": dataclasses.asdict(budget), "overrides": list(spec.overrides)})
    ablation.check_definitions(ledger, ["emb_adam"], 3, budget)  # the same definition: fine
    ledger.add({"key": spec.key, "budget": dataclasses.asdict(budget), "overrides": ["train.batch_size=64"]})
    with pytest.raises(SystemExit, match="emb_adam"):
        ablation.check_definitions(ledger, ["emb_adam"], 3, budget)
    ledger.add({"key": spec.key, "budget": dataclasses.asdict(budget), "overrides": list(spec.overrides),
                "config": "configs/census_adatt.yaml"})  # the shipped recipe moved on: not this row
    with pytest.raises(SystemExit, match="census_adatt.yaml"):
        ablation.check_definitions(ledger, ["emb_adam"], 3, budget)


def test_ablation_factor_rows_keep_the_recipe_they_were_measured_with(runs):
    """The factor rows' config is census_adatt.yaml with the census recipe as it was before the
    study; only the three keys the study changed differ from the shipped config."""
    import yaml

    from pipeline.config import dump_job_config, load_job_config

    ablation = importlib.import_module("census_ablation")
    assert {ablation.ROWS[name].config for name in ablation.ABLATION} == {
        "benchmarks/configs/census_adatt_before_ablation.yaml"}
    assert {ablation.ROWS[name].config for name in ablation.FINAL} == {"configs/census_adatt.yaml"}
    root = BENCHMARKS.parent
    before, shipped = (yaml.safe_load(dump_job_config(load_job_config(root / path)))
                       for path in ("benchmarks/configs/census_adatt_before_ablation.yaml", "configs/census_adatt.yaml"))
    assert before["sharding"]["default"]["sharding_types"] == ["table_wise"]
    assert (before["train"]["epochs"], before["train"]["early_stopping"]["task"]) == (8, "education")
    for changed in (before, shipped):
        del changed["sharding"]["default"]["sharding_types"], changed["train"]["epochs"]
        del changed["train"]["early_stopping"]["task"]
    assert before == shipped


@pytest.mark.parametrize("script", ["census_table.py", "correlation_sweep.py", "census_ablation.py", "dml_tuning.py"])
def test_scripts_parse_their_arguments(script):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--seeds" in proc.stdout and "--jobs" in proc.stdout, proc.stderr


def test_dml_tuning_settings_turn_parts_off_after_the_dml_switches(runs):
    tuning = importlib.import_module("dml_tuning")
    dataset = tuning.DATASETS["census"]
    gkd_only = tuning.spec_of(dataset, Path("c.yaml"), tuning.Setting("gkd", 0.1, 2.0), 0).all_overrides()
    assert gkd_only.index("model.dml.ctfm.enabled=false") > gkd_only.index("model.dml.ctfm.enabled=true")
    assert {"model.dml.gkd.mutual_weight=0.1", "model.dml.gkd.tau=2"} <= set(gkd_only)
    ctfm_only = tuning.spec_of(dataset, Path("c.yaml"), tuning.Setting("ctfm"), 0)
    assert ctfm_only.all_overrides()[-1] == "model.dml.gkd.enabled=false" and not ctfm_only.extra
    off = tuning.spec_of(dataset, Path("c.yaml"), tuning.OFF, 0)
    assert not off.dml and not set(runs.DML_OVERRIDES) & set(off.all_overrides())
    assert len(tuning.GRID) == len(set(s.name for s in tuning.GRID)) == 9  # the default is run once


def test_dml_tuning_chooses_each_knob_on_its_own_axis(runs):
    tuning = importlib.import_module("dml_tuning")
    scores = {s: (0.5, 0.0, 3) for s in tuning.GRID}
    scores[tuning.Setting("both", 0.1)] = (0.7, 0.0, 3)  # best λ at τ = 1
    scores[tuning.Setting("both", tau=4.0)] = (0.6, 0.0, 3)  # best τ at λ = 0.5
    scores[tuning.Setting("gkd")] = (0.55, 0.0, 3)  # best parts at the default
    assert tuning.choose(scores) == tuning.Setting("gkd", 0.1, 4.0)
    scores[tuning.Setting("ctfm")] = (0.9, 0.0, 3)
    assert tuning.choose(scores) == tuning.Setting("ctfm")  # CTFM alone has no λ or τ
    record = {"valid": report(0.8, None), "extra": {"valid_local": report(0.9, None), "valid_mean": report(0.85, None)}}
    assert tuning.choose_head([record], tuning.Setting("both")) == "local"
    assert tuning.choose_head([record], tuning.Setting("ctfm")) == "global"
