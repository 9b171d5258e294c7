"""The scoring ledger: which inputs each model version has scored, kept in the store itself (local or S3).

Layout, one folder per model version and run::

    ledger/<model_name>/v<version>/<run-id>/_RUN.json           written when the run starts
    ledger/<model_name>/v<version>/<run-id>/part-00000.parquet  key, sha256, size, md5, status, fingerprint
    ledger/<model_name>/v<version>/<run-id>/_DONE               written after the run's _SUCCESS

Every object is written atomically and durably (fsynced with its folder before it counts) and never modified, so the
ledger works on S3 without locks or read-modify-write. A ledger part is written right AFTER the output part it
describes. The one gap a SIGKILL can leave (output part committed, ledger part not yet written) is closed by
:meth:`Ledger.reconcile`, which rebuilds missing ledger parts from the committed output parts of the unfinished run
before anything new is scored.
Hence, by construction: an item is in the ledger iff it is in a committed output part.

An input is "already scored" when its key is in the ledger of ANY version of the model (:func:`history`) with the
same size, and the same MD5 and fingerprint (S3: ETag; local store: modification time in ns) when known: a photo
replaced under the same key is scored again, whatever its size. (Ledger parts rebuilt by :meth:`Ledger.reconcile`
know neither: size only.) A promotion does not score the history again (it re-scored every input under
``incoming/``, and listed already-routed items for review again); a rescore names what it scores again
(:func:`batch_prediction.rescore.rescore_scope`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from batch_prediction.outputs import PART_RE, committed_parts, parquet_to_table, table_to_parquet
from common.storage import ObjectInfo, Storage, join_key

log = logging.getLogger(__name__)

LEDGER_PREFIX = "ledger"
LEDGER_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("sha256", pa.string()),
        ("size", pa.int64()),
        ("md5", pa.string()),
        ("status", pa.string()),
        ("fingerprint", pa.string()),  # ObjectInfo.fingerprint when scored (absent in parts written before it)
    ]
)


@dataclass(frozen=True)
class LedgerEntry:
    sha256: str
    size: int
    md5: str | None
    status: str
    fingerprint: str | None = None


@dataclass(frozen=True)
class RunManifest:
    """What a started run is: enough for a later invocation to continue it."""

    run_id: str
    date: str
    output_prefix: str
    model_name: str
    model_version: str
    input_prefix: str
    rescore: bool
    started_at: str
    mlflow_run_id: str | None = None
    engine: str = "local"
    invocations: list[str] = field(default_factory=list)
    rescore_scope: str = ""  # with rescore: "" (every input), a key prefix, or a date range FROM..TO

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RunManifest:
        return cls(**json.loads(data))


@dataclass
class RunState:
    manifest: RunManifest
    done: bool
    ledger_parts: set[int]


def ledger_prefix(model_name: str, version: str) -> str:
    return f"{LEDGER_PREFIX}/{model_name}/v{version}"


def is_unchanged(info: ObjectInfo, entry: LedgerEntry) -> bool:
    """Same object as the one scored: equal size, and equal MD5 and fingerprint (S3 ETag, local modification
    time) when both sides know them. A photo replaced by another of the same size is caught by the fingerprint."""
    if info.size != entry.size:
        return False
    if info.md5 and entry.md5 and info.md5 != entry.md5:
        return False
    return not (info.fingerprint and entry.fingerprint and info.fingerprint != entry.fingerprint)


def select_todo(listing: Iterable[ObjectInfo], done: Mapping[str, LedgerEntry]) -> tuple[list[ObjectInfo], int]:
    """Split an input listing into (objects to score, number already scored). Pure."""
    todo: list[ObjectInfo] = []
    skipped = 0
    for info in listing:
        entry = done.get(info.key)
        if entry is not None and is_unchanged(info, entry):
            skipped += 1
        else:
            todo.append(info)
    return todo, skipped


def ledger_table(records: pa.Table, infos: Mapping[str, ObjectInfo]) -> pa.Table:
    """The ledger part of one output part: each record's key and content identity."""
    keys = records.column("key").to_pylist()
    return pa.Table.from_pydict(
        {
            "key": keys,
            "sha256": records.column("sha256").to_pylist(),
            "size": records.column("size").to_pylist(),
            "md5": [infos[k].md5 if k in infos else None for k in keys],
            "status": records.column("status").to_pylist(),
            "fingerprint": [infos[k].fingerprint if k in infos else None for k in keys],
        },
        schema=LEDGER_SCHEMA,
    )


