"""Progress bars: the long stages (acquire, ingest, process, the nightly batch) draw one on a terminal, items done
out of the total with the rate, and nothing at all when stderr is not a terminal (cron, pipes, tests); log lines
written while a bar is drawn stay whole and keep their handler's filters."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from batch_prediction.engines.local import LocalEngine
from batch_prediction.night import NightOptions, run_night
from batch_prediction.reading import StoreAddress
from common.logging import RedactingFilter
from common.progress import progress_bar
from common.settings import Settings
from common.storage import LocalStorage
from data_ingestion import acquire, ingest
from data_processing import process
from inference.classifier import Classifier, Thresholds
from tests.support.batch import seed_incoming
from tests.support.fakes import FakePredictor
from tests.support.terminal import stderr_on_a_terminal

# (bar, items) of the stages below: 2 images per class and split, and a night of 12 photos.
BARS = (("acquire", 40), ("ingest", 40), ("process: decode", 40), ("process: local copy", 40), ("batch", 12))


def _run_the_stages(fmnist_dir: Path, tmp_path: Path, settings: Settings) -> None:
    assert acquire.main(["--source-dir", str(fmnist_dir), "--limit-per-class", "2"]) == 0
    assert ingest.main([]) == 0
    assert process.main([]) == 0
    storage = LocalStorage(tmp_path / "data" / "store")
    seed_incoming(storage, 12)
    predictor = FakePredictor()

    def make_engine(_model):
        classifier = Classifier(predictor, Thresholds.of(predictor.info))
        return LocalEngine(storage, classifier, address=StoreAddress(storage.uri), workers=0)

    options = NightOptions(batch_size=5)  # night_env's MLflow store: already migrated, so the night ends quickly
    run_night(settings, options, storage=storage, model=predictor.info, make_engine=make_engine)


def test_the_long_stages_draw_a_bar_on_a_terminal(fmnist_dir: Path, tmp_path: Path, night_env) -> None:
    with stderr_on_a_terminal() as terminal:
        _run_the_stages(fmnist_dir, tmp_path, night_env[0])
    for name, n in BARS:
        bar = rf"{re.escape(name)}: 100%\|[^\r\n]*\| {n}/{n} \[[^\r\n]*img/s\]"
        assert re.search(bar, terminal.text), f"no finished {name!r} bar in:\n{terminal.text[-3000:]}"


def test_no_bar_when_stderr_is_not_a_terminal(fmnist_dir: Path, tmp_path: Path, night_env, capsys) -> None:
    _run_the_stages(fmnist_dir, tmp_path, night_env[0])
    err = capsys.readouterr().err
    assert "%|" not in err and "img/s]" not in err, err[-3000:]


def test_log_lines_are_written_above_the_bar_through_their_own_handler() -> None:
    log = logging.getLogger("tests.progress")
    with stderr_on_a_terminal() as terminal:
        handler = logging.StreamHandler(sys.stderr)  # the terminal, as setup_logging's handler is
        handler.addFilter(RedactingFilter())
        logging.getLogger().addHandler(handler)
        try:
            with progress_bar(4, "demo") as bar:
                bar.update(1)
                log.warning("halfway, see https://ops:hunter2@example.com/status")
                bar.update(3)
        finally:
            logging.getLogger().removeHandler(handler)
    segments = re.split(r"[\r\n]+", terminal.text)
    [line] = [s for s in segments if "halfway" in s]
    assert "%|" not in line, f"the log line landed inside the bar: {line!r}"
    assert "hunter2" not in terminal.text  # the handler's filter still masked the credentials
    assert re.search(r"demo: 100%\|[^\r\n]*\| 4/4 ", terminal.text), terminal.text
