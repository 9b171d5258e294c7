"""The README's commands are the contract with a new user: every one must name a real script, module, make
target or API route, and every flag it uses must exist in that command's ``--help``."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache

import pytest

from common.settings import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
LINES = [
    line.split(" #")[0].strip()
    for block in BLOCKS
    for raw in block.replace("\\\n", " ").splitlines()
    if (line := raw.strip()) and not line.startswith("#")
]


def _commands() -> list[list[str]]:
    out = []
    for line in LINES:
        for part in re.split(r"\s*&&\s*", line):
            words = shlex.split(part)
            while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
                words = words[1:]
            if words and words[0] == "export":
                continue
            if words:
                out.append(words)
    return out


COMMANDS = _commands()


@cache
def _help(target: tuple[str, ...]) -> str:
    proc = subprocess.run(
        [sys.executable, *target, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{' '.join(target)} --help failed: {proc.stderr[-2000:]}"
    return proc.stdout


def _python_target(words: list[str]) -> tuple[tuple[str, ...], list[str]]:
    args = words[1:]
    if args[0] == "-m":
        return (args[0], args[1]), args[2:]
    return (args[0],), args[1:]


SUBCOMMAND_MODULES = {"mlflow", "model_training.registry", "monitoring.labels"}
PYTHON_COMMANDS = [w for w in COMMANDS if w[0] in ("python", ".venv/bin/python")] + [
    ["python", "-m", *w]
    for w in COMMANDS
    if w[0] == "mlflow"  # the mlflow CLI is the mlflow module
]


def test_readme_has_the_two_quickstart_commands_and_ci_runs_the_test_one():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quickstart and "make test" in quickstart
    assert "make test" in (PROJECT_ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("words", PYTHON_COMMANDS, ids=lambda w: " ".join(w)[:80])
def test_python_commands_exist_and_their_flags_are_real(words):
    target, args = _python_target(words)
    if target[0] != "-m":
        assert (PROJECT_ROOT / target[0]).is_file(), f"{target[0]} does not exist"
    if target[-1] in SUBCOMMAND_MODULES and args and not args[0].startswith("-"):
        target, args = (*target, args[0]), args[1:]  # a subcommand has its own --help
    text = _help(target)
    for flag in (a.split("=")[0] for a in args if a.startswith("--")):
        assert flag in text, f"{' '.join(words)}: {flag} is not in {' '.join(target)} --help"


def test_make_targets_exist():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    targets = {w[1] for w in COMMANDS if w[0] == "make"} | set(re.findall(r"`make ([a-z-]+)`", README))
    assert targets >= {"demo", "test"}
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"make {target}: no such target"


def test_curl_lines_hit_real_routes():
    from model_serving.factory import create_app

    # No model-watcher thread: it would outlive the test and log "model check failed" at interpreter exit.
    rules = {r.rule for r in create_app(predictor=None, background=False).url_map.iter_rules()}
    urls = [w for words in COMMANDS if words[0] == "curl" for w in words if w.startswith("http://127.0.0.1:5001")]
    assert len(urls) >= 7
    for url in urls:
        path = "/" + url.split("5001", 1)[1].lstrip("/").split("?")[0]
        assert path in rules, f"{url}: no route {path}"
