"""Strip credentials from text before it is logged or shown: ``scheme://user:secret@host`` keeps only the host,
and ``token=...``/``password=...`` style values are masked. Used wherever an exception's text or a URI from the
configuration may reach a log line or an error message."""

from __future__ import annotations

import re

_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_SECRET_PARAM = re.compile(
    r"(?i)\b(?P<name>[A-Za-z_]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key)[A-Za-z_]*)"
    r"(?P<sep>\s*[=:]\s*)(?P<value>[^\s&,;'\")]+)"
)


def redact(text: str) -> str:
    """``text`` with URL credentials and ``secret=value`` pairs replaced by ``***``."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}{m['sep']}***", text)
