"""Remaking the photo path's item finder: ``ric fit-segmenter`` writes a weights module the path can load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from data_processing import segmenter
from tests.support.training import write_tiny_splits


def _load(path: Path):
    spec = importlib.util.spec_from_file_location("written_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_segmenter_writes_a_weights_module_of_the_networks_shape(tmp_path: Path, capsys) -> None:
    from model_training.fit_segmenter import main

    store = tmp_path / "store"
    write_tiny_splits(store)
    out = tmp_path / "weights.py"
    args = ["--real-per-class", "1", "--plain-per-class", "1", "--epochs", "1", "--workers", "1",
            "--storage-uri", str(store), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert f"wrote {out}: 20 photos" in capsys.readouterr().out
    written = _load(out)
    shapes = [(np.shape(w), np.shape(b)) for w, b in written.LAYERS]
    k, hidden = segmenter.n_features(), 16
    assert shapes == [((k, hidden), (hidden,)), ((hidden, hidden), (hidden,)), ((hidden, 1), (1,))]
    assert all(np.isfinite(np.asarray(w)).all() for w, _ in written.LAYERS)
    assert "python model_training/fit_segmenter.py --real-per-class 1 --plain-per-class 1" in written.__doc__
    assert not out.with_name(out.name + ".tmp").exists()


@pytest.mark.parametrize(
    ("args", "code"),
    [(["--real-per-class", "0", "--plain-per-class", "0"], 2), (["--storage-uri", "{tmp}/no-store"], 3)],
)
def test_fit_segmenter_refuses_nothing_to_fit_and_a_missing_store(tmp_path: Path, args, code) -> None:
    from model_training.fit_segmenter import main

    out = tmp_path / "weights.py"
    assert main([*(a.replace("{tmp}", str(tmp_path)) for a in args), "--out", str(out)]) == code
    assert not out.exists()
