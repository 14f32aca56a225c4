"""Credentials out of URLs that are shown back (a task's ``callback_url``).

The task keeps the URL as given, since its callback must reach it; what a reader of the
task sees has userinfo and the values of token-like query parameters replaced by ``***``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_KEY = re.compile(
    r"token|key|secret|pass|pwd|sig|auth|cred|session|jwt|code|hmac|bearer", re.IGNORECASE
)


def redact_url(url: str) -> str:
    """``url`` without credentials: userinfo and token-like query values masked."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
        query = urlencode(
            [
                (k, MASK if _SECRET_KEY.search(k) else v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*",
        )
        fragment = MASK if parts.fragment and "=" in parts.fragment else parts.fragment
        return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
    except ValueError:
        return MASK
