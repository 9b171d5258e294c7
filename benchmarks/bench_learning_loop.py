"""Benchmark: does the learning loop make the system better with use? A simulated warehouse, night by night.

Usage: python benchmarks/bench_learning_loop.py [--nights 10] [--per-night 1000] [--change-from 2] [--seed 0]
                                                [--limit 20000] [--workdir DIR] [--keep]

The warehouse: every night ``--per-night`` returned items (Fashion-MNIST *training* items, each night new ones,
so no photo of a test item is ever labelled) photographed by the renderer (data_processing.photos). From night
``--change-from`` on, a new photo station takes every photo: its camera is mounted a quarter turn round and writes
no EXIF orientation, so the items arrive turned 90 degrees. Training's photo augmentation covers rotations of up
to +-10 degrees only (model_training.network.photo_augment), so today's champion has never seen this.

Each night, with the real commands: the night's photos go to ``incoming/<date>/``; the nightly job scores them
(``batch_prediction.batch_predict``, that night's folder); simulated reviewers answer from the true labels, but only
for what the system sends them (``needs_review.csv`` and ``audit.csv``), through the labels store's CSV import;
then the retrain policy runs (``model_training.retrain_policy``; its retraining is ``train --finetune`` on a
``--limit`` subset of the clean training split plus the warehouse labels). It prints per night the accuracy on
that night's photos (true labels), the review share, the wrong-and-confident share, the expected and measured
accuracy (with the true accuracy of the auto-routed items the interval should cover), the labels given, and the
retrain decision; and per model version its clean test accuracy, photo benchmark and warehouse test accuracy.

Everything happens in ``--workdir`` (default a new folder under /tmp): a copy of the configured store's processed
splits and of the MLflow store (SQLite only) with its champion, so the configured ones are never touched. Starts
from the configured champion.

Exit codes: 0 done; 1 a step failed (its output is printed); 2 bad arguments or no champion/processed data.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from common.hardware import describe as describe_cpu
from common.labels import CLASS_NAMES
from common.settings import PROJECT_ROOT, Settings

BASE_DATE = np.datetime64("2027-01-01")


def render(args: tuple[np.ndarray, tuple[int, ...], bool]) -> bytes:
    """One warehouse photo (worker process): the renderer's photo, turned a quarter without EXIF if ``turned``."""
    from PIL import Image, ImageOps

    from data_processing.photos import render_photo

    image, seed, turned = args
    photo = render_photo(image, seed)
    if not turned:
        return photo.data
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(photo.data)))  # the scene as a person sees it ...
    img = img.convert("RGB").transpose(Image.Transpose.ROTATE_90)  # ... taken by a camera mounted a quarter round
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=photo.params.quality)  # and no EXIF orientation to undo it
    return buf.getvalue()


class Workspace:
    """The benchmark's own store and MLflow store, and the environment its commands run with."""

    def __init__(self, root: Path, source: Settings) -> None:
        self.root = root
        self.store = root / "store"
        self.env = {
            **os.environ,
            "DATA_DIR": str(root / "data"),
            "STORAGE_URI": str(self.store),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        }
        self.env.pop("MODEL_URI", None)
        src_db = source.mlflow_tracking_uri.removeprefix("sqlite:///")
        if not source.mlflow_tracking_uri.startswith("sqlite:///") or not Path(src_db).is_file():
            raise SystemExit(f"the benchmark copies a SQLite MLflow store; got {source.mlflow_tracking_uri}")
        shutil.copyfile(src_db, root / "mlflow.db")
        for name in ("train", "val", "test"):
            src = Path(source.storage_uri) / "processed" / f"{name}.npz"
            (self.store / "processed").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, self.store / "processed" / f"{name}.npz")
        cache = Path(source.data_dir) / "cache"
        if cache.is_dir():  # the photo benchmark's renders: training reads them instead of rendering again
            shutil.copytree(cache, root / "data" / "cache", dirs_exist_ok=True)
        self.settings = Settings.from_env(self.env)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, *cmd], env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True)
        if check and proc.returncode not in (0, 10):
            print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
            raise SystemExit(f"step failed ({proc.returncode}): {' '.join(cmd)}")
        return proc


