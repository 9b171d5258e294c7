"""Benchmark of the data pipeline on the full 70,000 Fashion-MNIST images, with the seed's baseline in the same run.

Steps: acquire (IDX -> 70,000 PNGs); ingest into the local store; start a moto S3 server on 127.0.0.1 and ingest into
it; the seed's baseline (a sequential boto3 ``upload_file`` loop) and our ingest on the same subset of files, each
into a fresh bucket, alternated ``--repeats`` times (medians quoted; the baseline is run on a subset because at its
rate all 70,000 would take many minutes, and its full-run time is extrapolated linearly -- said so in the output);
then processing from the local store and from the moto server.

With ``--stages-vs REF``, instead: the three ``make demo`` data stages as the CLI runs them (``python -m
data_ingestion.acquire``, ``data_ingestion.ingest``, ``data_processing.process`` on a fresh DATA_DIR with the local
default store), for this checkout and for the git revision REF (exported with ``git archive``), alternated
``--repeats`` times; prints per-stage seconds, medians and ratios, checks that both produced byte-identical outputs
(raw PNGs, labels.csv, store objects, npz files, local PNG copy; ``created_at`` aside) and that a rerun of ours
skips all work. Results in benchmarks/results/bench_pipeline_stages.json.

Usage: nice -n 10 python benchmarks/bench_pipeline.py [--workers 16] [--subset 1000] [--repeats 3] [--limit-per-class N]
       python benchmarks/bench_pipeline.py --stages-vs REF [--repeats 2] [--limit-per-class N]

Exit codes: 0 done (prints the table and writes benchmarks/results/bench_pipeline.json); 1 a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common.hardware import describe as describe_cpu
from common.settings import PROJECT_ROOT
from common.storage import LocalStorage, S3Storage
from data_ingestion import acquire
from data_ingestion.manifest import RAW_PREFIX
from data_ingestion.upload import find_images, ingest
from data_processing.build import run as process_run
from tests.support.processes import start_moto

_SERVER: list[subprocess.Popen] = []  # the moto server, once started: its CPU time is accounted per step
CPU: dict[str, tuple[float, float]] = {}  # step -> (client CPU s, server CPU s)


def _cpu(pid: int | None) -> float:
    import psutil

    if pid is None:
        t = psutil.Process().cpu_times()
        return t.user + t.system
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def timed(fn, *args, step: str = "", **kwargs) -> tuple[float, object]:
    """Wall time of ``fn``; with ``step``, also this process's and the moto server's CPU seconds in CPU[step]."""
    server = _SERVER[0].pid if _SERVER else None
    c0, s0 = _cpu(None), (_cpu(server) if server else 0.0)
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    secs = time.perf_counter() - t0
    if step:
        CPU[step] = (_cpu(None) - c0, (_cpu(server) - s0) if server else 0.0)
    return secs, out


def cpu_note(step: str, n: int) -> str:
    client, server = CPU.get(step, (0.0, 0.0))
    return f"[CPU per image: client {1000 * client / n:.1f} ms, moto server {1000 * server / n:.1f} ms]"


def baseline_upload(endpoint: str, bucket: str, source: Path, paths: list[Path]) -> None:
    """The seed's approach: one boto3 client, a sequential ``upload_file`` per image."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    for p in paths:
        client.upload_file(str(p), bucket, f"store/{RAW_PREFIX}/{p.relative_to(source).as_posix()}")


def ours_upload(endpoint: str, bucket: str, source: Path, workers: int) -> int:
    store = S3Storage(f"s3://{bucket}/store", endpoint_url=endpoint, max_pool_connections=workers)
    store.ensure_bucket()
    outcomes, _ = ingest(store, source, workers)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} uploads failed, e.g. {failed[0].error}")
    return len(outcomes)


STAGES = ("data_ingestion.acquire", "data_ingestion.ingest", "data_processing.process")


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes the stages' own worker processes
    return r.ru_utime + r.ru_stime


