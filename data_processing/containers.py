"""What an image file will cost to decode, read from its container before any decoder runs.

A decoder's work is not bounded by the pixels an image declares: a progressive JPEG may repeat one 98-byte scan
thousands of times, and every scan sweeps the whole declared frame (a 7000x7000 one with 2,000 scans held a worker
15 s); a PNG may carry 1.5 million tiny chunks that Pillow steps through in Python (11.6 s), a BMP megabytes of
run-length codes that Pillow decodes in Python (8.2 s). :func:`survey` walks the container (JPEG markers and scans,
PNG chunks, the BMP and WebP headers) with cheap byte scanning, never decoding, and stops as soon as a limit is
passed, so the walk itself is bounded too. It returns the decoding work at the declared size, in samples
decoded: for a JPEG the samples every scan covers, summed over its scans; for the other formats the declared
pixels, plus what the steps Pillow takes in Python cost (PNG chunks, run-length codes). Pure functions on bytes;
formats it does not know survey as empty (the decoder then decides).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

# Full-frame passes an image may cost per declared pixel: a libjpeg progressive YCbCr JPEG sweeps ~14 samples per
# pixel over its 10 scans (4:4:4; 8 at 4:2:0); twice that is headroom, a scan bomb needs hundreds.
WORK_PER_PIXEL = 20
MAX_JPEG_SCANS = 100  # encoders write 1 (baseline) to ~20 (optimised progressive)
MAX_JPEG_SEGMENTS = 1024  # markers other than scans: APPn, DQT, DHT, COM ... (Pillow parses those before a scan)
# PNG chunks Pillow steps through in Python (~3-8 us each): this many, plus one per 4 KiB of file (encoders write
# IDAT chunks of 8 KiB or more; an animation a few chunks per frame).
PNG_BASE_CHUNKS = 1024
PNG_BYTES_PER_CHUNK = 4096
# A run-length-coded BMP is decoded by Pillow in Python (~0.2 us a byte on the development machine, several
# times that on slower ones); a photo is never stored that way.
MAX_RLE_BYTES = 1 << 20
# What the Python-level steps cost, in samples decoded (~5 ns each in C): a PNG chunk, a run-length code byte.
PNG_CHUNK_WORK = 1000
RLE_BYTE_WORK = 32

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The next marker after a scan's entropy-coded data: 0xFF followed by neither a stuffed zero, a restart marker
# (those live inside the data) nor a fill byte.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: no length field
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


class WorkLimitExceeded(ValueError):
    """The container announces more decoding work than the limits allow; the message says what."""


@dataclass(frozen=True)
class Survey:
    """What the container says: its format (empty when not recognised), declared size and decoding work."""

    format: str = ""
    width: int = 0
    height: int = 0
    work: int = 0  # samples decoded at the declared size, over every pass
    progressive: bool = False  # a multi-scan JPEG: its coefficient buffer is full-size whatever the draft scale


def survey(data: bytes) -> Survey:
    """Walk ``data``'s container; raise :class:`WorkLimitExceeded` when its structure is over the limits (scans,
    segments, chunks, run-length codes). The work itself is checked by :func:`check_work`."""
    if data.startswith(b"\xff\xd8"):
        return _survey_jpeg(data)
    if data.startswith(_PNG_SIGNATURE):
        return _survey_png(data)
    if data.startswith(b"BM"):
        return _survey_bmp(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _survey_webp(data)
    return Survey()


def check_work(found: Survey, *, max_pixels: int) -> None:
    """Raise :class:`WorkLimitExceeded` when ``found.work`` is over ``WORK_PER_PIXEL`` passes of ``max_pixels``
    (the declared-pixel cap: the largest image allowed)."""
    max_work = WORK_PER_PIXEL * max_pixels
    if found.work > max_work:
        raise WorkLimitExceeded(
            f"decoding this {found.width}x{found.height} {found.format} would take {found.work:,} sample passes, "
            f"over the limit of {max_work:,} ({WORK_PER_PIXEL} passes of the largest allowed image)"
        )


@dataclass
class _Frame:
    width: int = 0
    height: int = 0
    progressive: bool = False
    samples: dict[int, int] | None = None  # component id -> samples at its sampling factors


def _survey_jpeg(data: bytes) -> Survey:
    frame = _Frame()
    pos = _walk_jpeg_header(data, frame)
    if pos < 0:
        return Survey("JPEG", frame.width, frame.height, 0, frame.progressive)
    first = data[pos + 4 : pos + 4 + 1 + 2 * data[pos + 4]] if pos + 4 < len(data) else b""
    if not frame.progressive and first and first[0] == len(frame.samples or {}):
        # A sequential JPEG whose first scan codes every component is read in one pass: libjpeg refuses a second
        # scan ("didn't expect more than one scan"), so nothing after it needs looking at (a phone photo's case).
        return Survey("JPEG", frame.width, frame.height, sum((frame.samples or {}).values()), False)
    # From the first scan to the end of the image only the scan headers matter. 0xFF 0xDA cannot occur inside
    # entropy-coded data (a 0xFF there is followed by 0x00 or a restart marker), so byte searches (C speed) find every
    # scan; one inside a segment between scans would be counted too, which only errs on the refusing side.
    end = data.find(b"\xff\xd9", pos)  # EOI: an MPO's further images follow; the decoder reads only the first
    end = len(data) if end < 0 else end
    scans, work = 0, 0
    while 0 <= pos < end:
        scans += 1
        if scans > MAX_JPEG_SCANS:
            raise WorkLimitExceeded(f"the JPEG has more than {MAX_JPEG_SCANS} scans (encoders write up to ~20)")
        length = struct.unpack_from(">H", data, pos + 2)[0] if pos + 4 <= len(data) else 0
        work += _scan_samples(data[pos + 4 : pos + 2 + length], frame)
        pos = data.find(b"\xff\xda", pos + 2, end)
    return Survey("JPEG", frame.width, frame.height, work, frame.progressive)


def _walk_jpeg_header(data: bytes, frame: _Frame) -> int:
    """Walk the marker segments before the first scan (what Pillow parses in Python), filling ``frame`` from the
    frame header; returns the position of the first scan, or -1."""
    pos, segments, end = 2, 0, len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:  # garbage between segments: libjpeg skips it with a warning
            nxt = _NEXT_MARKER.search(data, pos)
            if nxt is None:
                return -1
            pos = nxt.start()
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            return pos
        if marker == 0xD9:
            return -1
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > end:
            break
        length = struct.unpack_from(">H", data, pos + 2)[0]
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise WorkLimitExceeded(f"the JPEG has more than {MAX_JPEG_SEGMENTS} marker segments")
        if marker in _SOF and frame.samples is None:
            found = _parse_sof(data[pos + 4 : pos + 2 + length], progressive=marker in _PROGRESSIVE_SOF)
            frame.width, frame.height, frame.progressive, frame.samples = (
                found.width,
                found.height,
                found.progressive,
                found.samples,
            )
        pos += 2 + length
    return -1


def _parse_sof(body: bytes, *, progressive: bool) -> _Frame:
    if len(body) < 6:
        return _Frame(progressive=progressive, samples={})
    height, width, count = struct.unpack_from(">HHB", body, 1)
    comps = [body[6 + 3 * i : 9 + 3 * i] for i in range(count) if 9 + 3 * i <= len(body)]
    hmax = max((c[1] >> 4 for c in comps), default=1) or 1
    vmax = max((c[1] & 15 for c in comps), default=1) or 1
    samples = {
        c[0]: -(-width * (c[1] >> 4) // hmax) * -(-height * (c[1] & 15) // vmax)  # ceil, as libjpeg sizes them
        for c in comps
    }
    return _Frame(width, height, progressive, samples)


def _scan_samples(body: bytes, frame: _Frame) -> int:
    """Samples one scan covers: every sample of each component it codes (EOB runs or not, the decoder visits them)."""
    if not body or not frame.samples:
        return frame.width * frame.height
    ids = body[1 : 1 + 2 * body[0] : 2]
    return sum(frame.samples.get(i, 0) for i in ids)


def _survey_png(data: bytes) -> Survey:
    limit = PNG_BASE_CHUNKS + len(data) // PNG_BYTES_PER_CHUNK
    pos, chunks, width, height = 8, 0, 0, 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > limit:
            raise WorkLimitExceeded(
                f"the PNG has more than {limit:,} chunks for its {len(data):,} bytes "
                f"(at most {PNG_BASE_CHUNKS:,} plus one per {PNG_BYTES_PER_CHUNK:,} bytes)"
            )
        if kind == b"IHDR" and length >= 8:
            width, height = struct.unpack_from(">II", data, pos + 8)
        elif kind == b"IEND":
            break
        pos += 12 + length
    return Survey("PNG", width, height, width * height + PNG_CHUNK_WORK * chunks)


def _survey_bmp(data: bytes) -> Survey:
    if len(data) < 34:
        return Survey("BMP")
    offset, header = struct.unpack_from("<II", data, 10)
    if header < 40:  # OS/2 1.x core header: no compression
        return Survey("BMP")
    width, height, _, _, compression = struct.unpack_from("<iiHHI", data, 18)
    width, height = abs(width), abs(height)
    coded = max(0, len(data) - offset) if compression in (1, 2) else 0  # RLE8, RLE4
    if coded > MAX_RLE_BYTES:
        raise WorkLimitExceeded(
            f"the BMP holds {coded:,} bytes of run-length codes, over the limit of {MAX_RLE_BYTES:,} "
            "(they are decoded in Python)"
        )
    return Survey("BMP", width, height, width * height + RLE_BYTE_WORK * coded)


def _survey_webp(data: bytes) -> Survey:
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
    elif kind == b"VP8 " and len(data) >= 30:
        width, height = (v & 0x3FFF for v in struct.unpack_from("<HH", data, 26))
    elif kind == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    else:
        return Survey("WEBP")
    return Survey("WEBP", width, height, width * height)