def night_photos(ws: Workspace, items, night: int, turned: bool, pool, seed: int) -> dict[str, int]:
    """Render and drop the night's photos into incoming/<date>/; returns the true class of each key."""
    images, labels = items
    date = str(BASE_DATE + night)
    jobs = [(images[i], (seed, night, int(i)), turned) for i in range(len(labels))]
    truth = {}
    for n, data in enumerate(pool.map(render, jobs, chunksize=25)):
        key = f"incoming/{date}/ret-{night:02d}-{n:05d}.jpg"
        path = ws.store / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        truth[key] = int(labels[n])
    return truth


def night_outcome(ws: Workspace, truth: dict[str, int]) -> dict:
    """Score the night's records against the truth; answer the review queue and the audit sample from it."""
    import pyarrow.parquet as pq

    from common.storage import open_storage
    from monitoring.label_store import ItemChecker, LabelStore, import_csv
    from monitoring.nights import AUDIT, NEEDS_REVIEW, list_nights, read_rows, read_summary

    storage = open_storage(str(ws.store))
    night = list_nights(storage)[-1]
    summary = read_summary(storage, night)
    rows = [r for p in sorted((ws.store / night.prefix / "parquet").glob("part-*.parquet"))
            for r in pq.read_table(p).to_pylist() if r["status"] == "scored"]  # fmt: skip
    right = np.array([CLASS_NAMES.index(r["class_name"]) == truth[r["key"]] for r in rows])
    review = np.array([bool(r["needs_review"]) for r in rows])
    given = 0
    for name in (NEEDS_REVIEW, AUDIT):  # the people: true answers, only for what they were sent
        sent = read_rows(storage, night, name)
        lines = ["key,sha256,class_name,label"] + [
            f"{r['key']},{r['sha256']},{r['class_name']},{CLASS_NAMES[truth[r['key']]]}" for r in sent
        ]
        store = LabelStore(storage)
        result = import_csv(store, "\n".join(lines).encode(), who="sim-reviewer", checker=ItemChecker(storage))
        given += result.accepted
    return {
        "night": night,
        "summary": summary,
        "accuracy": float(right.mean()),
        "review_share": float(review.mean()),
        "wrong_confident": float(np.mean(~right & ~review)),
        "auto_true": float(right[~review].mean()) if (~review).any() else float("nan"),
        "labels": given,
    }


def measured(ws: Workspace, run_id: str):
    from common.storage import open_storage
    from monitoring.label_store import LabelStore
    from monitoring.performance import RegistryFigures, StatusPolicy, performance_table

    storage = open_storage(str(ws.store))
    rows = performance_table(
        storage, LabelStore(storage).current(), RegistryFigures(ws.settings.mlflow_tracking_uri,
                                                                ws.settings.model_name), StatusPolicy()
    )  # fmt: skip
    return next(r for r in rows if r.run_id == run_id)


def versions(ws: Workspace) -> list[dict]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ws.settings.mlflow_tracking_uri)
    out = []
    for mv in client.search_model_versions(f"name='{ws.settings.model_name}'"):
        m = client.get_run(mv.run_id).data.metrics
        out.append(
            {
                "version": int(mv.version),
                "test": m.get("test_accuracy"),
                "photo": m.get("photo_test_accuracy"),
                "warehouse": m.get("warehouse_test_accuracy"),
                "champion_wh": m.get("warehouse_test_accuracy_champion"),
                "aliases": sorted(client.get_model_version(mv.name, mv.version).aliases),
            }
        )
    return sorted(out, key=lambda r: r["version"])


