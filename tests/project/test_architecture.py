"""architecture.png is generated from docs/architecture.dot and must be re-rendered and committed whenever the
source changes. The PNG carries the source's SHA-256 in a tEXt chunk, so this check needs no Graphviz."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.settings import PROJECT_ROOT

SOURCE = PROJECT_ROOT / "docs" / "architecture.dot"
PNG = PROJECT_ROOT / "architecture.png"


def _renderer():
    spec = importlib.util.spec_from_file_location(
        "render_architecture", PROJECT_ROOT / "docs" / "render_architecture.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_png_was_rendered_from_the_current_source() -> None:
    expected = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    with Image.open(PNG) as image:
        stamped = image.text.get("source-sha256")
        width, height = image.size
    assert stamped == expected, "architecture.png is stale: run `make architecture` and commit architecture.png"
    assert width >= 1200 and height >= 700  # readable, not a thumbnail


def test_check_mode_flags_a_stale_or_unstamped_png(tmp_path: Path) -> None:
    render = _renderer()
    source = tmp_path / "a.dot"
    source.write_text("digraph { a -> b }\n")
    png = tmp_path / "a.png"
    buf = io.BytesIO()
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    Image.fromarray(pixels).save(buf, format="PNG")

    png.write_bytes(buf.getvalue())  # never stamped
    assert render.embedded_sha256(png) is None
    assert render.main(["--source", str(source), "--output", str(png), "--check"]) == 1

    png.write_bytes(render.stamp_png(buf.getvalue(), sha256=render.source_sha256(source), source_name="a.dot"))
    assert render.main(["--source", str(source), "--output", str(png), "--check"]) == 0
    with Image.open(png) as image:  # stamping re-encodes without touching the picture
        assert np.array_equal(np.asarray(image), pixels)

    source.write_text("digraph { a -> b -> c }\n")  # the source changed, the picture did not
    assert render.main(["--source", str(source), "--output", str(png), "--check"]) == 1


def test_source_shows_the_real_components() -> None:
    text = SOURCE.read_text(encoding="utf-8")
    for prefix in ("raw/", "processed/", "incoming/", "predictions/&lt;date&gt;/&lt;run-id&gt;/", "ledger/"):
        assert prefix in text, prefix
    for endpoint in ("POST /predict", "/health", "/metrics", "/drift-status", "GET  /  "):
        assert endpoint in text, endpoint
    for script in (
        "data_ingestion/acquire.py",
        "data_ingestion/ingest.py",
        "data_processing/process.py",
        "model_training/train.py",
        "model_serving/app.py",
        "batch_prediction/batch_predict.py",
    ):
        assert script in text, script
    for concept in ("@champion", "@challenger", "MLFLOW_TRACKING_URI", "STORAGE_URI", "AWS_ENDPOINT_URL", "Ray"):
        assert concept in text, concept
    assert re.search(r"reference", text)


def test_source_lists_every_route_of_the_api() -> None:
    """The diagram's endpoint table stays true to the real app factory's routes."""
    from model_serving.factory import create_app

    def resolver():
        raise ConnectionError("no registry in this test")

    app = create_app(background=False, resolver=resolver, loader=lambda info: None)
    text = SOURCE.read_text(encoding="utf-8")
    rules = {r.rule for r in app.url_map.iter_rules() if not r.rule.startswith(("/static", "/dashboard/static"))}
    rules.discard("/favicon.ico")
    assert {"/", "/predict", "/health", "/metrics", "/drift-status"} <= rules
    missing = [rule for rule in sorted(rules) if not re.search(rf">[A-Z]+ +{re.escape(rule)} *<", text)]
    assert missing == [], f"docs/architecture.dot does not show {missing}"


@pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz `dot` not installed (only `make architecture` needs it)"
)
def test_source_is_valid_graphviz() -> None:
    result = subprocess.run(["dot", "-Tsvg", str(SOURCE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert "<svg" in result.stdout


def test_the_layout_page_is_current_and_names_every_module() -> None:
    spec = importlib.util.spec_from_file_location("render_layout", PROJECT_ROOT / "docs" / "render_layout.py")
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    assert layout.main(["--check"]) == 0, "docs/layout.md is stale: run `python docs/render_layout.py`"
    text = (PROJECT_ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    for package in layout.LEVELS:
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            if path.name != "__init__.py":
                assert f" {path.relative_to(PROJECT_ROOT / package).as_posix()} " in text, path
    assert "(no docstring)" not in text and "\n  $ train.py " in text