class Ledger:
    """The ledger of one model version in one store."""

    def __init__(self, storage: Storage, model_name: str, version: str, *, io_threads: int = 16) -> None:
        self.storage = storage
        self.prefix = ledger_prefix(model_name, version)
        self.io_threads = io_threads

    def _key(self, run_id: str, name: str) -> str:
        return join_key(self.prefix, run_id, name)

    def runs(self) -> dict[str, RunState]:
        """Every run of this version, from one listing of the ledger folder."""
        parts: dict[str, set[int]] = {}
        done: set[str] = set()
        manifests: list[str] = []
        for info in self.storage.list(self.prefix + "/"):
            rel = info.key[len(self.prefix) + 1 :]
            run_id, _, name = rel.partition("/")
            if name == "_RUN.json":
                manifests.append(run_id)
            elif name == "_DONE":
                done.add(run_id)
            elif m := PART_RE.fullmatch(name):
                parts.setdefault(run_id, set()).add(int(m.group(1)))
        out: dict[str, RunState] = {}
        for run_id in manifests:
            manifest = RunManifest.from_bytes(self.storage.get_bytes(self._key(run_id, "_RUN.json")))
            out[run_id] = RunState(manifest, run_id in done, parts.get(run_id, set()))
        return out

    def write_manifest(self, manifest: RunManifest) -> None:
        self.storage.put_bytes(self._key(manifest.run_id, "_RUN.json"), manifest.to_bytes(), durable=True)

    def write_part(self, run_id: str, part: int, table: pa.Table) -> None:
        self.storage.put_bytes(self._key(run_id, f"part-{part:05d}.parquet"), table_to_parquet(table), durable=True)

    def mark_done(self, run_id: str) -> None:
        self.storage.put_bytes(self._key(run_id, "_DONE"), b"", durable=True)

    def run_prefix(self, run_id: str) -> str:
        """The folder holding one run's manifest, parts and ``_DONE``."""
        return join_key(self.prefix, run_id)

    def reconcile(self, state: RunState) -> int:
        """Write the ledger parts missing for output parts that were committed (a kill between the two).

        The output part holds key, sha256, size and status; the MD5 is left unknown, which
        :func:`is_unchanged` treats as "compare sizes only".
        """
        committed = committed_parts(self.storage, state.manifest.output_prefix)
        missing = sorted(set(committed) - state.ledger_parts)
        for part in missing:
            records = parquet_to_table(
                self.storage.get_bytes(committed[part]), columns=["key", "sha256", "size", "status"]
            )
            self.write_part(state.manifest.run_id, part, ledger_table(records, {}))
            state.ledger_parts.add(part)
            log.warning("reconciled ledger part %d of run %s from its committed output", part, state.manifest.run_id)
        return len(missing)

    def entries(self, run_ids: Iterable[str], runs: Mapping[str, RunState]) -> dict[str, LedgerEntry]:
        """Key -> entry over the ledger parts of ``run_ids`` (later runs win)."""
        keys = [
            self._key(run_id, f"part-{part:05d}.parquet")
            for run_id in sorted(run_ids, key=lambda r: (runs[r].manifest.started_at, r))
            for part in sorted(runs[run_id].ledger_parts)
        ]
        out: dict[str, LedgerEntry] = {}
        with ThreadPoolExecutor(self.io_threads) as pool:
            for data in pool.map(self.storage.get_bytes, keys):
                t = parquet_to_table(data).to_pydict()
                fingerprints = t.get("fingerprint") or [None] * len(t["key"])
                for k, sha, size, md5, status, fp in zip(
                    t["key"], t["sha256"], t["size"], t["md5"], t["status"], fingerprints, strict=True
                ):
                    out[k] = LedgerEntry(sha, int(size) if size is not None else -1, md5, status, fp)
        return out


def history(storage: Storage, model_name: str, *, exclude_run: str | None = None) -> dict[str, LedgerEntry]:
    """Key -> entry over every run of every version of ``model_name`` in the store but ``exclude_run`` (later runs
    win): what has been scored, and routed, already."""
    versions = {
        info.key[len(LEDGER_PREFIX) + len(model_name) + 2 :].split("/", 1)[0]
        for info in storage.list(f"{LEDGER_PREFIX}/{model_name}/")
    }
    ordered: list[tuple[str, str, Ledger, dict[str, RunState]]] = []
    for folder in sorted(v for v in versions if v.startswith("v")):
        ledger = Ledger(storage, model_name, folder[1:])
        runs = ledger.runs()
        ordered += [(state.manifest.started_at, run_id, ledger, runs) for run_id, state in runs.items()]
    out: dict[str, LedgerEntry] = {}
    for _, run_id, ledger, runs in sorted(ordered, key=lambda t: (t[0], t[1])):
        if run_id != exclude_run:
            out.update(ledger.entries([run_id], runs))
    return out


__all__ = [
    "LEDGER_PREFIX",
    "Ledger",
    "LedgerEntry",
    "RunManifest",
    "RunState",
    "history",
    "is_unchanged",
    "ledger_table",
    "select_todo",
]
