"""One small object-storage interface with two implementations, chosen by ``STORAGE_URI``.

* a local folder (the embedded default, zero set-up): writes are atomic (temporary file, then rename);
* S3 through boto3 (``s3://bucket/prefix``): paginated listing, botocore ``standard`` retries with bounded
  attempts (503 SlowDown is retried), SHA-256 checksums on upload and validation on download, and the
  usual AWS configuration (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, credentials variables) honoured by boto3.

Keys are ``/``-separated and relative to the storage root, e.g. ``raw/train/Bag/17.png``, and always valid UTF-8
text on one line. A local folder may hold what a bucket cannot (names that are not UTF-8, FIFOs, sockets, devices,
broken or directory links, folders nested without end): its listing reports them with their
:attr:`ObjectInfo.kind` (and an escaped key) instead of hiding them or handing out a key that cannot be written to
Parquet, and reading one never blocks: only regular files are read, opened non-blocking. A local listing walks
iteratively and stops :data:`MAX_KEY_DEPTH` folders down (each folder there is listed as one entry); names with
a control character (a newline) are listed escaped, on both stores. ``get_bytes(..., max_bytes=N)`` refuses an
object over N bytes before it is read (local: from ``fstat``; S3: from the response's Content-Length).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # settings is the stage level's business; the store only reads two of its fields
    from common.settings import Settings

TMP_PREFIX = ".tmp-"


class ObjectNotFound(FileNotFoundError):
    """The key does not exist in the store."""


class NotARegularObject(OSError):
    """The entry behind the key is not a regular file (FIFO, socket, device, ...): it is never read."""


class ObjectTooLarge(OSError):
    """The object is over the byte cap the reader asked for; nothing (or no more than the cap) was read."""


# ObjectInfo.kind: what a listed entry is. Only KIND_FILE can be read; the others are reported, never opened.
KIND_FILE = "file"
KIND_FIFO = "fifo"
KIND_SOCKET = "socket"
KIND_DEVICE = "device"
KIND_BROKEN_LINK = "broken_link"
KIND_DIRECTORY_LINK = "directory_link"
KIND_INVALID_NAME = "invalid_name"  # not UTF-8, or a control character: the key is escaped (see escape_key)
KIND_OTHER = "other"
KIND_DEEP_FOLDER = "deep_folder"  # a folder deeper than MAX_KEY_DEPTH: listed as itself, its contents are not
KIND_UNREADABLE_FOLDER = "unreadable_folder"  # a folder that could not be listed (permissions, path too long)
KIND_UNREADABLE = "unreadable"  # an entry that could not be examined (permissions, path too long)
KIND_TEMPORARY = "temporary"  # a writer's unfinished temporary file (listed only when asked for)

# Folders a key may have below the store root. A local listing walks no deeper (1,100 nested folders made the
# recursive walk raise RecursionError and stopped every night); each folder at the limit is listed as one
# KIND_DEEP_FOLDER entry, so what it holds is reported, never silently skipped.
MAX_KEY_DEPTH = 32
# Control characters (a newline in a file name broke every line-based reader of the night's CSVs) and the
# Unicode line breaks: names holding one are listed escaped, as KIND_INVALID_NAME.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    md5: str | None = None  # hex MD5 of the content when the store knows it cheaply (S3 single-part ETag)
    kind: str = KIND_FILE
    # A cheap token that changes when the object is replaced, whatever its size: the ETag on S3 (multipart ones
    # too), the modification time in nanoseconds on a local store. None when unknown.
    fingerprint: str | None = None


def escape_key(name: str) -> str:
    """A file name as valid UTF-8 text on one line: undecodable bytes (which ``os`` hands out as lone surrogates)
    become ``\\xNN``, control characters ``\\xNN`` (or ``\\uNNNN``). Plain names come back unchanged."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", text
    )


def _is_text(name: str) -> bool:
    """Valid UTF-8 and free of control characters: a key every output can hold on one line."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return _CONTROL.search(name) is None


def entry_kind(path: str) -> tuple[str, int, str | None]:
    """(kind, size, fingerprint) of the directory entry at ``path``, following a symbolic link; raises
    FileNotFoundError if the entry itself is gone. Never opens the entry."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError:  # missing target, a link loop (ELOOP) or an unreadable target
            return KIND_BROKEN_LINK, 0, None
        if stat.S_ISDIR(st.st_mode):
            return KIND_DIRECTORY_LINK, 0, None
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return KIND_FILE, st.st_size, str(st.st_mtime_ns)
    if stat.S_ISFIFO(mode):
        return KIND_FIFO, 0, None
    if stat.S_ISSOCK(mode):
        return KIND_SOCKET, 0, None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return KIND_DEVICE, 0, None
    return KIND_OTHER, 0, None


