"""One line for a store that cannot be used: what went wrong and what to check (the bucket, ``AWS_PROFILE``, the
endpoint, the URI), for every command that opens the store. Never the client's traceback."""

from __future__ import annotations

import errno

from common.redact import redact

# botocore's error codes, by what a person has to fix.
_MISSING_BUCKET = ("NoSuchBucket", "404", "NotFound")
_DENIED = ("AccessDenied", "403", "AllAccessDisabled", "AccountProblem")
_BAD_CREDENTIALS = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
)
CREDENTIALS_HINT = "set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"


def storage_error_message(exc: BaseException, uri: str, endpoint_url: str | None = None) -> str:
    """What went wrong with the store ``uri`` and what to check, on one line (credentials masked)."""
    where = redact(uri)
    if uri.startswith("s3://"):
        return redact(_s3_message(exc, where, uri[len("s3://") :].split("/", 1)[0], endpoint_url))
    return redact(_local_message(exc, where))


def _s3_message(exc: BaseException, where: str, bucket: str, endpoint_url: str | None) -> str:
    kind = type(exc).__name__
    endpoint = f"the S3 endpoint {endpoint_url}" if endpoint_url else "AWS S3"
    endpoint_hint = "check AWS_ENDPOINT_URL and that the server runs" if endpoint_url else "check the network"
    if kind in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return f"no usable AWS credentials for {where}: {CREDENTIALS_HINT}"
    if kind == "ProfileNotFound":
        return f"{_text(exc)}: AWS_PROFILE names a profile missing from ~/.aws/config and ~/.aws/credentials"
    if kind == "NoRegionError":
        return f"no AWS region for {where}: set AWS_DEFAULT_REGION (or a region in the AWS_PROFILE)"
    if kind in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ProxyConnectionError"):
        return f"cannot reach {endpoint} for {where}: {endpoint_hint}"
    if kind in ("ReadTimeoutError",):
        return f"{endpoint} did not answer in time for {where}: {endpoint_hint}"
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
    if code in _MISSING_BUCKET:
        return (
            f"the bucket {bucket!r} of {where} does not exist at {endpoint}: check STORAGE_URI "
            "(ric ingest --create-bucket creates it)"
        )
    if code in _DENIED:
        return f"access to {where} is denied: check AWS_PROFILE and what its credentials may do on {bucket!r}"
    if code in _BAD_CREDENTIALS:
        return f"the AWS credentials were refused ({code}) for {where}: {CREDENTIALS_HINT}"
    return f"cannot use the store {where}: {kind}: {_text(exc)}"


def _local_message(exc: BaseException, where: str) -> str:
    number = getattr(exc, "errno", None)
    path = getattr(exc, "filename", None) or where
    if isinstance(exc, PermissionError):
        return f"permission denied on {path}: check who owns the store folder {where} (STORAGE_URI)"
    if number == errno.ENOSPC:
        return f"no space left on the device of {where}"
    if number == errno.EROFS:
        return f"the store folder {where} is on a read-only file system"
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist: check STORAGE_URI ({where})"
    return f"cannot use the store {where}: {type(exc).__name__}: {_text(exc)}"


def _text(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