def pct(x: float | None) -> str:
    return "    -" if x is None or x != x else f"{100 * x:5.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nights", type=int, default=10, help="nights 0..N-1 (default 10)")
    p.add_argument("--per-night", type=int, default=1000, help="photos a night (default 1000)")
    p.add_argument("--change-from", type=int, default=2, help="first night of the new photo station (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the items and their photos")
    p.add_argument("--limit", type=int, default=20000, help="clean training items a fine-tuning sees (default 20000)")
    p.add_argument("--workdir", type=Path, help="where to work (default: a new folder under /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the working folder")
    args = p.parse_args(argv)
    source = Settings.from_env()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-learning-loop-"))
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root, source)
    from common.storage import open_storage
    from data_processing.dataset import load_split

    train = load_split(open_storage(str(ws.store)), "train")
    order = np.random.default_rng(args.seed).permutation(len(train))
    print(f"CPU: {describe_cpu()} (shared with other work); workdir {root}", flush=True)
    print(f"warehouse change from night {args.change_from}: camera turned a quarter, no EXIF orientation (training "
          "augments rotations of +-10 degrees only)")  # fmt: skip
    header = (
        f"{'night':>5} {'change':>6} {'ver':>3} {'acc':>5} {'review':>6} {'wrong+conf':>10} {'exp_all':>7} "
        f"{'exp_auto':>8} {'auto_true':>9} {'measured [95% CI]':>20} {'covers':>6} {'labels':>6}  decision"
    )
    lines = [header]
    with ProcessPoolExecutor(2) as pool:
        for night in range(args.nights):
            t0 = time.perf_counter()
            idx = order[night * args.per_night : (night + 1) * args.per_night]
            turned = night >= args.change_from
            truth = night_photos(ws, (train.images[idx], train.labels[idx]), night, turned, pool, args.seed)
            date = str(BASE_DATE + night)
            ws.run("-m", "batch_prediction.batch_predict", "--date", date, "--input-prefix", f"incoming/{date}/",
                   "--workers", "2")  # fmt: skip
            out = night_outcome(ws, truth)
            perf = measured(ws, out["night"].run_id)
            policy = ws.run("-m", "model_training.retrain_policy", "--", "--limit", str(args.limit))
            decision = next((ln for ln in policy.stdout.splitlines() if ln.startswith("retrain policy")), "?")
            done = next((ln for ln in policy.stdout.splitlines() if ln.startswith("DONE")), "")
            covers = perf.measured_low is not None and perf.measured_low <= out["auto_true"] <= perf.measured_high
            ci = "-"
            if perf.measured_low is not None:
                low, high = pct(perf.measured_low).strip(), pct(perf.measured_high).strip()
                ci = f"{pct(perf.measured_auto)} [{low}-{high}]"
            line = (f"{night:>5} {'yes' if turned else 'no':>6} {perf.model_version:>3} {pct(out['accuracy'])} "
                    f"{pct(out['review_share']):>6} {pct(out['wrong_confident']):>10} {pct(perf.expected_all):>7} "
                    f"{pct(perf.expected_auto):>8} {pct(out['auto_true']):>9} {ci:>20} {covers!s:>6} "
                    f"{out['labels']:>6}  {decision.split(': ', 1)[-1][:90]}")  # fmt: skip
            lines.append(line)
            print(line, flush=True)
            if done:
                print(f"      {done[:200]}", flush=True)
            print(f"      ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n".join(lines))
    print(
        f"\n{'version':>7} {'clean test':>10} {'photo bench':>11} {'warehouse test':>14} {'champion then':>13}  aliases"
    )
    for v in versions(ws):
        print(f"{v['version']:>7} {pct(v['test']):>10} {pct(v['photo']):>11} {pct(v['warehouse']):>14} "
              f"{pct(v['champion_wh']):>13}  {','.join(v['aliases'])}")  # fmt: skip
    if not args.keep and args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