@runtime_checkable
class Storage(Protocol):
    uri: str

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None, durable: bool = False) -> None:
        """Store ``data`` under ``key`` atomically: readers see the old object or the whole new one.

        ``durable``: when this returns, the object survives a crash or power cut (a commit point)."""

    def get_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """Return the object's bytes; raise :class:`ObjectNotFound` if absent, :class:`ObjectTooLarge` if it is over
        ``max_bytes`` (checked before reading), :class:`NotARegularObject` if it is not a regular file."""

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "", *, temporaries: bool = False) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order, however many there are.

        ``temporaries``: also list what unfinished writes of this store look like (kind ``temporary``)."""

    def delete(self, key: str) -> None: ...

    def copy(self, src_key: str, dst_key: str) -> None: ...

    def remove_temporaries(self, prefix: str) -> int:
        """Delete what killed writers left under ``prefix`` (their temp files); return how many.

        Only call it while no other writer works under ``prefix``: a live writer's temp file looks the same.
        """


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(folder: str) -> list[str]:
    """Create ``folder`` and its missing parents; return the folders created, outermost first."""
    missing: list[str] = []
    probe = folder
    while probe and not os.path.isdir(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    os.makedirs(folder, exist_ok=True)
    return missing[::-1]


def atomic_write(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename): readers see the old file or the whole new one.

    ``durable``: the file is fsynced before the rename and its folder (and any folder this call created) after it,
    so once this returns the object survives a power cut. Without it a committed file can come back empty after a
    crash (the rename reached the disk before the data). Commit points of the nightly job are written durably;
    bulk data (70,000 ingested images) is not, which would cost an fsync each.

    The parent folder is created only when the first attempt finds it missing: in a 70,000-file run a per-file
    mkdir is a wasted syscall.
    """
    folder, _, name = os.fspath(path).rpartition("/")
    tmp = f"{folder}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}"
    created: list[str] = []
    try:
        fh = open(tmp, "xb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:  # first file in this folder
        created = _makedirs(folder)
        fh = open(tmp, "xb")  # noqa: SIM115
    try:
        with fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(folder)
        for made in created:
            fsync_dir(os.path.dirname(made) or ".")


def write_if_changed(path: str | os.PathLike[str], data: bytes) -> bool:
    """Atomically write ``data`` unless the file already holds exactly these bytes. Returns True if written.

    Creates the parent folder when needed (only then: a per-file mkdir is a wasted syscall in a 70,000-file run).
    """
    try:
        if os.stat(path).st_size == len(data):
            with open(path, "rb") as fh:
                if fh.read() == data:
                    return False
    except FileNotFoundError:
        pass
    atomic_write(path, data)
    return True


def is_storage_error(exc: BaseException) -> bool:
    """Is ``exc`` the store itself failing (missing bucket, access denied, endpoint down: botocore's errors; the
    local store's OS errors), as opposed to a bug? The stages report those in one line, not a traceback."""
    return isinstance(exc, OSError) or type(exc).__module__.startswith("botocore")


WALK_ENTRY, WALK_DEEP, WALK_UNREADABLE = "entry", "deep", "unreadable"


def walk_tree(start: str, root: str) -> Iterator[tuple[str, os.DirEntry[str] | None, str]]:
    """``(folder key relative to root, entry, what)`` under ``start``, walking iteratively (no recursion, whatever
    the depth). ``what``: ``entry`` for everything but a walked folder (files, links, FIFOs, ...); ``deep`` for a
    folder at :data:`MAX_KEY_DEPTH`, yielded and not entered; ``unreadable`` (entry None) for a folder that could
    not be listed. Symbolic links are never followed."""
    stack = [start]
    while stack:
        folder = stack.pop()
        rel = os.path.relpath(folder, root)
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except FileNotFoundError:  # deleted while listing
            continue
        except OSError:  # permissions, a path over PATH_MAX: reported, not skipped
            yield rel, None, WALK_UNREADABLE
            continue
        depth = rel.count("/") + 1 if rel else 0
        for entry in entries:
            if not _is_real_dir(entry):
                yield rel, entry, WALK_ENTRY
            elif depth + 1 >= MAX_KEY_DEPTH:
                yield rel, entry, WALK_DEEP
            else:
                stack.append(entry.path)


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _folder_info(key: str, what: str) -> ObjectInfo:
    """A folder as a listing reports it: deeper than the limit, or unreadable (walked folders are not listed)."""
    return ObjectInfo(
        key=escape_key(key), size=0, kind=KIND_DEEP_FOLDER if what == WALK_DEEP else KIND_UNREADABLE_FOLDER
    )


def _entry_info(key: str, path: str, *, temporary: bool) -> ObjectInfo | None:
    """The listing entry of a non-folder (None if it vanished while listing)."""
    try:
        kind, size, fingerprint = entry_kind(path)
    except FileNotFoundError:
        return None
    except OSError:
        kind, size, fingerprint = KIND_UNREADABLE, 0, None
    if not _is_text(key):
        key, kind = escape_key(key), KIND_INVALID_NAME
    elif temporary:
        kind = KIND_TEMPORARY
    return ObjectInfo(key=key, size=size, kind=kind, fingerprint=fingerprint)


class LocalStorage:
    """A folder on disk. Safe for concurrent writers of different keys; each write is atomic."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)
        # Resolved directories by relative key prefix. Resolving a key's full path costs one lstat per path
        # component (~8 syscalls), which dominated small-object puts/gets; a store's directories are few and
        # are created by this class, so each is resolved (and checked against the root) once.
        self._dirs: dict[str, str] = {}

    def _fspath(self, key: str) -> str:
        """The checked file-system path of ``key``; same result as ``(root / key).resolve()`` plus the root check."""
        key = key.strip("/")
        parent, _, name = key.rpartition("/")
        base = self._dirs.get(parent)
        if base is None or name in ("", ".", ".."):
            return str(self._resolved(key))
        path = base + name
        if os.path.islink(path):  # a symlinked object: let resolve() follow and check it
            return str(self._resolved(key))
        return path

    def _resolved(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"key escapes the storage root: {key!r}")
        parent = key.rpartition("/")[0]
        if parent not in self._dirs:
            real_parent = (self.root / parent).resolve()
            if (real_parent == self.root or self.root in real_parent.parents) and real_parent.is_dir():
                self._dirs[parent] = str(real_parent).rstrip("/") + "/"
        return path

    def _path(self, key: str) -> Path:
        return Path(self._fspath(key))

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None, durable: bool = False) -> None:
        atomic_write(self._fspath(key), data, durable=durable)

    def get_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        path = self._fspath(key)
        try:
            # Non-blocking: opening a FIFO without a writer would otherwise wait forever (it hung the nightly job).
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"{self.uri}/{key}") from exc
        with open(fd, "rb", closefd=True) as fh:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise ObjectNotFound(f"{self.uri}/{key}")
            if not stat.S_ISREG(st.st_mode):
                raise NotARegularObject(f"{key} is not a regular file")
            if max_bytes is not None:
                if st.st_size > max_bytes:
                    raise ObjectTooLarge(f"{st.st_size:,} bytes is over the cap of {max_bytes:,}")
                data = fh.read(max_bytes + 1)
                if len(data) > max_bytes:  # grew since fstat
                    raise ObjectTooLarge(f"more than the cap of {max_bytes:,} bytes")
                return data
            return fh.read()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "", *, temporaries: bool = False) -> Iterator[ObjectInfo]:
        # Walk only the deepest directory the prefix names, then filter on the remainder.
        prefix = prefix.lstrip("/")
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(base_dir) if base_dir else self.root
        if not start.is_dir():
            return
        found: list[ObjectInfo] = []
        for rel_dir, entry, what in walk_tree(str(start), str(self.root)):
            name = entry.name if entry is not None else ""
            key = f"{rel_dir}/{name}".strip("/")
            if not key.startswith(prefix) and not (what == WALK_UNREADABLE and prefix.startswith(key + "/")):
                continue
            if what != WALK_ENTRY:
                found.append(_folder_info(key, what))
                continue
            if name.startswith(TMP_PREFIX) and not temporaries:
                continue
            info = _entry_info(key, entry.path, temporary=name.startswith(TMP_PREFIX))
            if info is not None:
                found.append(info)
        found.sort(key=lambda info: info.key)
        yield from found

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def copy(self, src_key: str, dst_key: str) -> None:
        self.put_bytes(dst_key, self.get_bytes(src_key))

    def remove_temporaries(self, prefix: str) -> int:
        prefix = prefix.strip("/")
        start = self._path(prefix) if prefix else self.root
        if not start.is_dir():
            return 0
        removed = 0
        for _, entry, what in walk_tree(str(start), str(self.root)):
            if what == WALK_ENTRY and entry is not None and entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def local_path(self, key: str) -> Path:
        """The file behind ``key`` (local store only; lets fast paths skip a copy)."""
        return self._path(key)


class S3Storage:
    """An S3 bucket (and optional prefix), via boto3. Works with AWS and any S3-compatible endpoint."""

    # boto3/botocore are imported in the methods, not at the top: importing them makes ``import common.storage``
    # 0.26 s instead of 0.07 s (medians of 5, 2-core machine, load ~3), a cost every stage and the API would pay at
    # start-up although the default store is a local folder.

    def __init__(
        self,
        uri: str,
        *,
        endpoint_url: str | None = None,
        max_attempts: int = 10,
        max_pool_connections: int = 32,
        client: object | None = None,
    ) -> None:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"S3 URI has no bucket: {uri!r}")
        self.uri = uri.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "total_max_attempts": max_attempts},  # first try included
                max_pool_connections=max_pool_connections,
                request_checksum_calculation="when_supported",
                response_checksum_validation="when_supported",
            )
            # boto3 reads AWS_ENDPOINT_URL, AWS_PROFILE, credentials and region itself; an explicit
            # endpoint (from a CLI flag) wins.
            session = boto3.session.Session()
            client = session.client("s3", endpoint_url=endpoint_url or None, config=config)
        self.client = client

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None, durable: bool = False) -> None:
        # An S3 PUT is durable once acknowledged: ``durable`` needs nothing more here.
        extra = {"ContentType": content_type} if content_type else {}
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ChecksumAlgorithm="SHA256", **extra)

    def get_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED")
        except self.client.exceptions.NoSuchKey as exc:
            raise ObjectNotFound(f"{self.uri}/{key}") from exc
        size = int(resp.get("ContentLength") or 0)
        if max_bytes is not None and size > max_bytes:
            resp["Body"].close()  # the body is streamed: nothing beyond the headers was read
            raise ObjectTooLarge(f"{size:,} bytes is over the cap of {max_bytes:,}")
        return resp["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def list(self, prefix: str = "", *, temporaries: bool = False) -> Iterator[ObjectInfo]:
        # A PUT is atomic: a bucket holds no unfinished writes, so ``temporaries`` changes nothing here.
        paginator = self.client.get_paginator("list_objects_v2")
        full_prefix = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        if prefix.endswith("/") and not full_prefix.endswith("/"):
            full_prefix += "/"
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for obj in page.get("Contents", []):
                etag = obj.get("ETag", "").strip('"')
                md5 = etag if len(etag) == 32 and "-" not in etag else None
                key, kind = self._rel(obj["Key"]), KIND_FILE
                if not _is_text(key):  # a control character: listed escaped, never read under that name
                    key, kind = escape_key(key), KIND_INVALID_NAME
                yield ObjectInfo(key=key, size=int(obj["Size"]), md5=md5, kind=kind, fingerprint=etag or None)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def remove_temporaries(self, prefix: str) -> int:
        return 0  # an S3 PUT is atomic: a killed upload leaves no object behind

    def copy(self, src_key: str, dst_key: str) -> None:
        self.client.copy_object(
            Bucket=self.bucket,
            Key=self._key(dst_key),
            CopySource={"Bucket": self.bucket, "Key": self._key(src_key)},
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (demo and test endpoints start empty)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            # Only a missing bucket is created; 403 and friends must surface, not turn into a CreateBucket.
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
        region = self.client.meta.region_name
        kwargs = {}
        if region and region != "us-east-1":  # us-east-1 is the one region that rejects a LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with contextlib.suppress(self.client.exceptions.BucketAlreadyOwnedByYou):  # created concurrently
            self.client.create_bucket(Bucket=self.bucket, **kwargs)


def open_storage(uri: str, *, endpoint_url: str | None = None, max_pool_connections: int = 32) -> Storage:
    """Open the store a ``STORAGE_URI`` names: ``s3://bucket/prefix`` or a local folder path."""
    if uri.startswith("s3://"):
        return S3Storage(uri, endpoint_url=endpoint_url, max_pool_connections=max_pool_connections)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported STORAGE_URI scheme: {uri!r} (use a folder path or s3://bucket/prefix)")
    return LocalStorage(uri.removeprefix("file://"))


def storage_from_settings(
    settings: Settings, *, max_pool_connections: int = 32, create_bucket: bool | None = False
) -> Storage:
    """Open the store of ``settings`` (the one way stages open it; :func:`open_storage` serves processes that only
    get the URI). ``create_bucket``: True creates a missing S3 bucket, None creates it only on a custom endpoint
    (moto, MinIO: demo and test endpoints start empty; against AWS the bucket must exist), False never."""
    storage = open_storage(
        settings.storage_uri, endpoint_url=settings.aws_endpoint_url, max_pool_connections=max_pool_connections
    )
    if isinstance(storage, S3Storage) and (create_bucket or (create_bucket is None and settings.aws_endpoint_url)):
        storage.ensure_bucket()
    return storage
