"""The `mtrec` command line: every help and help example, overrides anywhere, user errors as one
line with exit status 2 (config, override, --out, a DataLoader worker's data error), Ctrl-C as one
line with 130, --print-config, the console logging, the progress line and the Makefile targets."""
from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from models.typed_config import from_dict
from pipeline.cli import build_parser, main, parse_args
from pipeline.cli.options import help_examples
from pipeline.config import JobConfig, apply_overrides, load_job_config, train_job_config
from pipeline.components import evaluate as evaluate_component
from pipeline.components import train as train_component
from pipeline.train.run_log import ProgressBar
from tests.conftest import REPO, VENV_BIN, job_env
from tests.data.conftest import write_tiny_dataset

CENSUS_CONFIG = "configs/census_adatt.yaml"
# A tiny job on the tiny dataset of tests/data (tasks click, conv, value): seconds per run.
TINY_JOB = """\
model:
  backbone: {type: mmoe, num_experts: 2, expert_out_dims: [[8]]}
  tower_mlp: [4]
train: {batch_size: 8, epochs: 1, validation_max_batches: 1, log_every_steps: 5}
data: {num_workers: 1}
eval: {batch_size: 16}
"""


def _parsers(parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()):
    """(command path, parser) for the top level and every (nested) sub-command, found by walking
    the argparse tree: a sub-command someone adds is covered without touching this file."""
    parser = parser or build_parser()
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


