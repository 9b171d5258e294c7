"""What the nightly job checks before it loads a model: the store and its input prefix exist.

A mistyped ``STORAGE_URI`` or ``--input-prefix`` in a crontab line must not give green empty nights forever: a store
(a local folder, an S3 bucket) or an input prefix that does not exist is a usage error, said in one line.
``--create-store`` creates them on purpose (a new store: the folder, or the bucket and a ``incoming/`` folder marker,
the zero-byte object S3 consoles write for "Create folder").
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.storage import LocalStorage, S3Storage, Storage, join_key

log = logging.getLogger(__name__)


class InputsMissing(RuntimeError):
    """The store or the input prefix does not exist (the message says which, and how to create it on purpose)."""


CREATE_HINT = "a typo? pass --create-store to create it on purpose"


def check_inputs(storage: Storage, input_prefix: str, *, create: bool = False) -> None:
    """Raise :class:`InputsMissing` unless ``storage`` and ``input_prefix`` in it exist; ``create`` creates them.
    A store of another kind (a test's fake) is taken as it is."""
    if isinstance(storage, LocalStorage):
        _check_local(storage, input_prefix, create)
    elif isinstance(storage, S3Storage):
        _check_s3(storage, input_prefix, create)


def _folder_of(prefix: str) -> str:
    """The folder a key prefix lists: itself when it ends with ``/``, else its parent (``incoming/ret-`` lists
    names starting ``ret-`` in ``incoming/``)."""
    return prefix.rstrip("/") if prefix.endswith("/") else prefix.rpartition("/")[0]


def _check_local(storage: LocalStorage, input_prefix: str, create: bool) -> None:
    root = Path(storage.root)
    folder = root / _folder_of(input_prefix)
    if not root.is_dir():
        if not create:
            raise InputsMissing(f"the store {root} does not exist (STORAGE_URI or --storage-uri; {CREATE_HINT})")
        log.info("creating the store %s (--create-store)", root)
    if not folder.is_dir():
        if not create:
            raise InputsMissing(
                f"the input prefix {input_prefix!r} does not exist in the store {root} (BATCH_INPUT_PREFIX or "
                f"--input-prefix; {CREATE_HINT})"
            )
        log.info("creating the input folder %s (--create-store)", folder)
        folder.mkdir(parents=True, exist_ok=True)


def _check_s3(storage: S3Storage, input_prefix: str, create: bool) -> None:
    from botocore.exceptions import ClientError

    try:
        storage.client.head_bucket(Bucket=storage.bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
            raise  # access denied and the like: the caller's one-line storage message
        if not create:
            raise InputsMissing(
                f"the bucket {storage.bucket!r} of {storage.uri} does not exist (STORAGE_URI or --storage-uri; "
                f"{CREATE_HINT})"
            ) from exc
        log.info("creating the bucket %s (--create-store)", storage.bucket)
        storage.ensure_bucket()
    folder = _folder_of(input_prefix)
    if not folder or next(iter(storage.list(folder + "/")), None) is not None:
        return
    if not create:
        raise InputsMissing(
            f"nothing under {storage.uri}/{folder}/: the input prefix {input_prefix!r} does not exist "
            f"(BATCH_INPUT_PREFIX or --input-prefix; {CREATE_HINT})"
        )
    log.info("creating the input folder %s/%s/ (--create-store)", storage.uri, folder)
    # The folder marker itself (put_bytes would strip its trailing slash): listed under the prefix, never an input.
    storage.client.put_object(Bucket=storage.bucket, Key=join_key(storage.prefix, folder) + "/", Body=b"")
