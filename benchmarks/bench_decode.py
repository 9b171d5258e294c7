"""Decode amplification and decoding work, before and after, in one run: wall time, CPU, peak-RSS growth and the
answer for hostile inputs (issue 14's pixel bombs, issue 28's work bombs) and ordinary photos, through the
preprocessing of a git revision ("before") and of the working tree ("after").

Usage: python benchmarks/bench_decode.py [--before-ref main] [--repeats 3] [--only issue28]

Each (implementation, case) runs in a fresh process: the payload is read, the decoder child of the working tree is
started and ready (a server worker starts it at boot), the kernel's RSS high-water marks are reset
(``/proc/<pid>/clear_refs``), then the case runs as one API request (one ``DecodeBudget`` with the API's default
limits, as the route builds it; the revision's own class for "before"). CPU and peak-RSS growth add up the process
and its decoder child. Linux only. Prints the CPU model and the revisions compared.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.hardware import describe as describe_cpu

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _kb(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _load(module_path: str):
    """The preprocessing under test: the working tree's package module, or a revision's file loaded on its own."""
    if Path(module_path).resolve() == ROOT / "data_processing" / "preprocessing.py":
        import data_processing.preprocessing as mod

        return mod
    spec = importlib.util.spec_from_file_location("preprocessing_under_test", module_path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _children_cpu_and_growth(pids: list[int], before_cpu: dict[int, float]) -> tuple[float, float]:
    import psutil

    cpu, growth = 0.0, 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            cpu += times.user + times.system - before_cpu.get(pid, 0.0)
            growth += (_kb("VmHWM", pid) - _kb("VmRSS", pid)) / 1024
        except (psutil.Error, OSError, KeyError):
            pass
    return cpu, growth


def child(module_path: str, threads: int, paths: list[str]) -> None:
    """Run one case in this (fresh) process and print its JSON result."""
    import psutil

    mod = _load(module_path)
    payloads = [Path(p).read_bytes() for p in paths]
    from common.settings import Settings  # imported before the clock starts
    from model_serving.routes import request_decode_budget

    serving = Settings.from_env().serving
    sandboxed = hasattr(mod, "INLINE_WORK")
    if sandboxed:  # started and ready before the clock, as in a server worker
        from data_processing.sandbox import shared_sandbox

        mod.preprocess_bytes(_small_png(), budget=mod.DecodeBudget(max_seconds=60))
        shared_sandbox().preprocess(_small_png(), max_pixels=10**6, max_image_pixels=10**6, timeout=60)

    def one_request() -> str:
        if sandboxed:
            budget = request_decode_budget(serving)
        elif hasattr(mod, "DecodeBudget"):  # the API's budget, in the revision under test's own class
            api = request_decode_budget(serving)
            budget = mod.DecodeBudget(
                max_image_pixels=api.max_image_pixels,
                max_total_pixels=api.max_total_pixels,
                max_seconds=api.max_seconds,
            )
        else:
            budget = None
        try:
            for data in payloads:
                if budget is None:
                    mod.preprocess_bytes(data)
                else:
                    mod.preprocess_bytes(data, budget=budget)
        except mod.ImageError as exc:
            return f"{exc.http_status} {exc.code}"
        return "200"

    mod.preprocess_bytes(_small_png())  # warm the decoders and numpy
    me = psutil.Process()
    kids = [c.pid for c in me.children(recursive=True)]
    kids_cpu = {pid: sum(psutil.Process(pid).cpu_times()[:2]) for pid in kids}
    for pid in ["self", *kids]:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _kb("VmRSS")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(lambda _: one_request(), range(threads)))
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    growth = (_kb("VmHWM") - before) / 1024
    kid_cpu, kid_growth = _children_cpu_and_growth([c.pid for c in me.children(recursive=True)], kids_cpu)
    print(
        json.dumps(
            {"outcome": outcomes[0], "seconds": seconds, "cpu": cpu + kid_cpu, "rss_growth_mb": growth + kid_growth}
        )
    )


def _small_png() -> bytes:
    from tests.support.decode import flat_png

    return flat_png(28, 28, value=10)


def cases(tmp: Path, only: str) -> list[tuple[str, list[Path], int]]:
    """(name, payload files of one request, concurrent requests)."""
    import numpy as np
    from PIL import Image

    from tests.support.decode import (
        flat_png,
        flat_webp,
        one_byte_idat_png,
        png_with_chunks,
        rle8_bmp,
        scan_bomb_jpeg,
    )

    def save(name: str, data: bytes) -> Path:
        path = tmp / name
        path.write_bytes(data)
        return path

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((4032, 3024), Image.Resampling.NEAREST).save(buf, "JPEG", quality=85)
    phone = save("jpeg-4032x3024.jpg", buf.getvalue())
    buf = io.BytesIO()
    small.resize((4032, 3024), Image.Resampling.NEAREST).save(buf, "JPEG", quality=85, progressive=True)
    phone_progressive = save("jpeg-progressive-4032x3024.jpg", buf.getvalue())
    buf = io.BytesIO()
    big = small.resize((6000, 4500), Image.Resampling.NEAREST)
    big.save(buf, "MPO", quality=80, save_all=True, append_images=[big.resize((600, 450))])
    mpo = save("mpo-6000x4500.jpg", buf.getvalue())
    buf = io.BytesIO()
    small.resize((1200, 900), Image.Resampling.NEAREST).save(buf, "PNG")
    photo_png = save("png-1200x900.png", buf.getvalue())
    item = save("png-28x28.png", flat_png(28, 28, value=90))
    issue28 = [
        (f"JPEG 7000x7000, one AC scan x2,000 ({len(scan_bomb_jpeg()):,} B)", [save("scans.jpg", scan_bomb_jpeg())], 1),
        ("PNG, 1.5 M private chunks (18 MB)", [save("private.png", png_with_chunks(b"prIv", b"", 1_500_000))], 1),
        ("PNG, 1.2 M tEXt chunks (18 MB)", [save("text.png", png_with_chunks(b"tEXt", b"k\x00v", 1_200_000))], 1),
        ("PNG 1024x1024, 1-byte IDAT chunks (13.6 MB)", [save("idat.png", one_byte_idat_png())], 1),
        ("BMP 4096x4096 RLE8 (16.8 MB)", [save("rle8.bmp", rle8_bmp())], 1),
        ("MPO (Ultra HDR-style) JPEG 6000x4500", [mpo], 1),
        ("ordinary: 28x28 PNG item", [item], 1),
        ("ordinary: 1200x900 PNG photo", [photo_png], 1),
        ("ordinary: 12 MP phone JPEG 4032x3024", [phone], 1),
        ("ordinary: 12 MP progressive JPEG", [phone_progressive], 1),
        ("ordinary: 32 phone JPEGs in one request", [phone] * 32, 1),
    ]
    if only == "issue28":
        return issue28
    webp = save("webp-16383x3000.webp", flat_webp(16383, 3000))
    png16 = save("png16-7071x7071.png", flat_png(7071, 7071, bit_depth=16))
    line = save("png-49999999x1.png", flat_png(49_999_999, 1))
    legal16 = save("png16-4096x4096.png", flat_png(4096, 4096, bit_depth=16, value=30000))
    legal8 = save("png-4096x4096.png", flat_png(4096, 4096, value=40))
    return [
        (f"WebP 16383x3000 ({webp.stat().st_size:,} B)", [webp], 1),
        (f"16-bit PNG 7071x7071 ({png16.stat().st_size:,} B)", [png16], 1),
        (f"PNG 49,999,999x1 ({line.stat().st_size:,} B)", [line], 1),
        ("one request of 32 such WebPs", [webp] * 32, 1),
        ("4 concurrent 16-bit PNG 7071x7071 requests", [png16], 4),
        ("16-bit PNG 4096x4096 (largest legal)", [legal16], 1),
        ("one request of 32 PNGs 4096x4096", [legal8] * 32, 1),
        *issue28,
    ]


def run_case(module: Path, files: list[Path], threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(module), "--threads", str(threads), *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        return {
            "outcome": f"crashed ({proc.returncode})",
            "seconds": float("nan"),
            "cpu": float("nan"),
            "rss_growth_mb": 0,
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before-ref", default="main", help="git revision of the 'before' preprocessing module")
    p.add_argument("--repeats", type=int, default=3, help="runs per case (median time and CPU, max RSS)")
    p.add_argument("--only", choices=("all", "issue28"), default="all", help="issue28: the work bombs and photos")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    print(f"CPU: {describe_cpu()}", flush=True)  # the numbers below are this CPU's
    if args.child:
        child(args.child, args.threads, args.paths)
        return
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp_name:
        tmp = Path(tmp_name)
        before = tmp / "preprocessing_before.py"
        show = ["git", "show", f"{args.before_ref}:data_processing/preprocessing.py"]
        before.write_bytes(subprocess.run(show, cwd=ROOT, capture_output=True, check=True).stdout)
        rev = subprocess.run(["git", "rev-parse", "--short", args.before_ref], cwd=ROOT, capture_output=True, text=True)
        after = ROOT / "data_processing" / "preprocessing.py"
        print(f"CPU: {_cpu_model()}, {os.cpu_count()} cores; before = {args.before_ref} ({rev.stdout.strip()}), ")
        print(f"after = working tree; median wall time and CPU (process + decoder child), max peak-RSS growth of "
              f"{args.repeats}")  # fmt: skip
        print(
            "| case | answer before -> after | wall s before -> after | CPU s before -> after "
            "| peak RSS MB before -> after |"
        )
        print("|---|---|---|---|---|")
        for name, files, threads in cases(tmp, args.only):
            rows = {}
            for label, module in (("before", before), ("after", after)):
                runs = [run_case(module, files, threads) for _ in range(args.repeats)]
                rows[label] = {
                    "outcome": runs[0]["outcome"],
                    "seconds": statistics.median(r["seconds"] for r in runs),
                    "cpu": statistics.median(r["cpu"] for r in runs),
                    "rss": max(r["rss_growth_mb"] for r in runs),
                }
            b, a = rows["before"], rows["after"]
            print(
                f"| {name} | {b['outcome']} -> {a['outcome']} | {b['seconds']:.3f} -> {a['seconds']:.3f} "
                f"| {b['cpu']:.3f} -> {a['cpu']:.3f} | {b['rss']:,.0f} -> {a['rss']:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