def run_stages(
    tree: Path, data_dir: Path, fmnist: Path, extra: list[str]
) -> tuple[list[float], list[float], list[str]]:
    """The three data stages as ``make demo`` runs them, from the code in ``tree``: wall seconds, CPU seconds
    (user+system, worker processes included) and the last output line of each."""
    env = {k: v for k, v in os.environ.items() if k not in ("STORAGE_URI", "AWS_ENDPOINT_URL")}
    env.update(PYTHONPATH=str(tree), DATA_DIR=str(data_dir), FASHION_MNIST_DIR=str(fmnist))
    secs, cpu, lines = [], [], []
    for i, module in enumerate(STAGES):
        t0, c0 = time.perf_counter(), _children_cpu()
        proc = subprocess.run([sys.executable, "-m", module, *(extra if i == 0 else [])], cwd=tree, env=env,
                              capture_output=True, text=True)  # fmt: skip
        secs.append(time.perf_counter() - t0)
        cpu.append(_children_cpu() - c0)
        if proc.returncode != 0:
            raise RuntimeError(f"{module} in {tree} exited {proc.returncode}: {proc.stderr[-2000:]}")
        lines.append(proc.stdout.strip().splitlines()[-1])
    return secs, cpu, lines


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path; the processed manifests differ only by created_at."""
    import hashlib

    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "manifest.json":
            summary = json.loads(data)
            summary.pop("created_at", None)
            data = json.dumps(summary, sort_keys=True).encode()
        out[path.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def stages_main(args: argparse.Namespace) -> int:
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-stages-"))
    base_tree = work / "baseline-code"
    if not base_tree.is_dir():
        base_tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", args.stages_vs], cwd=PROJECT_ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(base_tree)], input=archive.stdout, check=True)
    extra = ["--limit-per-class", str(args.limit_per_class)] if args.limit_per_class else []
    times: dict[str, list[list[float]]] = {"baseline": [], "ours": []}
    cpus: dict[str, list[list[float]]] = {"baseline": [], "ours": []}
    digests: dict[str, dict[str, str]] = {}
    for rep in range(args.repeats):
        for tag, tree in (("baseline", base_tree), ("ours", PROJECT_ROOT)):
            data = work / f"{tag}-data"
            shutil.rmtree(data, ignore_errors=True)
            load = os.getloadavg()[0]
            secs, cpu, lines = run_stages(tree, data, args.fashion_mnist_dir, extra)
            times[tag].append(secs)
            cpus[tag].append(cpu)
            cols = [
                f"{m.rsplit('.', 1)[1]} {t:6.1f} s (CPU {c:6.1f} s)" for m, t, c in zip(STAGES, secs, cpu, strict=True)
            ]
            print(f"run {rep + 1} {tag:<8} " + "  ".join(cols) + f"  total {sum(secs):6.1f} s, CPU {sum(cpu):6.1f} s"
                  f"  [load {load:.1f}]", flush=True)  # fmt: skip
            if rep == 0:
                digests[tag] = tree_digest(data)
                if tag == "ours" and not args.skip_rerun:
                    rerun, _, lines = run_stages(tree, data, args.fashion_mnist_dir, extra)
                    print(f"rerun    ours     {sum(rerun):6.1f} s: " + " | ".join(lines), flush=True)
                    if "written 0" not in lines[0] or "uploaded 0" not in lines[1] or "up to date" not in lines[2]:
                        raise RuntimeError(f"the rerun did work: {lines}")
    identical = digests["baseline"] == digests["ours"]
    print(f"outputs identical: {identical} ({len(digests['ours'])} files compared)")

    def medians(runs: list[list[float]]) -> list[float]:
        return [statistics.median(run[i] for run in runs) for i in range(len(STAGES))]

    med = {tag: medians(runs) for tag, runs in times.items()}
    med_cpu = {tag: medians(runs) for tag, runs in cpus.items()}
    rows = [(m, med["baseline"][i], med["ours"][i], med_cpu["baseline"][i], med_cpu["ours"][i]) for i, m in
            enumerate(STAGES)]  # fmt: skip
    rows.append(("sum of medians", *(sum(col) for col in list(zip(*rows, strict=True))[1:])))
    for module, b, o, bc, oc in rows:
        print(f"{module:<23} wall: baseline {b:6.1f} s ours {o:6.1f} s ratio {b / o:4.1f}x (-{100 * (1 - o / b):.0f} %)"
              f"  CPU: baseline {bc:6.1f} s  ours {oc:6.1f} s  ratio {bc / oc:4.1f}x")  # fmt: skip
    out = PROJECT_ROOT / "benchmarks" / "results" / "bench_pipeline_stages.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"baseline_ref": args.stages_vs, "cpus": os.cpu_count(), "stages": STAGES, "seconds": times,
           "cpu_seconds": cpus, "medians": med, "cpu_medians": med_cpu, "outputs_identical": identical}  # fmt: skip
    out.write_text(json.dumps(res, indent=2))
    print(f"results: {out} (scratch: {work})")
    return 0 if identical else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--fashion-mnist-dir",
        type=Path,
        default=os.environ.get("FASHION_MNIST_DIR"),
        help="the 4 IDX files (default FASHION_MNIST_DIR)",
    )
    p.add_argument("--workdir", type=Path, help="scratch folder (default a new temporary folder)")
    p.add_argument("--workers", type=int, default=16, help="ingest/process threads (default 16)")
    p.add_argument("--subset", type=int, default=1000, help="files for the baseline comparison (default 1000)")
    p.add_argument("--repeats", type=int, default=3, help="alternated baseline/ours repetitions (default 3)")
    p.add_argument("--limit-per-class", type=int, help="smaller dataset, for a quick check of the script")
    p.add_argument("--stages-vs", metavar="REF", help="time the 3 CLI data stages against git revision REF instead")
    p.add_argument("--skip-rerun", action="store_true", help="with --stages-vs: skip the idempotent-rerun check")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's
    if args.stages_vs:
        return stages_main(args)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    raw = work / "raw"
    res: dict[str, object] = {"workers": args.workers, "cpus": os.cpu_count()}
    local = acquire_and_ingest_locally(args, work, res)
    proc, endpoint = start_moto()
    _SERVER.append(proc)
    try:
        base_rate = compare_uploads(args, endpoint, raw, work, res)
        s3 = ingest_to_moto(args, endpoint, raw, base_rate, res)
        process_both(args, local, s3, work, res)
    finally:
        proc.terminate()  # a moto holding 70,000 objects can take a while to exit
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out = PROJECT_ROOT / "benchmarks" / "results" / "bench_pipeline.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res["cpu_seconds_client_server"] = CPU
    out.write_text(json.dumps(res, indent=2))
    print(f"results: {out} (scratch: {work})")
    return 0


def acquire_and_ingest_locally(args: argparse.Namespace, work: Path, res: dict[str, object]) -> LocalStorage:
    """Acquire the images into ``work/raw`` and ingest them into a fresh local store (returned), timing both."""
    raw = work / "raw"
    limit = ["--limit-per-class", str(args.limit_per_class)] if args.limit_per_class else []
    secs, _ = timed(acquire.main, ["--source-dir", str(args.fashion_mnist_dir), "--out", str(raw), *limit])
    n = len(find_images(raw))
    res["images"] = n
    res["acquire_s"] = secs
    print(f"acquire            {n:>6} images {secs:7.1f} s {n / secs:8.0f} images/s", flush=True)

    shutil.rmtree(work / "store", ignore_errors=True)  # a reused --workdir must not turn uploads into skips
    local = LocalStorage(work / "store")
    secs, _ = timed(ingest, local, raw, args.workers)
    res["ingest_local_s"] = secs
    print(f"ingest local       {n:>6} images {secs:7.1f} s {n / secs:8.0f} images/s", flush=True)
    return local


def compare_uploads(args: argparse.Namespace, endpoint: str, raw: Path, work: Path, res: dict[str, object]) -> float:
    """Baseline vs ours on the same subset, alternated, fresh buckets each time; returns the baseline's images/s."""
    n = res["images"]
    sub_dir = work / "subset"
    subset = find_images(raw)[:: max(1, n // args.subset)][: args.subset]
    for src in subset:
        dst = sub_dir / src.relative_to(raw)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.link(src, dst)
    base_t, ours_t = [], []
    for _ in range(args.repeats):
        bucket = f"base-{uuid.uuid4().hex[:8]}"
        t, _ = timed(baseline_upload, endpoint, bucket, sub_dir, find_images(sub_dir), step="baseline")
        base_t.append(t)
        t, _ = timed(ours_upload, endpoint, f"ours-{uuid.uuid4().hex[:8]}", sub_dir, args.workers, step="ours")
        ours_t.append(t)
    k = len(subset)
    base_rate, ours_rate = k / statistics.median(base_t), k / statistics.median(ours_t)
    res.update(subset=k, baseline_subset_s=base_t, ours_subset_s=ours_t)
    print(
        f"baseline upload_file loop  {k} images: median {statistics.median(base_t):.1f} s "
        f"{base_rate:8.0f} images/s (runs {', '.join(f'{t:.1f}' for t in base_t)}) "
        f"{cpu_note('baseline', k)}"
    )
    print(
        f"ours (ingest)              {k} images: median {statistics.median(ours_t):.1f} s "
        f"{ours_rate:8.0f} images/s (runs {', '.join(f'{t:.1f}' for t in ours_t)})  "
        f"ratio {ours_rate / base_rate:.1f}x {cpu_note('ours', k)}",
        flush=True,
    )
    return base_rate


def ingest_to_moto(
    args: argparse.Namespace, endpoint: str, raw: Path, base_rate: float, res: dict[str, object]
) -> S3Storage:
    """The whole dataset into moto's S3 (the store, returned), then again (every object there: nothing uploads)."""
    n = res["images"]
    s3 = S3Storage("s3://bench-full/store", endpoint_url=endpoint, max_pool_connections=args.workers)
    s3.ensure_bucket()
    secs, _ = timed(ingest, s3, raw, args.workers, step="full")
    res["ingest_moto_s"] = secs
    full_rate = n / secs
    print(
        f"ingest moto (full) {n:>6} images {secs:7.1f} s {full_rate:8.0f} images/s; baseline extrapolated "
        f"{n / base_rate:7.1f} s -> ratio {full_rate / base_rate:.1f}x "
        f"{cpu_note('full', n)}",
        flush=True,
    )
    secs, _ = timed(ingest, s3, raw, args.workers)
    res["ingest_moto_rerun_s"] = secs
    print(f"ingest moto rerun  {n:>6} images {secs:7.1f} s {n / secs:8.0f} images/s (uploads 0)", flush=True)
    return s3


def process_both(
    args: argparse.Namespace, local: LocalStorage, s3: S3Storage, work: Path, res: dict[str, object]
) -> None:
    """The processing stage on the local store, then on moto's with a local copy, then its up-to-date rerun."""
    n = res["images"]
    secs, r = timed(process_run, local, local_dir=None, workers=args.workers, force=True)
    res["process_local_s"] = secs
    print(f"process local      {n:>6} images {secs:7.1f} s {n / secs:8.0f} images/s {r.counts}", flush=True)
    secs, r = timed(process_run, s3, local_dir=work / "processed", workers=args.workers, force=True, step="proc")
    res["process_moto_s"] = secs
    print(
        f"process moto+copy  {n:>6} images {secs:7.1f} s {n / secs:8.0f} images/s {r.counts} {cpu_note('proc', n)}",
        flush=True,
    )
    secs, r = timed(process_run, s3, local_dir=work / "processed", workers=args.workers)
    res["process_moto_rerun_s"] = secs
    print(f"process moto rerun (up to date: {r.up_to_date}) {secs:.2f} s", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
