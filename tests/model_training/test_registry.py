"""The registry policy: challenger alias, the champion gate, promotion history, rollback and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.settings import MODEL_NAME
from model_training.promotion import parse_history, rollback_target, should_promote


def test_gate_promotes_only_when_not_worse_or_forced() -> None:
    assert should_promote(0.95, None)[0]
    assert should_promote(0.95, float("nan"))[0]
    assert should_promote(0.95, 0.95)[0]  # ties promote: the newer model wins
    assert not should_promote(0.94, 0.95)[0]
    ok, reason = should_promote(0.10, 0.95, force=True)
    assert ok and "forced" in reason


def test_rollback_target_skips_current_and_deleted_versions() -> None:
    assert rollback_target(["1", "3", "4"], "4", {"1", "3", "4"}) == ("3", ["1", "3"])
    assert rollback_target(["1", "3", "4"], "4", {"1", "4"}) == ("1", ["1"])  # 3 was deleted
    assert rollback_target(["1"], "1", {"1"}) is None
    assert rollback_target([], None, set()) is None
    assert parse_history("not json") == [] and parse_history('["2", 3]') == ["2", "3"]


@pytest.fixture
def model_uri(settings) -> str:
    from tests.support.training import log_tiny_model

    return log_tiny_model(settings.mlflow_tracking_uri)


def _register(model_uri: str, uri: str, acc: float, force: bool = False, tags: dict | None = None):
    from model_training.promotion import Challenger, register_and_gate

    challenger = Challenger(model_uri, "r", acc, macro_f1=acc - 0.01, tags=tags or {})
    return register_and_gate(challenger, MODEL_NAME, force=force, tracking_uri=uri)


def _champion(uri: str) -> str:
    from mlflow import MlflowClient

    return str(MlflowClient(tracking_uri=uri).get_model_version_by_alias(MODEL_NAME, "champion").version)


def test_worse_challenger_does_not_move_champion_and_rollback_restores(model_uri: str, settings) -> None:
    from mlflow import MlflowClient

    from model_training.promotion import RegistryError, rollback

    uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri)

    d1 = _register(model_uri, uri, 0.90)
    assert (d1.version, d1.promoted, d1.aliases) == ("1", True, ["challenger", "champion"])

    d2 = _register(model_uri, uri, 0.85)
    assert not d2.promoted and d2.aliases == ["challenger"] and d2.previous_champion == "1"
    assert _champion(uri) == "1"
    assert client.get_model_version(MODEL_NAME, "1").aliases == ["champion"]  # challenger moved on to 2

    d3 = _register(model_uri, uri, 0.92)
    assert d3.promoted and _champion(uri) == "3"

    assert rollback(client, MODEL_NAME) == ("3", "1")
    assert _champion(uri) == "1"
    with pytest.raises(RegistryError):
        rollback(client, MODEL_NAME)  # 1 was the first champion: nothing earlier
    assert _champion(uri) == "1"

    d4 = _register(model_uri, uri, 0.50, force=True)
    assert d4.promoted and _champion(uri) == "4"
    assert rollback(client, MODEL_NAME) == ("4", "1")


def test_champion_set_outside_the_tool_is_restorable(model_uri: str, settings) -> None:
    import mlflow
    from mlflow import MlflowClient

    from model_training.promotion import rollback

    uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=uri)
    # As the UI or another tool would: register and alias directly, no history tag, no accuracy tag.
    mlflow.set_tracking_uri(uri)
    outside = str(mlflow.register_model(model_uri, MODEL_NAME).version)
    client.set_registered_model_alias(MODEL_NAME, "champion", outside)
    d = _register(model_uri, uri, 0.5)  # unknown champion accuracy never blocks a measured challenger
    assert d.promoted and d.previous_champion == outside and _champion(uri) == d.version
    assert rollback(client, MODEL_NAME) == (d.version, outside)
    assert _champion(uri) == outside


def test_cli_list_promote_rollback(model_uri: str, settings, capsys: pytest.CaptureFixture[str]) -> None:
    from model_training.registry import main

    uri = settings.mlflow_tracking_uri
    assert main(["list"]) == 1  # nothing registered yet: the model named is not there
    assert "no model named 'refund-item-classifier' is registered" in capsys.readouterr().err
    assert main(["champion"]) == 4  # make demo trains only in this case
    assert "no champion" in capsys.readouterr().out

    _register(model_uri, uri, 0.91)
    _register(model_uri, uri, 0.80, tags={"epochs": "5/44", "budget_cut": "true"})
    assert main(["champion"]) == 0
    assert "champion is version 1 (test_accuracy 0.91" in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["version", "aliases", "test_acc", "macro_f1", "epochs"]
    assert out[1].split()[:6] == ["2", "challenger", "0.8000", "0.7900", "5/44", "cut"]  # the budget cut it
    assert out[2].split()[:5] == ["1", "champion", "0.9100", "0.9000", "-"]  # registered without the tag
    assert out[-1].endswith("1")

    assert main(["promote", "2"]) == 0
    assert "champion 1 -> 2" in capsys.readouterr().out and _champion(uri) == "2"
    assert main(["rollback"]) == 0
    assert "rolled back 2 -> 1" in capsys.readouterr().out and _champion(uri) == "1"
    assert main(["rollback"]) == 1
    capsys.readouterr()
    assert main(["promote", "99"]) == 1
    assert "version 99 of 'refund-item-classifier' does not exist; its versions: 2, 1" in capsys.readouterr().err
    assert _champion(uri) == "1"

    # The other mistakes get the documented exit codes too.
    with pytest.raises(SystemExit) as exc:
        main(["promote", "abc"])  # the docstring's 2 (bad arguments); it was 1
    assert exc.value.code == 2 and "promote" in capsys.readouterr().err
    assert main(["--model-name", "nosuch", "list"]) == 1  # was 0, with "no versions"
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ric registry: error: no model named 'nosuch' is registered at {settings.mlflow_tracking_uri}; "
        "registered models: refund-item-classifier"
    )


def test_cli_against_a_stopped_tracking_server_fails_fast_with_one_line() -> None:
    from tests.support.processes import free_port

    # Nothing listens there. MLflow's default retries kept this command going for minutes; the timeout is only
    # the test's safety net, the assertions are the exit code and the one line.
    uri = f"http://ops:s3cr3t@127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "-m", "model_training.registry", "--tracking-uri", uri, "list"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),  # the test's isolated environment
        check=False,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("ric registry: error: the MLflow tracking server at http://"), lines
    assert "unreachable" in lines[0] and "MLFLOW_TRACKING_URI" in lines[0] and "s3cr3t" not in proc.stderr


def test_cli_usage_error() -> None:
    from model_training.registry import main

    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2


def test_gate_also_requires_the_photo_benchmark_not_to_fall() -> None:
    assert should_promote(0.95, 0.94, new_photo=0.93, champion_photo=0.92)[0]
    ok, reason = should_promote(0.95, 0.94, new_photo=0.90, champion_photo=0.92)
    assert not ok and "photo" in reason
    assert not should_promote(0.95, 0.94, new_photo=None, champion_photo=0.92)[0]  # nothing to compare
    assert should_promote(0.95, 0.94, new_photo=0.50, champion_photo=None)[0]  # an older champion: accuracy only
    assert not should_promote(0.93, 0.94, new_photo=0.99, champion_photo=0.92)[0]  # test accuracy still gates
    assert should_promote(0.10, 0.94, force=True, new_photo=0.1, champion_photo=0.9)[0]


def test_photo_gate_compares_only_the_same_photo_set(model_uri: str, settings) -> None:
    from model_training.promotion import Challenger, register_and_gate

    uri = settings.mlflow_tracking_uri

    def reg(acc: float, photo: float, bench: str):
        challenger = Challenger(model_uri, "r", acc, photo_accuracy=photo, photo_benchmark=bench)
        return register_and_gate(challenger, MODEL_NAME, tracking_uri=uri)

    assert reg(0.90, 0.85, "renderer1-test-seed1-n2000").promoted
    worse_photos = reg(0.91, 0.80, "renderer1-test-seed1-n2000")
    assert not worse_photos.promoted and "photo" in worse_photos.reason and _champion(uri) == "1"
    other_set = reg(0.91, 0.80, "renderer2-test-seed1-n2000")  # not comparable: test accuracy decides
    assert other_set.promoted and _champion(uri) == "3"
