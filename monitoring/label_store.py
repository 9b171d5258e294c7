"""The labels people give returned items: one append-only store under ``labels/``, three ways in.

The three ways in: the review page of the dashboard, ``POST /labels`` (bearer ``REVIEW_TOKEN``) and the
``ric labels import`` command (``monitoring.labels``, the script over this module).

A label binds an item's key AND its content hash (SHA-256 of the stored photo) to an answer: one of the 10
classes, ``other`` (not one of the 10) or ``unusable`` (the photo cannot be judged), with who gave it, when and
how (``review-page``, ``api`` or ``csv``). A replaced photo has another hash, so it does not inherit a label.

Layout: one object per submission, written once, atomically and durably, never modified::

    labels/submissions/<submission-id>.json   {"id", "recorded_at", "how", "who", "source", "labels": [...]}

So a submission is in the store whole or not at all, whatever is killed when; the history is the set of
submissions, and the label in force for an item (key, hash) is its latest: by ``recorded_at``, then submission id,
then row order. A submission's id is a digest of what it says (``how`` and its rows) unless the caller passes an
idempotency key, so importing the same CSV twice stores it once; the review page and the API send an idempotency
key per submission (a retried request counts once, a later change of mind is a new submission).

Rows are checked before anything is written (:meth:`LabelStore.submit`): the key must name a photo under the
input prefix (``unknown_item``), the hash must be its current content (``stale_content_hash``), the answer one of
:data:`LABEL_VALUES` or a class id (``unknown_class``), the row whole (``malformed_row``). Bad rows are reported
one by one and the good rest is stored.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from common.labels import CLASS_NAMES
from common.storage import ObjectNotFound, ObjectTooLarge, Storage, sha256_hex

LABELS_PREFIX = "labels"
SUBMISSIONS_PREFIX = f"{LABELS_PREFIX}/submissions/"
OTHER = "other"  # not one of the 10 categories
UNUSABLE = "unusable"  # the photo cannot be judged (blurred, empty, several items)
LABEL_VALUES: tuple[str, ...] = (*CLASS_NAMES, OTHER, UNUSABLE)
HOW = ("review-page", "api", "csv")
MAX_ROWS = 100_000  # one submission; a bigger spreadsheet is split by the caller
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ALIASES = {
    "not one of the 10": OTHER,
    "none": OTHER,
    "unusable photo": UNUSABLE,
    **{name.lower(): name for name in CLASS_NAMES},
    **{str(i): name for i, name in enumerate(CLASS_NAMES)},
    "tshirt": "T-shirt/top",
    "t-shirt": "T-shirt/top",
    "t-shirt_top": "T-shirt/top",
    "ankle_boot": "Ankle boot",
}


class LabelError(ValueError):
    """A submission that cannot be taken at all (too many rows, a bad ``how``)."""


@dataclass(frozen=True)
class Label:
    """One answer for one item, as stored."""

    key: str
    sha256: str
    label: str
    who: str
    how: str
    recorded_at: str
    submission: str

    @property
    def class_id(self) -> int | None:
        """The class index, or None for ``other`` / ``unusable``."""
        return CLASS_NAMES.index(self.label) if self.label in CLASS_NAMES else None


@dataclass(frozen=True)
class RowError:
    """Why one row was not stored: ``row`` is its index in the submission (a CSV's line number for imports)."""

    row: int
    code: str  # malformed_row | unknown_item | stale_content_hash | unknown_class
    message: str
    key: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class SubmitResult:
    """What a submission did: its id, the rows stored, the rows refused, and whether it was already stored."""

    submission: str | None
    accepted: int
    errors: list[RowError] = field(default_factory=list)
    duplicate: bool = False
    blank: int = 0  # rows without an answer (a spreadsheet's unlabelled rows): neither stored nor an error

    def to_dict(self) -> dict[str, object]:
        return {
            "submission": self.submission,
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "blank": self.blank,
            "rejected": [e.to_dict() for e in self.errors],
        }


def parse_label(value: object) -> str | None:
    """An answer as stored: a class name (any case), a class id 0-9, ``other`` or ``unusable`` (or their long
    forms); None when it is none of these."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return CLASS_NAMES[value] if 0 <= value < len(CLASS_NAMES) else None
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    if text in LABEL_VALUES:
        return text
    return _ALIASES.get(text.lower())


class ItemChecker:
    """Is (key, hash) a photo in the store as it is now? Keys must lie under ``input_prefix``; the object's hash
    is computed once per key and call site (a submission of 1,000 rows reads each photo once)."""

    def __init__(self, storage: Storage, input_prefix: str = "incoming/", max_bytes: int = 20 * 1024 * 1024) -> None:
        self.storage = storage
        self.input_prefix = input_prefix.lstrip("/")
        self.max_bytes = max_bytes
        self._hashes: dict[str, str | None] = {}

    def current_sha(self, key: str) -> str | None:
        if key not in self._hashes:
            try:
                self._hashes[key] = sha256_hex(self.storage.get_bytes(key, max_bytes=self.max_bytes))
            except (ObjectNotFound, ObjectTooLarge, OSError, ValueError):
                self._hashes[key] = None
        return self._hashes[key]

    def check(self, key: str, sha: str) -> tuple[str, str] | None:
        """None if the item is known with this content, else (code, message)."""
        if not key.startswith(self.input_prefix) or ".." in key.split("/"):
            return "unknown_item", f"{key!r} is not a photo under {self.input_prefix!r}"
        current = self.current_sha(key)
        if current is None:
            return "unknown_item", f"no photo {key!r} in the store"
        if current != sha:
            return "stale_content_hash", f"{key!r} has been replaced since (its content hash is now {current[:12]}…)"
        return None


def validate_rows(rows: Sequence[Mapping[str, object]], checker: ItemChecker, *, first_row: int = 0) -> tuple[
    list[tuple[int, str, str, str]], list[RowError], int
]:  # fmt: skip
    """Split ``rows`` ({key, sha256, label}) into good ones ``(row, key, sha256, label)``, errors and blanks."""
    good: list[tuple[int, str, str, str]] = []
    errors: list[RowError] = []
    blank = 0
    for i, row in enumerate(rows, start=first_row):
        if not isinstance(row, Mapping):
            errors.append(RowError(i, "malformed_row", "a row must be an object with key, sha256 and label"))
            continue
        key, sha, raw = row.get("key"), row.get("sha256"), row.get("label")
        if (raw is None or (isinstance(raw, str) and not raw.strip())) and (key or sha):
            blank += 1  # a spreadsheet's row nobody answered yet
            continue
        if not isinstance(key, str) or not key.strip():
            errors.append(RowError(i, "malformed_row", "the row has no key"))
            continue
        key = key.strip()
        if not isinstance(sha, str) or not _SHA_RE.match(sha.strip().lower()):
            errors.append(RowError(i, "malformed_row", "sha256 must be the photo's 64 hex digit SHA-256", key))
            continue
        sha = sha.strip().lower()
        label = parse_label(raw)
        if label is None:
            errors.append(
                RowError(i, "unknown_class", f"{raw!r} is not one of {', '.join(LABEL_VALUES)} or a class id", key)
            )
            continue
        problem = checker.check(key, sha)
        if problem is not None:
            errors.append(RowError(i, problem[0], problem[1], key))
            continue
        good.append((i, key, sha, label))
    return good, errors, blank


def submission_id(how: str, rows: Iterable[tuple[str, str, str]], idempotency_key: str | None = None) -> str:
    """The id a submission is stored under: a digest of ``how`` and its rows, or of the caller's idempotency key."""
    h = hashlib.sha256(how.encode())
    if idempotency_key is not None:
        h.update(b"\0key\0" + idempotency_key.encode())
    else:
        for key, sha, label in rows:
            h.update(f"\0{key}\0{sha}\0{label}".encode())
    return h.hexdigest()[:32]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class LabelStore:
    """The labels under ``labels/`` of one store. Reads are cached per submission object (objects never change),
    so re-reading after new submissions only fetches the new ones; safe to share between threads."""

    def __init__(self, storage: Storage, clock: Callable[[], str] = _now) -> None:
        self.storage = storage
        self.clock = clock
        self._cache: dict[str, dict] = {}
        self._lock = threading.Lock()

    # --- writing ---------------------------------------------------------------------------------------------

    def submit(
        self,
        rows: Sequence[Mapping[str, object]],
        *,
        who: str,
        how: str,
        checker: ItemChecker,
        source: str | None = None,
        idempotency_key: str | None = None,
        first_row: int = 0,
    ) -> SubmitResult:
        """Check ``rows`` and store the good ones as ONE submission (atomically, durably); refuse the bad ones one
        by one. An already-stored submission (same id) is not stored again."""
        if how not in HOW:
            raise LabelError(f"how must be one of {', '.join(HOW)}, got {how!r}")
        if len(rows) > MAX_ROWS:
            raise LabelError(f"{len(rows):,} rows in one submission; the limit is {MAX_ROWS:,}")
        good, errors, blank = validate_rows(rows, checker, first_row=first_row)
        if not good:
            return SubmitResult(None, 0, errors, blank=blank)
        sub_id = submission_id(how, ((k, s, lab) for _, k, s, lab in good), idempotency_key)
        key = f"{SUBMISSIONS_PREFIX}{sub_id}.json"
        if self.storage.exists(key):
            return SubmitResult(sub_id, len(good), errors, duplicate=True, blank=blank)
        body = {
            "id": sub_id,
            "recorded_at": self.clock(),
            "how": how,
            "who": who.strip() or "unknown",
            "source": source,
            "labels": [{"row": r, "key": k, "sha256": s, "label": lab} for r, k, s, lab in good],
        }
        self.storage.put_bytes(key, json.dumps(body, indent=1).encode(), content_type="application/json", durable=True)
        return SubmitResult(sub_id, len(good), errors, blank=blank)

    # --- reading ---------------------------------------------------------------------------------------------

    def submissions(self) -> list[dict]:
        """Every submission, oldest first (by ``recorded_at``, then id)."""
        with self._lock:
            for info in self.storage.list(SUBMISSIONS_PREFIX):
                if info.key.endswith(".json") and info.key not in self._cache:
                    try:
                        self._cache[info.key] = json.loads(self.storage.get_bytes(info.key))
                    except ObjectNotFound:  # deleted by an operator while listing
                        continue
            subs = list(self._cache.values())
        return sorted(subs, key=lambda s: (s["recorded_at"], s["id"]))

    def history(self) -> list[Label]:
        """Every label ever given, oldest first."""
        out = []
        for sub in self.submissions():
            for row in sub["labels"]:
                who, how, at = sub["who"], sub["how"], sub["recorded_at"]
                out.append(Label(row["key"], row["sha256"], row["label"], who, how, at, sub["id"]))
        return out

    def current(self) -> dict[tuple[str, str], Label]:
        """The label in force for each labelled item (key, content hash): its latest."""
        latest: dict[tuple[str, str], Label] = {}
        for label in self.history():
            latest[(label.key, label.sha256)] = label
        return latest


def digest_of(labels: Iterable[Label]) -> str:
    """A content digest of a label set (the items, hashes and answers, order-free): logged with a training run."""
    h = hashlib.sha256()
    for lab in sorted(labels, key=lambda x: (x.key, x.sha256)):
        h.update(f"{lab.key}\0{lab.sha256}\0{lab.label}\n".encode())
    return h.hexdigest()


# --- the spreadsheet way in ------------------------------------------------------------------------------------


class CsvError(ValueError):
    """The file as a whole cannot be read as a labels CSV (not UTF-8, no header, no key/sha256/label column)."""


def read_label_csv(data: bytes) -> tuple[list[dict[str, object]], list[RowError]]:
    """The rows of a night's CSV with a ``label`` column: ``({key, sha256, label, row}, malformed rows)``. ``row`` is
    the line number (the header is line 1). Raises :class:`CsvError` for a file that is not such a CSV at all."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise CsvError("the file is empty") from None
    except csv.Error as exc:
        raise CsvError(f"unreadable header: {exc}") from exc
    names = [h.strip().lower() for h in header]
    missing = [c for c in ("key", "sha256", "label") if c not in names]
    if missing:
        raise CsvError(f"no {', '.join(missing)} column (the header is {', '.join(header) or 'empty'})")
    col = {c: names.index(c) for c in ("key", "sha256", "label")}
    rows: list[dict[str, object]] = []
    errors: list[RowError] = []
    line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            line = reader.line_num
            errors.append(RowError(line, "malformed_row", f"unreadable CSV: {exc}"))
            continue
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            key = fields[col["key"]] if len(fields) > col["key"] else None
            errors.append(
                RowError(line, "malformed_row", f"{len(fields)} fields where the header has {len(header)}", key)
            )
            continue
        rows.append({"row": line, **{c: fields[i] for c, i in col.items()}})
    return rows, errors


def import_csv(
    store: LabelStore, data: bytes, *, who: str, checker: ItemChecker, source: str | None = None
) -> SubmitResult:
    """Import a night's CSV with a ``label`` column as one submission; per-row errors carry line numbers."""
    rows, malformed = read_label_csv(data)
    result = store.submit(rows, who=who, how="csv", checker=checker, source=source)
    lines = [int(r["row"]) for r in rows]  # validate_rows numbered the rows by position: give back line numbers
    fixed = [RowError(lines[e.row], e.code, e.message, e.key) for e in result.errors]
    result.errors = sorted(malformed + fixed, key=lambda e: e.row)
    return result


# --- the command -------------------------------------------------------------------------------------------------


def summarize(store: LabelStore) -> dict[str, object]:
    """Counts of the store: labelled items, labels given (history), submissions, per answer and per way in."""
    current = store.current()
    by_label: dict[str, int] = {}
    by_how: dict[str, int] = {}
    for lab in current.values():
        by_label[lab.label] = by_label.get(lab.label, 0) + 1
        by_how[lab.how] = by_how.get(lab.how, 0) + 1
    return {
        "items": len(current),
        "labels_given": len(store.history()),
        "submissions": len(store.submissions()),
        "by_label": dict(sorted(by_label.items())),
        "by_how": dict(sorted(by_how.items())),
        "digest": digest_of(current.values()),
    }
