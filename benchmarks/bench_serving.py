"""Serving benchmark: our API (granian) vs a seed-style server (Flask dev server + ``model.predict`` per request),
same model, same machine, same run, single-image ``POST /predict`` over loopback.

Usage: python benchmarks/bench_serving.py [--tracking-uri URI] [--duration 10] [--clients 1,16] [--workers 2]
       [--runtime auto|keras] [--breakdown] [--json out.json]

``--breakdown`` also times the parts of one request inside a worker, in this process, on the same image: multipart
parsing, decode + preprocess, inference, the prediction record, JSON encoding, and the whole Flask request.

Model: ``--tracking-uri`` (default ``MLFLOW_TRACKING_URI``, else the project's ``mlflow.db``) if it has a
``refund-item-classifier@champion``; otherwise a stand-in CNN of the usual Fashion-MNIST size (two conv
layers, ~225k parameters, trained briefly on generated images) is registered in a temporary store. The
output says which.

Load generator: ``wrk`` with a Lua multipart script when installed (``apt-get install -y wrk``; the script
tries that once if it runs as root), else a Python thread-per-client generator using raw keep-alive
sockets (heavier: it steals CPU from the server on a 2-core machine, so its numbers are lower bounds).
Every run is bounded by ``--duration`` seconds.

Exit codes: 0 done (targets met or not: the table says), 1 a server failed to start, 2 bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import requests
from _common import MODEL_NAME, SEED_SERVER, champion_version, register_stand_in

from common.hardware import describe as describe_cpu
from common.images import encode_png
from common.settings import PROJECT_ROOT, Settings
from tests.support.api import run_server
from tests.support.processes import free_port, stop_process

TARGET_RPS, TARGET_P99_MS, TARGET_RATIO = 1500.0, 25.0, 60.0


WRK_LUA = r"""
local f = io.open(os.getenv("BENCH_BODY_FILE"), "rb")
local body = f:read("*all")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. os.getenv("BENCH_BOUNDARY")
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout, latency.mean, latency.max))
end
"""


def stand_in(tracking_uri: str) -> None:
    """Register a stand-in CNN trained briefly on generated items."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2048)
    images = np.zeros((2048, 28, 28), np.uint8)
    for i, k in enumerate(labels):
        images[i, 4 : 8 + 2 * k, 6 : 24 - k] = 100 + 15 * k
    images = np.clip(images + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
    register_stand_in(tracking_uri, images, labels)


def multipart_body(png: bytes, boundary: str = "ricbenchboundary7d1f") -> tuple[bytes, str]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="img.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + png + f"\r\n--{boundary}--\r\n".encode(), boundary


def ensure_wrk() -> str | None:
    path = shutil.which("wrk")
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    print("wrk not found: trying apt-get install -y wrk", flush=True)
    for cmd in (
        ["apt-get", "install", "-y", "-q", "wrk"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "wrk"],
    ):
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300, check=False)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


