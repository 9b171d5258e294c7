"""Benchmark of the nightly batch job end to end on stored PNGs, with the seed-style baseline in the same run.

Usage:
    nice -n 10 .venv/bin/python benchmarks/bench_batch.py [--sizes 20000,70000] [--repeats 3] [--baseline-n 300]

For each size N, N PNGs (real Fashion-MNIST test images, cycled) are written to a fresh local store under
``incoming/``, then the real job (``python -m batch_prediction.batch_predict``, default flags) runs as its own
process: list, read, decode, preprocess, score, write Parquet + CSV parts and the ledger, finalize, MLflow.
The first size is repeated with ``--rescore`` (same work) to get a median. Reported per run:

* scoring throughput: images / seconds of the streaming loop (read -> preprocess -> predict -> write parts);
* night throughput: images / seconds from start of the night (listing) to ``_SUCCESS`` (incl. MLflow logging);
* process wall time (adds Python + TensorFlow start-up and model loading, a fixed ~5-10 s);
* peak RSS of the job process and of its loader workers (to show memory is flat in N).

Baseline (the seed's job): one HTTP POST per image, sequentially, to a seed-style server (Flask development
server + ``model.predict`` per request) on ``--baseline-n`` images from the same store, extrapolated.

Model: the real champion of ``<project>/mlflow.db`` when one is registered (its store is copied, so the
benchmark's MLflow runs do not land there), else a stand-in CNN of the usual Fashion-MNIST size
(conv32-pool-conv64-pool-dense128, ~225k parameters). Results also go to benchmarks/results/bench_batch.json.

Exit codes: 0 done (targets are reported, not enforced); 1 a run failed; 2 usage.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from _common import MODEL_NAME, SEED_SERVER, champion_version, free_port, register_stand_in

from common.settings import PROJECT_ROOT
from common.storage import LocalStorage
from data_processing.preprocessing import encode_png

TARGET_IPS, TARGET_RATIO = 5000.0, 200.0


def load_fashion_test_images() -> np.ndarray:
    folder = Path(os.environ.get("FASHION_MNIST_DIR") or PROJECT_ROOT.parent / "shared" / "data" / "fashion-mnist")
    path = folder / "t10k-images-idx3-ubyte.gz"
    if path.is_file():
        with gzip.open(path) as fh:
            data = np.frombuffer(fh.read(), dtype=np.uint8, offset=16)
        return data.reshape(-1, 28, 28)
    print(f"(no Fashion-MNIST copy at {folder}: using generated images)", flush=True)
    from tests.conftest import make_tiny_images  # pragma: no cover

    return make_tiny_images(10_000)[0]


def stand_in(tracking_uri: str) -> str:
    """Register a stand-in CNN trained briefly on real test images with random labels."""
    images = load_fashion_test_images()[:2048]
    return register_stand_in(tracking_uri, images, np.random.default_rng(0).integers(0, 10, len(images)))


def write_night(store: Path, pngs: list[bytes], n: int) -> list[str]:
    storage = LocalStorage(store)
    keys = [f"incoming/2026-11-26/ret-{i:07d}.png" for i in range(n)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: storage.put_bytes(keys[i], pngs[i % len(pngs)]), range(n)))
    return keys


def run_job(env: dict[str, str], *extra: str) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "batch_prediction.batch_predict", "--experiment", "batch-benchmark", *extra],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"batch job exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    store = Path(env["STORAGE_URI"])
    summaries = sorted(store.glob("predictions/*/*/summary.json"))
    summary = json.loads(summaries[-1].read_text())
    inv = summary["this_invocation"]
    n = inv["processed"]
    return {
        "images": n,
        "scoring_ips": inv["throughput_items_per_s"],
        "night_ips": n / inv["wall_seconds"],
        "process_wall_s": wall,
        "process_ips": n / wall,
        "peak_rss_mb": inv["peak_rss_mb"],
        "peak_rss_workers_mb": inv["peak_rss_workers_mb"],
        "cpu_seconds": inv["cpu_seconds"],
    }


def seed_baseline(work: Path, tracking_uri: str, version: str, store: Path, keys: list[str]) -> dict:
    """The seed's job: for each stored image, one sequential HTTP POST to a seed-style server."""
    port = free_port()
    script = work / "seed_server.py"
    script.write_text(SEED_SERVER)
    with open(work / "seed.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, str(script), str(port), tracking_uri, f"models:/{MODEL_NAME}/{version}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
        try:
            url = f"http://127.0.0.1:{port}/predict"
            storage = LocalStorage(store)
            first = storage.get_bytes(keys[0])
            deadline = time.monotonic() + 300
            while True:
                try:
                    if requests.post(url, files={"file": ("x.png", first)}, timeout=30).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((work / "seed.log").read_text(errors="replace")[-3000:])
                time.sleep(0.5)
            session = requests.Session()
            t0 = time.perf_counter()
            classes = []
            for key in keys:
                r = session.post(url, files={"file": (key.rsplit("/", 1)[-1], storage.get_bytes(key))}, timeout=30)
                r.raise_for_status()
                classes.append(r.json()["class_id"])
            elapsed = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {"images": len(keys), "seconds": elapsed, "ips": len(keys) / elapsed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="20000,70000", help="comma-separated night sizes (first one is repeated)")
    p.add_argument("--repeats", type=int, default=3, help="runs of the first size (median reported)")
    p.add_argument("--baseline-n", type=int, default=300, help="images for the seed-style baseline")
    p.add_argument("--workdir", help="keep everything here instead of a temporary folder")
    p.add_argument("--job-args", default="", help="extra flags for the batch job, e.g. '--workers 2'")
    args = p.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        p.error("--sizes must be integers")
    if not sizes or args.repeats < 1:
        p.error("need at least one size and one repeat")

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    main_db = PROJECT_ROOT / "mlflow.db"
    version = champion_version(f"sqlite:///{main_db}") if main_db.is_file() else None
    if version is not None:
        shutil.copyfile(main_db, work / "mlflow.db")  # artifacts stay where they are (absolute paths)
        model_desc = f"real champion {MODEL_NAME} v{version} (from {main_db})"
    else:
        version = stand_in(tracking_uri)
        model_desc = "stand-in CNN conv32-pool-conv64-pool-dense128 (no champion in mlflow.db)"
    print(f"model: {model_desc}", flush=True)
    print(f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()}", flush=True)

    pngs = [encode_png(img) for img in load_fashion_test_images()]
    extra = args.job_args.split()
    results: dict[str, object] = {"model": model_desc, "sizes": {}, "job_args": extra}
    first_store: Path | None = None
    first_keys: list[str] = []
    for i, n in enumerate(sizes):
        store = work / f"store-{n}"
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        keys = write_night(store, pngs, n)
        print(f"\nN={n}: wrote {n} PNGs in {time.perf_counter() - t0:.1f}s", flush=True)
        env = {
            **os.environ,
            "STORAGE_URI": str(store),
            "DATA_DIR": str(work / f"data-{n}"),
            "MLFLOW_TRACKING_URI": tracking_uri,
        }
        env.pop("AWS_ENDPOINT_URL", None)
        runs = []
        for r in range(args.repeats if i == 0 else 1):
            res = run_job(env, *extra, *(["--rescore"] if r else []))
            runs.append(res)
            print(
                f"  run {r + 1}: scoring {res['scoring_ips']:,.0f} img/s | night {res['night_ips']:,.0f} img/s | "
                f"process {res['process_wall_s']:.1f}s ({res['process_ips']:,.0f} img/s) | "
                f"peak RSS job {res['peak_rss_mb']:.0f} MB, workers {res['peak_rss_workers_mb']:.0f} MB",
                flush=True,
            )
        results["sizes"][str(n)] = {
            "runs": runs,
            "median_scoring_ips": statistics.median(r["scoring_ips"] for r in runs),
            "median_night_ips": statistics.median(r["night_ips"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "peak_rss_workers_mb": max(r["peak_rss_workers_mb"] for r in runs),
        }
        if first_store is None:
            first_store, first_keys = store, keys

    assert first_store is not None
    print(f"\nseed-style baseline on {args.baseline_n} images (sequential HTTP POST per image)...", flush=True)
    base = seed_baseline(work, tracking_uri, version, first_store, first_keys[: args.baseline_n])
    results["baseline"] = base
    n0 = str(sizes[0])
    ours = results["sizes"][n0]["median_scoring_ips"]
    night = results["sizes"][n0]["median_night_ips"]
    print("\n=== results ===")
    print(f"model: {model_desc}")
    print(
        f"seed-style baseline: {base['ips']:.1f} img/s -> {sizes[0]} images would take "
        f"{sizes[0] / base['ips'] / 60:.1f} min (extrapolated from {base['images']})"
    )
    for n, r in results["sizes"].items():
        print(
            f"N={n}: median scoring {r['median_scoring_ips']:,.0f} img/s, night (list->_SUCCESS) "
            f"{r['median_night_ips']:,.0f} img/s, peak RSS job {r['peak_rss_mb']:.0f} MB / workers "
            f"{r['peak_rss_workers_mb']:.0f} MB"
        )
    print(
        f"ratio vs baseline (N={n0}): scoring {ours / base['ips']:,.0f}x, night {night / base['ips']:,.0f}x "
        f"(target >= {TARGET_RATIO:.0f}x); target >= {TARGET_IPS:,.0f} img/s: "
        f"{'met' if night >= TARGET_IPS else 'NOT met'} (night), {'met' if ours >= TARGET_IPS else 'NOT met'} (scoring)"
    )
    if len(sizes) > 1:
        lo, hi = results["sizes"][str(sizes[0])], results["sizes"][str(sizes[-1])]
        print(
            f"RSS N={sizes[0]} -> N={sizes[-1]}: job {lo['peak_rss_mb']:.0f} -> {hi['peak_rss_mb']:.0f} MB, "
            f"workers {lo['peak_rss_workers_mb']:.0f} -> {hi['peak_rss_workers_mb']:.0f} MB"
        )
    results["ratio_scoring"] = ours / base["ips"]
    results["ratio_night"] = night / base["ips"]
    results["load_average_end"] = os.getloadavg()
    out = PROJECT_ROOT / "benchmarks" / "results" / "bench_batch.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"(results in {out}; work folder {work})")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
