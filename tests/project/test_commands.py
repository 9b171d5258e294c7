"""One command group (issue 29): ``ric <command>`` runs each stage script's own parser and ``main``, and every
command's ``--help`` shows each flag's default, the environment variable behind it, and the exit codes; ``make help``
lists a target per stage and the MLflow UI."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from common.settings import PROJECT_ROOT, Settings
from ric.cli import COMMANDS, main

# Flags that override a setting, and its variable (a command's own knobs: serve's and train's).
VARIABLES = {
    "--storage-uri": "STORAGE_URI",
    "--tracking-uri": "MLFLOW_TRACKING_URI",
    "--endpoint-url": "AWS_ENDPOINT_URL",
    "--data-dir": "DATA_DIR",
    "--model-uri": "MODEL_URI",
    "--model-name": "MODEL_NAME",
    "--review-threshold": "REVIEW_THRESHOLD",
    "--source-dir": "FASHION_MNIST_DIR",
    "--input-prefix": "BATCH_INPUT_PREFIX",
}
OWN = {
    "serve": {"--host": "SERVING_HOST", "--port": "SERVING_PORT", "--workers": "SERVING_WORKERS",
              "--poll-seconds": "MODEL_POLL_SECONDS", "--runtime": "SERVING_RUNTIME"},
    "train": {"--epochs": "TRAIN_EPOCHS", "--batch-size": "TRAIN_BATCH_SIZE", "--seed": "TRAIN_SEED",
              "--learning-rate": "TRAIN_LEARNING_RATE", "--arch": "TRAIN_ARCH", "--tta": "TRAIN_TTA",
              "--precision": "TRAIN_PRECISION", "--ema-decay": "TRAIN_EMA_DECAY",
              "--time-budget": "TRAIN_TIME_BUDGET", "--experiment": "MLFLOW_EXPERIMENT_NAME"},
}  # fmt: skip


def _flag_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser.formatter_class(prog=parser.prog)._expand_help(action)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_commands_help_shows_its_defaults_variables_and_exit_codes(name: str, monkeypatch) -> None:
    module = importlib.import_module(COMMANDS[name])
    parser = module.build_parser(Settings.from_env())
    text = parser.format_help()
    assert parser.prog == f"ric {name}" and text.startswith(f"usage: ric {name}")
    assert "Exit codes" in text and "2 " in text.split("Exit codes", 1)[1]  # every command documents its usage error
    # It wraps to the terminal (train.py's was pre-wrapped at ~118 columns), its paragraphs and exit codes kept.
    monkeypatch.setenv("COLUMNS", "80")
    narrow = parser.format_help()
    assert max(map(len, narrow.splitlines())) <= 80, f"ric {name} --help is wider than an 80-column terminal"
    codes = narrow.split("Exit codes", 1)[1]
    assert " ".join(codes.split()) == " ".join(text.split("Exit codes", 1)[1].split())  # re-wrapped, not cut
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[-1]
        shown = _flag_help(parser, action)
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert str(action.default) in shown, f"ric {name} {flag}: default {action.default!r} hidden: {shown!r}"
        variable = {**VARIABLES, **OWN.get(name, {})}.get(flag)
        if variable is not None:
            assert f"${variable}" in shown, f"ric {name} {flag}: no ${variable} in {shown!r}"


def test_ric_lists_the_commands_and_runs_each_scripts_own_main(capsys, monkeypatch) -> None:
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(f"\n  {name} " in listing for name in COMMANDS)
    assert main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["settings", "--no-such-flag"]) == 2  # the script's own parser decides
    assert main(["registry", "champion"]) == 4  # its main ran: no champion in this test's store
    assert "no champion" in capsys.readouterr().out


def test_the_console_script_and_the_stage_scripts_run_the_same_parser(tmp_path: Path) -> None:
    ric = Path(sys.executable).parent / "ric"
    runs = {
        "console script": [str(ric), "ingest", "--help"],
        "module": [sys.executable, "-m", "ric", "ingest", "--help"],
        "stage script": [sys.executable, "data_ingestion/ingest.py", "--help"],
    }
    helps = {
        how: subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
        for how, cmd in runs.items()
    }
    assert len(set(helps.values())) == 1, helps
    assert "--workers" in helps["console script"]


def test_make_help_lists_a_target_per_stage_and_the_ui() -> None:
    out = subprocess.run(["make", "-s", "help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60).stdout
    targets = {
        line.split()[0] for line in out.replace("\x1b[36m", "").replace("\x1b[0m", "").splitlines() if line[:2] == "  "
    }
    stages = {"acquire", "ingest", "process", "render-photos", "train", "registry", "serve", "simulate-night", "batch"}
    assert stages | {"ui", "settings", "demo", "test"} <= targets
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    for target in stages | {"ui", "settings"}:
        assert f"$(RIC) {target}" in makefile, target  # each runs its ric command


def test_ric_ui_runs_mlflow_ui_on_the_local_store_or_names_the_server(monkeypatch, capsys) -> None:
    from ric import ui

    cmd = ui.ui_command("sqlite:////srv/ric/mlflow.db", "127.0.0.1", 5000)
    assert cmd[1:4] == ["-m", "mlflow", "ui"] and "sqlite:////srv/ric/mlflow.db" in cmd
    assert cmd[cmd.index("--default-artifact-root") + 1] == "file:///srv/ric/mlartifacts"  # where the stages log
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://ops:hunter2@mlflow.internal:5000")
    assert ui.main([]) == 0
    out = capsys.readouterr().out
    assert "http://mlflow.internal:5000" in out and "hunter2" not in out
