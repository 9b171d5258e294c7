"""Benchmark of the nightly batch job end to end on stored PNGs, with the seed-style baseline in the same run.

Usage:
    nice -n 10 .venv/bin/python benchmarks/bench_batch.py [--sizes 20000,70000] [--repeats 3] [--baseline-n 300]
        [--network-alone] [--breakdown] [--job-args "--workers 2"]

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
(conv32-pool-conv64-pool-dense128, ~225k parameters). ``--network-alone``: when the champion averages test-time
views, register its network alone (exported like training does) in the copy and score with that, so a single-view
and a multi-view model of the same weights are measured on the same machine. Every run prints the inference runtime
the job used. Results also go to benchmarks/results/bench_batch.json.

``--breakdown`` accounts the CPU per image of each step, timed in this process on 2,000 of the night's images: list,
read, decode, preprocess, infer (the job's runtime and threads) and write (records, Parquet, CSV, drift features,
ledger part), so the end-to-end number can be read against its parts.

Exit codes: 0 done (targets are reported, not enforced); 1 a run failed; 2 usage.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from _common import MODEL_NAME, SEED_SERVER, champion_version, register_stand_in

from common.hardware import describe as describe_cpu
from common.images import encode_png
from common.settings import PROJECT_ROOT
from common.storage import LocalStorage
from tests.support.processes import free_port

TARGET_IPS, TARGET_RATIO = 5000.0, 200.0


def load_fashion_test_images() -> np.ndarray:
    folder = Path(os.environ.get("FASHION_MNIST_DIR") or PROJECT_ROOT.parent / "shared" / "data" / "fashion-mnist")
    path = folder / "t10k-images-idx3-ubyte.gz"
    if path.is_file():
        with gzip.open(path) as fh:
            data = np.frombuffer(fh.read(), dtype=np.uint8, offset=16)
        return data.reshape(-1, 28, 28)
    print(f"(no Fashion-MNIST copy at {folder}: using generated images)", flush=True)
    from tests.support.models import make_tiny_images  # pragma: no cover

    return make_tiny_images(10_000)[0]


def stand_in(tracking_uri: str) -> str:
    """Register a stand-in CNN trained briefly on real test images with random labels."""
    images = load_fashion_test_images()[:2048]
    return register_stand_in(tracking_uri, images, np.random.default_rng(0).integers(0, 10, len(images)))


def register_network_alone(tracking_uri: str) -> str:
    """Register the champion's network without its test-time views (exported, with the champion's drift reference)
    and make it the champion of ``tracking_uri``; returns its version."""
    import mlflow
    import mlflow.artifacts
    import mlflow.keras
    from mlflow import MlflowClient

    from common.tracking import ensure_experiment
    from data_processing.preprocessing import to_model_batch
    from inference.exporting import export_and_log
    from inference.tta import tta_of
    from inference.versions import resolve_model
    from model_training.model_io import log_keras_model

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    champion = resolve_model(f"models:/{MODEL_NAME}@champion", tracking_uri)
    network, views = tta_of(mlflow.keras.load_model(champion.pinned_uri))
    if len(views) == 1:
        return champion.version
    images = load_fashion_test_images()
    labels = _fashion_test_labels()
    half = len(images) // 2
    splits = {"val": (images[:half], labels[:half]), "test": (images[half:], labels[half:])}
    with mlflow.start_run(experiment_id=ensure_experiment("bench-network-alone", tracking_uri)) as run:
        info = log_keras_model(network, to_model_batch(images[:2]))
        export_and_log(network, splits, run.info.run_id, tracking_uri)
        reference = mlflow.artifacts.download_artifacts(
            run_id=champion.run_id, artifact_path="drift/reference.npz", tracking_uri=tracking_uri
        )
        client.log_artifact(run.info.run_id, reference, artifact_path="drift")
    mv = mlflow.register_model(info.model_uri, MODEL_NAME)
    client.set_registered_model_alias(MODEL_NAME, "champion", mv.version)
    return str(mv.version)


def _fashion_test_labels() -> np.ndarray:
    folder = Path(os.environ.get("FASHION_MNIST_DIR") or PROJECT_ROOT.parent / "shared" / "data" / "fashion-mnist")
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=8).astype(np.int64)


def cpu_breakdown(store: Path, tracking_uri: str, threads: int, n: int = 2000) -> dict[str, float]:
    """Microseconds of CPU per image for each step of the job, timed in this process on ``n`` stored images."""
    from batch_prediction.ledger import ledger_table
    from batch_prediction.outputs import Stamp, build_records, features_to_npz, table_to_csv, table_to_parquet
    from batch_prediction.reading import LoadedBatch
    from data_processing.preprocessing import decode_image, preprocess_array, to_grayscale
    from inference.choice import BATCH
    from inference.classifier import ColumnAnswer, Thresholds
    from inference.loading import load_predictor
    from inference.predictor import Scores
    from monitoring.features import item_features

    storage = LocalStorage(store)
    predictor = load_predictor(f"models:/{MODEL_NAME}@champion", tracking_uri, threads=threads, path=BATCH)
    clock = time.process_time
    out: dict[str, float] = {}

    t0 = clock()
    listed = list(storage.list("incoming/"))
    out["list"] = (clock() - t0) / len(listed)
    infos = listed[:n]
    t0 = clock()
    blobs = [storage.get_bytes(i.key) for i in infos]
    out["read"] = (clock() - t0) / n
    t0 = clock()
    grays = [to_grayscale(decode_image(b)) for b in blobs]
    out["decode"] = (clock() - t0) / n
    t0 = clock()
    images = np.stack([preprocess_array(g) for g in grays])
    out["preprocess"] = (clock() - t0) / n
    t0 = clock()
    probs = np.concatenate([predictor.predict_proba(images[i : i + 1024]) for i in range(0, n, 1024)])
    out[f"infer ({predictor.runtime_name}, {threads} thread(s), CPU of all threads)"] = (clock() - t0) / n
    t0 = clock()
    for i in range(0, n, 1024):
        sl = slice(i, i + 1024)
        part = infos[sl]
        rows = LoadedBatch(keys=[x.key for x in part], shas=["0" * 64] * len(part), sizes=[x.size for x in part])
        answer = ColumnAnswer.of(Scores.of(probs[sl]), Thresholds(0.7, None))  # the records' columns, as before
        records = build_records(rows, answer, Stamp(MODEL_NAME, "1", "bench", "2026-11-27T00:00:00"))
        table_to_parquet(records)
        table_to_csv(records)
        features_to_npz(item_features(images[sl], probs[sl]))
        table_to_parquet(ledger_table(records, {x.key: x for x in infos[sl]}))
    out["write (records, Parquet, CSV, drift features, ledger)"] = (clock() - t0) / n
    return {k: v * 1e6 for k, v in out.items()}


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
        "runtime": summary["model"].get("runtime"),
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="20000,70000", help="comma-separated night sizes (first one is repeated)")
    p.add_argument("--repeats", type=int, default=3, help="runs of the first size (median reported)")
    p.add_argument("--baseline-n", type=int, default=300, help="images for the seed-style baseline")
    p.add_argument("--workdir", help="keep everything here instead of a temporary folder")
    p.add_argument("--job-args", default="", help="extra flags for the batch job, e.g. '--workers 2'")
    p.add_argument(
        "--network-alone",
        action="store_true",
        help="score with the champion's network without its test-time views (registered in the copy)",
    )
    p.add_argument("--breakdown", action="store_true", help="also account the CPU per image of each step")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s]
    except ValueError:
        p.error("--sizes must be integers")
    if not sizes or args.repeats < 1:
        p.error("need at least one size and one repeat")

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    version, model_desc = choose_model(tracking_uri, work, args.network_alone)
    print(f"model: {model_desc}", flush=True)
    print(f"cpus: {os.cpu_count()}, load average at start: {os.getloadavg()}", flush=True)

    extra = args.job_args.split()
    results: dict[str, object] = {"model": model_desc, "sizes": {}, "job_args": extra}
    first_store, first_keys = measure_nights(args, sizes, work, tracking_uri, results)
    if args.breakdown:
        threads = int(extra[extra.index("--inference-threads") + 1]) if "--inference-threads" in extra else None
        parts = cpu_breakdown(first_store, tracking_uri, threads or os.cpu_count() or 1)
        results["breakdown_us_per_image"] = parts
        print("\nCPU per image by step (microseconds, this process, 2,000 of the night's images):")
        for name, us in parts.items():
            print(f"  {name:<58} {us:8.1f}")
        print(f"  {'sum':<58} {sum(parts.values()):8.1f}")
    print(f"\nseed-style baseline on {args.baseline_n} images (sequential HTTP POST per image)...", flush=True)
    results["baseline"] = seed_baseline(work, tracking_uri, version, first_store, first_keys[: args.baseline_n])
    print_summary(results, sizes)
    results["load_average_end"] = os.getloadavg()
    out = PROJECT_ROOT / "benchmarks" / "results" / "bench_batch.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"(results in {out}; work folder {work})")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def choose_model(tracking_uri: str, work: Path, network_alone: bool) -> tuple[str, str]:
    """The version to score and its description: the project's champion (its mlflow.db copied into ``work``;
    ``network_alone``: its network without test-time views, registered in the copy), else a stand-in."""
    main_db = PROJECT_ROOT / "mlflow.db"
    version = champion_version(f"sqlite:///{main_db}") if main_db.is_file() else None
    if version is None:
        return stand_in(tracking_uri), "stand-in CNN conv32-pool-conv64-pool-dense128 (no champion in mlflow.db)"
    shutil.copyfile(main_db, work / "mlflow.db")  # artifacts stay where they are (absolute paths)
    model_desc = f"real champion {MODEL_NAME} v{version} (from {main_db})"
    if network_alone:
        # In a child process: TensorFlow's memory in this process would be inherited by every job it starts
        # (Linux keeps ru_maxrss across fork + exec), inflating their reported peak RSS.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            alone = pool.submit(register_network_alone, tracking_uri).result()
        if alone != version:
            model_desc += f", its network alone (registered as v{alone} in the benchmark's copy)"
            version = alone
    return version, model_desc


def measure_nights(
    args: argparse.Namespace, sizes: list[int], work: Path, tracking_uri: str, results: dict
) -> tuple[Path, list[str]]:
    """Run the batch job on a night of each size (the first ``--repeats`` times) into ``results["sizes"]``; returns
    the first night's store and keys (for the breakdown and the baseline)."""
    pngs = [encode_png(img) for img in load_fashion_test_images()]
    extra = results["job_args"]
    first: tuple[Path, list[str]] | None = None
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
                f"peak RSS job {res['peak_rss_mb']:.0f} MB, workers {res['peak_rss_workers_mb']:.0f} MB | "
                f"runtime {res['runtime']}",
                flush=True,
            )
        results["sizes"][str(n)] = {
            "runs": runs,
            "median_scoring_ips": statistics.median(r["scoring_ips"] for r in runs),
            "median_night_ips": statistics.median(r["night_ips"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "peak_rss_workers_mb": max(r["peak_rss_workers_mb"] for r in runs),
        }
        first = first or (store, keys)
    assert first is not None
    return first


def print_summary(results: dict, sizes: list[int]) -> None:
    """The results against the seed-style baseline and the targets; adds the two ratios to ``results``."""
    base = results["baseline"]
    n0 = str(sizes[0])
    ours = results["sizes"][n0]["median_scoring_ips"]
    night = results["sizes"][n0]["median_night_ips"]
    print("\n=== results ===")
    print(f"model: {results['model']}")
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


if __name__ == "__main__":
    raise SystemExit(main())