def run_wrk(wrk: str, url: str, clients: int, duration: float, body_file: Path, boundary: str, work: Path) -> dict:
    lua = work / "post.lua"
    lua.write_text(WRK_LUA)
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_BOUNDARY": boundary}
    cmd = [
        wrk,
        f"-t{min(clients, 2)}",
        f"-c{clients}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration + 60).stdout
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    if not m:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    n, dur_us, p50, p99, errors, _mean, _max = map(int, m.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": n,
        "rps": n / (dur_us / 1e6),
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
    }


def run_python_load(url: str, clients: int, duration: float, body: bytes, boundary: str) -> dict:
    """Fallback generator: one thread per client, raw HTTP/1.1 keep-alive (heavier than wrk)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    stop = time.monotonic() + duration
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                conn.request("POST", parts.path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors[i] += 1
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
                continue
            lat[i].append(time.perf_counter() - t0)
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    all_lat = np.array([x for xs in lat for x in xs]) * 1000
    return {
        "requests": int(all_lat.size),
        "rps": all_lat.size / elapsed,
        "p50_ms": float(np.percentile(all_lat, 50)) if all_lat.size else float("nan"),
        "p99_ms": float(np.percentile(all_lat, 99)) if all_lat.size else float("nan"),
        "errors": sum(errors),
    }


def process_tree_cpu(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


@dataclass(frozen=True)
class Load:
    """The request every client sends (a multipart single-image upload) and the generator that sends it."""

    wrk: str | None  # None: the Python generator
    body: bytes
    boundary: str
    work: Path

    def run(self, url: str, clients: int, duration: float) -> dict:
        if not self.wrk:
            return run_python_load(url, clients, duration, self.body, self.boundary)
        body_file = self.work / "body.bin"
        return run_wrk(self.wrk, url, clients, duration, body_file, self.boundary, self.work)


def measure(name: str, url: str, pid: int, args: argparse.Namespace, load: Load) -> list[dict]:
    (load.work / "body.bin").write_bytes(load.body)
    rows = []
    # Warm-up (not measured): compiles graphs, fills caches, opens pools.
    load.run(url, 4, min(3.0, args.duration))
    for clients in args.clients:
        cpu0 = process_tree_cpu(pid)
        res = load.run(url, clients, args.duration)
        cpu = process_tree_cpu(pid) - cpu0
        res.update(server=name, clients=clients, server_cpu_ms_per_req=1000 * cpu / max(res["requests"], 1))
        rows.append(res)
        print(
            f"  {name:<12} clients={clients:<3} {res['rps']:8.1f} req/s  p50 {res['p50_ms']:7.2f} ms  "
            f"p99 {res['p99_ms']:7.2f} ms  errors {res['errors']}  "
            f"server CPU {res['server_cpu_ms_per_req']:.2f} ms/req",
            flush=True,
        )
    return rows


def breakdown(tracking_uri: str, body: bytes, boundary: str, png: bytes, runtime: str) -> dict[str, float]:
    """Microseconds per request for each part of ``POST /predict`` inside one worker (median of 5 x 300 calls)."""
    import io

    from _runtimes import median_seconds
    from werkzeug.formparser import parse_form_data

    from data_processing.preprocessing import preprocess_bytes
    from inference.records import describe
    from model_serving.errors import json_response
    from model_serving.factory import create_app

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    settings = Settings.from_env()
    settings = replace(settings, serving=replace(settings.serving, poll_seconds=0, runtime=runtime))
    app = create_app(settings=settings, background=False)
    predictor = app.extensions["ric"]["state"].served.predictor

    def environ() -> dict:
        return {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/predict",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "5001",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "CONTENT_TYPE": f"multipart/form-data; boundary={boundary}",
            "CONTENT_LENGTH": str(len(body)),
        }

    def whole() -> None:
        result = app(environ(), lambda status, headers, exc_info=None: None)
        b"".join(result)
        result.close()

    image = preprocess_bytes(png)
    probs = predictor.predict_proba(image[None])
    record = describe(probs, review_threshold=0.7)[0]
    parts = {
        "multipart parsing (werkzeug)": lambda: parse_form_data(environ())[2]["file"].read(),
        "decode + preprocess": lambda: preprocess_bytes(png),
        f"inference ({predictor.runtime_name}, batch 1)": lambda: predictor.predict_proba(image[None]),
        "prediction record": lambda: describe(probs, review_threshold=0.7),
        "JSON encoding": lambda: json_response(record).get_data(),
    }
    with app.app_context():
        out = {name: median_seconds(fn, 300, 5) * 1e6 for name, fn in parts.items()}
    out["whole request in Flask"] = median_seconds(whole, 300, 5) * 1e6
    out["rest (Flask, metrics, drift feed)"] = out["whole request in Flask"] - sum(out[k] for k in parts)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store with a champion (default: MLFLOW_TRACKING_URI or ./mlflow.db)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured load level")
    p.add_argument("--clients", default="1,16", help="comma-separated concurrent client counts")
    p.add_argument("--workers", type=int, default=2, help="worker processes of our server")
    p.add_argument(
        "--runtime", choices=("auto", "keras"), default="auto", help="our server's --runtime (keras: the old graph)"
    )
    p.add_argument("--breakdown", action="store_true", help="also time the parts of one request in this process")
    p.add_argument("--skip-seed", action="store_true", help="do not measure the seed-style baseline")
    p.add_argument("--python-client", action="store_true", help="use the Python load generator even if wrk exists")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's
    try:
        args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        print("--clients must be comma-separated integers", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ric-bench-"))
    tracking_uri, model_source = find_model(args, work)
    from mlflow import MlflowClient

    version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(MODEL_NAME, "champion").version
    wrk = None if args.python_client else ensure_wrk()
    png = encode_png(bench_item())
    body, boundary = multipart_body(png)
    load = Load(wrk, body, boundary, work)
    print(
        f"model: {model_source}, version {version}; load generator: {'wrk' if wrk else 'python threads'}; "
        f"{args.duration:.0f} s per level; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows: list[dict] = []
    try:
        rows += measure_ours(args, tracking_uri, load)
    except (RuntimeError, TimeoutError) as exc:
        print(f"our server did not start: {exc}", file=sys.stderr)
        return 1
    if not args.skip_seed:
        seed_rows = measure_seed(args, tracking_uri, version, load)
        if seed_rows is None:
            return 1
        rows += seed_rows
    print_results(rows, args)
    parts = None
    if args.breakdown:
        parts = breakdown(tracking_uri, body, boundary, png, args.runtime)
        print("\ninside one worker, per request (microseconds, median of 5 x 300 calls, this process):")
        for name, us in parts.items():
            print(f"  {name:<40} {us:8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"model": model_source, "rows": rows, "breakdown": parts}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def find_model(args: argparse.Namespace, work: Path) -> tuple[str, str]:
    """The tracking URI whose champion is measured, and what to call that model: ``--tracking-uri``'s champion, or a
    stand-in registered in ``work`` (never creating an empty mlflow.db just by looking)."""
    tracking_uri = (
        args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
    )
    local_db = tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///") :]).exists()
    if not local_db and champion_version(tracking_uri) is not None:
        return tracking_uri, f"champion of {tracking_uri}"
    tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    print(f"no champion found: registering a stand-in CNN in {tracking_uri}", flush=True)
    stand_in(tracking_uri)
    return tracking_uri, "stand-in CNN (conv32-conv64-dense128, ~225k parameters)"


def bench_item() -> np.ndarray:
    """The one item every request uploads: a bright block on black, the same in every run."""
    rng = np.random.default_rng(0)
    item = np.zeros((28, 28), np.uint8)
    item[4:24, 7:21] = rng.integers(120, 230, (20, 14))
    return item


def measure_ours(args: argparse.Namespace, tracking_uri: str, load: Load) -> list[dict]:
    """Our server (granian, ``--workers``) under each client count."""
    with run_server(tracking_uri, load.work, workers=args.workers, extra_args=("--runtime", args.runtime)) as ours:
        model = requests.get(f"{ours.url}/health", timeout=5).json()["model"]
        runtime = f"runtime {model['runtime']}, {model['views']} view(s)"
        print(f"ours: granian, {args.workers} workers; {runtime}", flush=True)
        return measure("ours", f"{ours.url}/predict", ours.proc.pid, args, load)


def measure_seed(args: argparse.Namespace, tracking_uri: str, version: str, load: Load) -> list[dict] | None:
    """The seed-style server (Flask's development server, ``model.predict`` per request) under each client count;
    None if it did not start (its log's tail is printed)."""
    work = load.work
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MODEL_POLL_SECONDS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    port = free_port()
    seed_py = work / "seed_server.py"
    seed_py.write_text(SEED_SERVER)
    log = open(work / "seed.log", "wb")  # noqa: SIM115
    seed = subprocess.Popen(
        [sys.executable, str(seed_py), str(port), tracking_uri, f"models:/{MODEL_NAME}/{version}"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=work,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        if not wait_for_seed(url, seed, work):
            return None
        print("seed-style: Flask development server (threaded), model.predict per request", flush=True)
        return measure("seed-style", f"{url}/predict", seed.pid, args, load)
    finally:
        stop_process(seed, timeout=60)
        log.close()


def wait_for_seed(url: str, seed: subprocess.Popen, work: Path) -> bool:
    """Until the seed server answers a prediction (at most 300 s); False, with its log's tail, if it never does."""
    deadline = time.monotonic() + 300
    while True:
        try:
            r = requests.post(f"{url}/predict", files={"file": ("img.png", encode_png(bench_item()))}, timeout=30)
            if r.status_code == 200:
                return True
        except requests.RequestException:
            pass
        if seed.poll() is not None or time.monotonic() > deadline:
            print((work / "seed.log").read_text(errors="replace")[-3000:], file=sys.stderr)
            return False
        time.sleep(0.5)


def print_results(rows: list[dict], args: argparse.Namespace) -> None:
    """The table of every measured level, and the targets at the highest client count."""
    print("\nresults (single-image POST /predict over loopback):")
    print(f"{'server':<12} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU ms/req':>10}")
    for r in rows:
        cells = f"{r['rps']:>9.1f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>7}"
        print(f"{r['server']:<12} {r['clients']:>7} {cells} {r['server_cpu_ms_per_req']:>10.2f}")
    ours16 = next((r for r in rows if r["server"] == "ours" and r["clients"] == max(args.clients)), None)
    seed16 = next((r for r in rows if r["server"] == "seed-style" and r["clients"] == max(args.clients)), None)
    if ours16:
        print(
            f"\nours at {ours16['clients']} clients: {ours16['rps']:.0f} req/s (target >= {TARGET_RPS:.0f}: "
            f"{'met' if ours16['rps'] >= TARGET_RPS else 'MISSED'}), p99 {ours16['p99_ms']:.1f} ms (target <= "
            f"{TARGET_P99_MS:.0f}: {'met' if ours16['p99_ms'] <= TARGET_P99_MS else 'MISSED'})"
        )
    if ours16 and seed16:
        ratio = ours16["rps"] / max(seed16["rps"], 1e-9)
        print(
            f"speed-up vs seed-style at {ours16['clients']} clients: {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x: "
            f"{'met' if ratio >= TARGET_RATIO else 'MISSED'})"
        )
    print(f"load average now {os.getloadavg()[0]:.1f} (other processes on the machine skew every number)")


if __name__ == "__main__":
    raise SystemExit(main())
