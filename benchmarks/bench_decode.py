"""Decode amplification, before and after, in one run: time, peak-RSS growth and pixels decoded for the hostile
inputs of issue 14, through the preprocessing module of a git revision ("before") and of the working tree ("after").

Usage: python benchmarks/bench_decode.py [--before-ref dc96e4a] [--repeats 3]

Each (implementation, case) runs in a fresh process: the payload is read, the kernel's RSS high-water mark is reset
(``/proc/self/clear_refs``), then the case runs; growth = VmHWM - RSS before. Pixels decoded are counted by wrapping
Pillow's ``ImageFile.load``. A request of several images goes through one ``DecodeBudget`` with the API's default
limits where the implementation has one (the route does the same); the "before" code has none. Linux only.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
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


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(module_path: str, threads: int, paths: list[str]) -> None:
    """Run one case in this (fresh) process and print its JSON result."""
    from PIL import ImageFile

    pixels = [0]
    original = ImageFile.ImageFile.load

    def counting_load(self):
        if getattr(self, "tile", None) and not getattr(self, "_bench_counted", False):
            self._bench_counted = True
            pixels[0] += self.size[0] * self.size[1]
        return original(self)

    ImageFile.ImageFile.load = counting_load
    spec = importlib.util.spec_from_file_location("preprocessing_under_test", module_path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    payloads = [Path(p).read_bytes() for p in paths]
    from common.settings import Settings  # imported before the clock starts
    from model_serving.routes import request_decode_budget

    serving = Settings.from_env().serving

    def one_request() -> str:
        budget = None
        if hasattr(mod, "DecodeBudget"):  # the API's budget, in the revision under test's own class
            api = request_decode_budget(serving)
            budget = mod.DecodeBudget(
                max_image_pixels=api.max_image_pixels,
                max_total_pixels=api.max_total_pixels,
                max_seconds=api.max_seconds,
            )
        try:
            for data in payloads:
                if budget is None:
                    mod.preprocess_bytes(data)
                else:
                    mod.preprocess_bytes(data, budget=budget)
        except mod.ImageError as exc:
            return f"413 {exc.code}" if exc.http_status == 413 else f"{exc.http_status} {exc.code}"
        return "200"

    mod.preprocess_bytes(_small_png())  # warm the decoders and numpy
    pixels[0] = 0
    Path("/proc/self/clear_refs").write_text("5")
    before = _kb("VmRSS")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(lambda _: one_request(), range(threads)))
    seconds = time.perf_counter() - t0
    growth = _kb("VmHWM") - before
    after = _kb("VmRSS") - before
    print(
        json.dumps(
            {
                "outcome": outcomes[0],
                "seconds": seconds,
                "rss_growth_mb": growth / 1024,
                "rss_kept_mb": after / 1024,
                "pixels": pixels[0],
            }
        )
    )


def _small_png() -> bytes:
    from tests.support.decode import flat_png

    return flat_png(28, 28, value=10)


def cases(tmp: Path) -> list[tuple[str, list[Path], int]]:
    """(name, payload files of one request, concurrent requests)."""
    import numpy as np
    from PIL import Image

    from tests.support.decode import flat_png, flat_webp

    def save(name: str, data: bytes) -> Path:
        path = tmp / name
        path.write_bytes(data)
        return path

    webp = save("webp-16383x3000.webp", flat_webp(16383, 3000))
    png16 = save("png16-7071x7071.png", flat_png(7071, 7071, bit_depth=16))
    line = save("png-49999999x1.png", flat_png(49_999_999, 1))
    legal16 = save("png16-4096x4096.png", flat_png(4096, 4096, bit_depth=16, value=30000))
    legal8 = save("png-4096x4096.png", flat_png(4096, 4096, value=40))
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    small = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(small).resize((4032, 3024), Image.Resampling.NEAREST).save(buf, "JPEG", quality=85)
    phone = save("jpeg-4032x3024.jpg", buf.getvalue())
    return [
        (f"WebP 16383x3000 ({webp.stat().st_size:,} B)", [webp], 1),
        (f"16-bit PNG 7071x7071 ({png16.stat().st_size:,} B)", [png16], 1),
        (f"PNG 49,999,999x1 ({line.stat().st_size:,} B)", [line], 1),
        ("one request of 32 such WebPs", [webp] * 32, 1),
        ("4 concurrent 16-bit PNG 7071x7071 requests", [png16], 4),
        ("16-bit PNG 4096x4096 (largest legal)", [legal16], 1),
        ("one request of 32 PNGs 4096x4096", [legal8] * 32, 1),
        ("12 MP phone JPEG 4032x3024", [phone], 1),
    ]


def run_case(module: Path, files: list[Path], threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(module), "--threads", str(threads), *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        return {"outcome": f"crashed ({proc.returncode})", "seconds": float("nan"), "rss_growth_mb": 0, "pixels": 0}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before-ref", default="dc96e4a", help="git revision of the 'before' preprocessing module")
    p.add_argument("--repeats", type=int, default=3, help="runs per case (median time, max RSS)")
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
        before.write_bytes(
            subprocess.run(
                ["git", "show", f"{args.before_ref}:data_processing/preprocessing.py"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            ).stdout
        )
        after = ROOT / "data_processing" / "preprocessing.py"
        print(f"before = {args.before_ref}, after = working tree; median time, max peak-RSS growth of {args.repeats}")
        print(
            "| case | outcome before -> after | time s before -> after | peak RSS MB before -> after "
            "| pixels decoded before -> after |"
        )
        print("|---|---|---|---|---|")
        for name, files, threads in cases(tmp):
            rows = {}
            for label, module in (("before", before), ("after", after)):
                runs = [run_case(module, files, threads) for _ in range(args.repeats)]
                rows[label] = {
                    "outcome": runs[0]["outcome"],
                    "seconds": statistics.median(r["seconds"] for r in runs),
                    "rss": max(r["rss_growth_mb"] for r in runs),
                    "pixels": runs[0]["pixels"],
                }
            b, a = rows["before"], rows["after"]
            print(
                f"| {name} | {b['outcome']} -> {a['outcome']} | {b['seconds']:.3f} -> {a['seconds']:.3f} "
                f"| {b['rss']:,.0f} -> {a['rss']:,.0f} | {b['pixels']:,} -> {a['pixels']:,} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
