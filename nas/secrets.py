"""Passwords in store URIs: moved where the store's client reads them, and hidden wherever a URI is shown.

A tracking URI is recorded (the search's params and config.json, its summary), logged, and
passed to Prefect as a flow parameter; a password in it would land in all of them.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

# user:password@ in a URI (any scheme), for `redact`.
_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@/\s]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with the password of every URI in it replaced by ***: for messages and records."""
    return _PASSWORD.sub(r"\1:***@", text)


def without_password(uri: str) -> str:
    """`uri` without its password, which moves to where the store's client reads it: PGPASSWORD
    (libpq) for PostgreSQL, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for a tracking
    server over HTTP. The store connects as before, and the URI can be recorded and logged.
    Another scheme's URI is kept, and `redact` hides its password wherever it is shown."""
    parsed = urlsplit(uri)
    if parsed.password is None:
        return uri
    host = parsed.netloc.rpartition("@")[2]
    if parsed.scheme.partition("+")[0] in ("postgresql", "postgres"):
        os.environ["PGPASSWORD"] = unquote(parsed.password)
        return urlunsplit(parsed._replace(netloc=f"{parsed.username}@{host}"))
    if parsed.scheme in ("http", "https"):
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parsed.username or "")
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parsed.password)
        return urlunsplit(parsed._replace(netloc=host))
    return uri
