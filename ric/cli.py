"""One command for the whole product: ``ric <command> [flags]`` runs a stage script, the same as running the script.

Usage: ric COMMAND [--help | flags ...]       (also: python -m ric ...)
       ric --help                             (the commands, each with its first sentence)

Each command is a stage script's own ``main(argv)``: its parser is the one source of its flags, so ``ric ingest
--workers 4`` and ``python data_ingestion/ingest.py --workers 4`` are the same run, and ``ric <command> --help``
shows every flag with its default, the environment variable behind it and the command's exit codes. A command's
module is imported only when it runs (``ric --help`` loads no stage).

Exit codes: those of the command that ran; 2 no command or an unknown one.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from pathlib import Path

# Command -> the module whose main(argv) it runs, in the order of the product's day.
COMMANDS = {
    "acquire": "data_ingestion.acquire",
    "ingest": "data_ingestion.ingest",
    "process": "data_processing.process",
    "render-photos": "model_training.render_photos",
    "fit-segmenter": "model_training.fit_segmenter",
    "train": "model_training.train",
    "registry": "model_training.registry",
    "export": "inference.export",
    "serve": "model_serving.server",
    "simulate-night": "batch_prediction.simulate_night",
    "batch": "batch_prediction.batch_predict",
    "labels": "monitoring.labels",
    "performance": "monitoring.performance",
    "retrain-policy": "model_training.retrain_policy",
    "drift-eval": "monitoring.evaluate_drift",
    "settings": "common.list_settings",
    "ui": "ric.ui",
}


def summary(module: str) -> str:
    """The first sentence of ``module``'s docstring, read from its source (nothing is imported)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    cut = first.find(". ")
    return first if cut < 0 else first[: cut + 1]


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: ric COMMAND [--help | flags ...]",
        "",
        "The Refund Item Classifier: every stage and operation as one command (ric COMMAND --help for its flags, their",
        "defaults and environment variables, and its exit codes).",
        "",
        "commands:",
        *(f"  {name:<{width}}  {summary(module)}" for name, module in COMMANDS.items()),
        "",
        "Exit codes: those of the command that ran; 2 no command or an unknown one.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"ric: error: unknown command {name!r} (one of: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name])
    try:
        return int(module.main(rest) or 0)
    except SystemExit as exc:  # a script's argparse exits (0 for --help, 2 for a usage error)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


if __name__ == "__main__":
    raise SystemExit(main())