COMMANDS = [path for path, _ in _parsers()]


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _python(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env or job_env(), capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------------------- help


def test_top_level_help_of_the_console_script():
    proc = subprocess.run([str(VENV_BIN / "mtrec"), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "COMMAND" in proc.stdout and "examples:" in proc.stdout



def test_the_stack_check_that_ends_the_set_up_prints_one_line_and_no_warning():
    proc = subprocess.run([sys.executable, "-m", "pipeline.stack"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("stack ok: ") and proc.stdout.count("\n") == 1
    assert proc.stderr == ""

def test_the_walk_finds_every_command():
    assert {("train",), ("prepare", "census"), ("prepare", "synthetic"), ("evaluate",), ("compare",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "mtrec")
def test_help_of_every_command(path, capsys):
    code, out, err = _run_main([*path, "--help"], capsys)
    assert code == 0, err
    assert out.startswith("usage: mtrec") and not err


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "mtrec")
def test_every_option_and_command_has_a_help_text(path):
    parser = dict(_parsers())[path]
    for action in parser._actions:
        what = f"{parser.prog}: {action.option_strings or action.dest}"
        assert action.help and action.help != argparse.SUPPRESS, what
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help, f"{parser.prog} {choice.dest}"


EXAMPLES = [(path, example) for path, parser in _parsers() for example in help_examples(parser)]


def test_the_help_examples_cover_training_with_an_override():
    assert any("train" in e and "=" in e.split("--out")[-1] for _, e in EXAMPLES)
    assert len({path for path, _ in EXAMPLES}) >= 4


@pytest.mark.parametrize("path, example", EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_every_help_example_parses_and_its_config_validates(path, example, monkeypatch):
    monkeypatch.chdir(REPO)  # examples are written for the repository root
    tokens = shlex.split(example)
    assert tokens[0] == "mtrec"
    args = parse_args(tokens[1:])
    assert args.func is not None
    if args.command == "train":  # the example's config and overrides are real keys
        train_job_config(args.config, args.overrides, max_steps=args.max_steps, epochs=args.epochs, seed=args.seed)
    elif getattr(args, "config", None):
        load_job_config(args.config, args.overrides)
    elif getattr(args, "overrides", None):  # on the config stored with the checkpoint: keys must exist
        from_dict(JobConfig, apply_overrides({}, args.overrides))


# ----------------------------------------------------------------------------- overrides and config errors


def test_overrides_are_taken_from_anywhere_on_the_line():
    args = parse_args(["train", "train.seed=3", "--config", "c.yaml", "model.tower_mlp=[8]", "--data", "d",
                       "--out", "/tmp/mtrec-cli-test", "--epochs", "2", "eval.batch_size=64"])
    assert args.overrides == ["train.seed=3", "model.tower_mlp=[8]", "eval.batch_size=64"]
    assert (args.config, args.data, args.epochs) == ("c.yaml", "d", 2)


def test_a_stray_token_or_an_override_of_a_command_without_config_is_unrecognized(capsys):
    for argv in (["train", "--config", "c.yaml", "--data", "d", "--out", "/tmp/mtrec-cli-test", "stray"],
                 ["compare", "a", "b", "train.seed=1"]):
        code, _, err = _run_main(argv, capsys)
        assert code == 2 and "unrecognized arguments" in err, err


def _print_config(capsys, config: str, *extra: str) -> tuple[int, str, str]:
    return _run_main(["train", "--config", config, "--data", "unused", "--out", "/tmp/mtrec-cli-test",
                      "--print-config", *extra], capsys)


def test_a_bad_override_is_named_not_the_file(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, _, err = _print_config(capsys, CENSUS_CONFIG, "train.lr=0.002")
    assert code == 2
    assert err.startswith("mtrec train: error: override 'train.lr=0.002': train: unknown key(s) ['lr']"), err
    assert err.count("\n") == 1 and CENSUS_CONFIG not in err


def test_a_yaml_tag_in_an_override_is_a_clean_error(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, _, err = _print_config(capsys, CENSUS_CONFIG, "train.epochs=!!python/object/apply:os.system [ls]")
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1
    assert "override 'train.epochs=!!python/object/apply:os.system [ls]': not valid YAML" in err
    assert "could not determine a constructor for the tag" in err


def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path, capsys):
    config = tmp_path / "dup.yaml"
    config.write_text("train:\n  epochs: 2\ndata:\n  num_workers: 0\ntrain:\n  epochs: 3\n")
    code, _, err = _print_config(capsys, str(config))
    assert code == 2
    assert err.strip() == f"mtrec train: error: {config}: duplicate key 'train' at line 5 (first at line 1)"


def test_print_config_prints_the_resolved_config_without_importing_torch(tmp_path):
    out = tmp_path / "run"
    env = {**job_env(), "MTREC_MAX_STEPS": "4"}
    code = ("import sys; from pipeline.cli import main; main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = _python("-c", code, "train", "train.epochs=3", "--config", CENSUS_CONFIG, "--data", "unused",
                   "--out", str(out), "--print-config", "train.validation_max_batches=5", env=env)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    expected = train_job_config(CENSUS_CONFIG, ["train.epochs=3", "train.validation_max_batches=5"],
                                env={"MTREC_MAX_STEPS": "4"})
    assert printed["train"]["epochs"] == 3 and printed["train"]["max_steps"] == 4 == expected.train.max_steps
    assert printed["train"]["validation_max_batches"] == 5  # MTREC_MAX_STEPS leaves evaluation alone
    assert printed["model"]["backbone"]["type"] == "adatt_sp" and printed["train"]["dense_optimizer"]["lr"] == 0.001
    assert not out.exists()


def test_max_steps_env_only_lowers_the_budget(monkeypatch):
    monkeypatch.chdir(REPO)
    assert train_job_config(CENSUS_CONFIG, max_steps=3, env={"MTREC_MAX_STEPS": "10"}).train.max_steps == 3
    assert train_job_config(CENSUS_CONFIG, max_steps=30, env={"MTREC_MAX_STEPS": "10"}).train.max_steps == 10
    assert train_job_config(CENSUS_CONFIG, env={}).train.max_steps is None
    with pytest.raises(ValueError, match="MTREC_MAX_STEPS='0': expected a positive integer"):
        train_job_config(CENSUS_CONFIG, env={"MTREC_MAX_STEPS": "0"})


# ----------------------------------------------------------------------------- --out


OUT_COMMANDS = [path for path, parser in _parsers() if any("--out" in a.option_strings for a in parser._actions)]


def test_every_command_that_writes_has_an_out_option():
    assert {("train",), ("evaluate",), ("prepare", "census"), ("metrics",)} <= set(OUT_COMMANDS)


@pytest.mark.parametrize("path", OUT_COMMANDS, ids=" ".join)
def test_an_unwritable_out_fails_while_parsing(path, capsys):
    # /proc refuses new entries even to root, for whom a chmod-ed directory stays writable
    code, _, err = _run_main([*path, "--out", "/proc/mtrec-test/out"], capsys)
    assert code == 2 and "argument --out: /proc/mtrec-test/out: /proc is not writable" in err, err


@pytest.mark.parametrize("path", [p for p in OUT_COMMANDS if p != ("init-config",)], ids=" ".join)
def test_an_out_that_is_a_file_fails_while_parsing(path, tmp_path, capsys):
    file = tmp_path / "a_file"
    file.write_text("")
    code, _, err = _run_main([*path, "--out", str(file)], capsys)
    assert code == 2 and f"argument --out: {file}: exists and is not a directory" in err, err


# ----------------------------------------------------------------------------- errors and Ctrl-C in real runs


def _tiny_job(tmp_path: Path, mutate=None) -> tuple[Path, Path]:
    data = write_tiny_dataset(tmp_path / "data", mutate)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_JOB)
    return config, data


def test_a_data_error_found_in_a_dataloader_worker_is_one_line(tmp_path):
    def nan_in_d0(split, i, table):
        if (split, i) != ("train", 0):
            return table
        values = table["d0"].to_pylist()
        values[3] = float("nan")
        return table.set_column(table.schema.get_field_index("d0"), "d0", pa.array(values, pa.float32()))

    config, data = _tiny_job(tmp_path, nan_in_d0)
    proc = _python("-m", "pipeline", "train", "--config", str(config), "--data", str(data),
                   "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Original" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mtrec train: error:")]
    assert len(errors) == 1 and "part-00000.parquet" in errors[0] and "column 'd0'" in errors[0], proc.stderr
    assert proc.stderr.rstrip().endswith(errors[0])


@pytest.mark.slow
def test_ctrl_c_says_where_the_run_stands_and_exits_130(tmp_path):
    config, data = _tiny_job(tmp_path)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipeline", "train", "--config", str(config), "--data", str(data),
           "--out", str(run), "train.epochs=100000", "train.checkpoint_every_steps=3"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(run.glob("checkpoints/step_*/COMPLETE")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.rstrip().splitlines()[-1]
    match = re.fullmatch(r"mtrec train: interrupted at step (\d+); the last complete checkpoint is step (\d+); "
                         r"rerun the same command to resume", last)
    assert match, last
    step, checkpoint = map(int, match.groups())
    newest = sorted(run.glob("checkpoints/step_*/COMPLETE"))[-1].parent
    assert checkpoint == json.loads((newest / "meta.json").read_text())["step"] and 3 <= checkpoint <= step


# ----------------------------------------------------------------------------- console output


def test_console_shows_own_info_on_rank_0_warnings_everywhere_and_no_known_benign_noise():
    script = """if True:
        import logging, sys, warnings
        from pipeline.cli.logs import BENIGN_LOG_RECORDS, BENIGN_WARNINGS, setup_logging
        setup_logging(False, int(sys.argv[1]))
        logging.getLogger("pipeline.train").info("own info")
        logging.getLogger("pipeline.train").debug("own debug")
        logging.getLogger("torchrec.planner").info("library info")
        logging.getLogger("torchrec.planner").warning("library warning")
        silenced = {"torch.fx._symbolic_trace": "is_fx_tracing will return true for both fx.symbolic_trace and "
                    "torch.export. Please use is_fx_tracing_symbolic_tracing() for specifically fx.symbolic_trace "
                    "or torch.compiler.is_compiling() for specifically torch.export/compile.",
                    "root": "Sharding spec not found for sparse_arch.ebc.t_sex",
                    "torchrec.distributed.utils": "Sharding Type is data_parallel, caching params will be ignored"}
        assert sorted(silenced) == sorted(name for name, _ in BENIGN_LOG_RECORDS)
        for name, message in silenced.items():
            logging.getLogger(name).warning(message)
        logging.warning("Sharding spec not found for something else")  # not a table of ours: shown
        for message in BENIGN_WARNINGS:
            warnings.warn(message + " (and the rest of it)", FutureWarning)
        warnings.warn("an unknown warning", UserWarning)
    """
    rank0, rank1 = (_python("-c", script, rank).stderr for rank in ("0", "1"))
    assert "own info" in rank0 and "own info" not in rank1
    for err in (rank0, rank1):
        assert "library warning" in err and "an unknown warning" in err
        assert "own debug" not in err and "library info" not in err
        assert "is_fx_tracing" not in err and "broadcast_buffers" not in err and "ShardedTensor" not in err
        assert "t_sex" not in err and "caching params" not in err and "autograd kernel" not in err
        assert "something else" in err


def test_progress_is_a_log_line_per_tenth_when_not_on_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger="pipeline.train.run_log")
    bar = ProgressBar(100, initial=10, min_s=0)
    for _ in range(85):
        bar.update()
    bar.set_postfix(loss="0.5000")
    bar.close()  # at step 95: one more line for the last steps
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(",")[0] for line in lines] == [f"train: step {n}/100 ({n}%)" for n in (*range(20, 91, 10), 95)]
    assert lines[-1].startswith("train: step 95/100 (95%), loss 0.5000")
    caplog.clear()
    longer = ProgressBar(100, min_s=3600)
    longer.set_total(106)  # a later epoch turned out longer: the final line counts against the new total
    for _ in range(106):
        longer.update()
    longer.close()
    assert caplog.records[-1].getMessage().startswith("train: step 106/106 (100%)")
    caplog.clear()
    quiet = ProgressBar(100, min_s=3600)  # a tenth in less than min_s: only the final line
    for _ in range(100):
        quiet.update()
    quiet.close()
    assert len(caplog.records) == 1


def test_torchx_components_set_omp_num_threads():
    env = train_component(config="c.yaml", data="d", out="o", j="1x2", cpu=4).roles[0].env
    assert env["OMP_NUM_THREADS"] == "2"
    assert train_component(config="c.yaml", data="d", out="o", env={"OMP_NUM_THREADS": "3"}).roles[0].env[
        "OMP_NUM_THREADS"] == "3"


def _component_argv(app) -> list[str]:
    """The `mtrec` arguments a TorchX AppDef runs: what follows `-m pipeline` in its torchrun line."""
    words = shlex.split(app.roles[0].args[-1])
    return words[words.index("-m") + 2:]


def test_torchx_components_pass_what_the_cli_accepts():
    """Each component option reaches `mtrec` as the flag of the same meaning, and the CLI parses it."""
    train_args = parse_args(_component_argv(train_component(
        config="c.yaml", data="d", out="/tmp/mtrec-cli-test", max_steps=5, init_from="runs/a", no_resume=True,
        accept_config_changes=True, overrides=["train.seed=1"])))
    assert (train_args.init_from, train_args.no_resume, train_args.accept_config_changes, train_args.max_steps,
            train_args.overrides) == ("runs/a", True, True, 5, ["train.seed=1"])
    plain = parse_args(_component_argv(train_component(config="c.yaml", data="d", out="/tmp/mtrec-cli-test")))
    assert (plain.init_from, plain.no_resume, plain.accept_config_changes) == (None, False, False)
    eval_args = parse_args(_component_argv(evaluate_component(
        checkpoint="runs/a", data="d/test", out="/tmp/mtrec-cli-test", different_encoding=True,
        write_predictions=True, overrides=["model.dml.gkd.serve_head=local"])))
    assert (eval_args.different_encoding, eval_args.write_predictions, eval_args.overrides) == (
        True, True, ["model.dml.gkd.serve_head=local"])


def test_every_declared_make_target_exists():
    phony = [t for line in (REPO / "Makefile").read_text().splitlines() if line.startswith(".PHONY:")
             for t in line.split(":", 1)[1].split()]
    assert {"setup", "run", "test"} <= set(phony)
    for target in phony:
        proc = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"make {target}: {proc.stderr}"
