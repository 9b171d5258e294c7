"""The ingest manifest: the contract between ingestion (which writes it) and processing (which reads it).

``raw/manifest.jsonl`` in the store lists every ingested object, one JSON object per line, sorted by key:
``key, size, sha256, label, split`` (label: the class id from the ``<split>/<class_slug>/`` folders, or null;
split: ``train``/``test``, or null).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

RAW_PREFIX = "raw"
MANIFEST_KEY = "raw/manifest.jsonl"


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    size: int
    sha256: str
    label: int | None
    split: str | None


def encode_manifest(entries: Iterable[ManifestEntry]) -> bytes:
    """The manifest's bytes: one line per entry, sorted by key (pure)."""
    # A plain dict per entry: dataclasses.asdict deep-copies every field and was most of this function's time.
    lines = [
        json.dumps(
            {"key": e.key, "label": e.label, "sha256": e.sha256, "size": e.size, "split": e.split}, sort_keys=True
        )
        for e in sorted(entries, key=lambda e: e.key)
    ]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def decode_manifest(data: bytes) -> list[ManifestEntry]:
    """Parse ``raw/manifest.jsonl``; raises ValueError naming the bad line."""
    out = []
    for n, line in enumerate(data.decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(ManifestEntry(str(d["key"]), int(d["size"]), str(d["sha256"]), d.get("label"), d.get("split")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"manifest line {n} is malformed: {exc}") from exc
    return out
