"""History database URLs: the default one, how one is shown (never with its password), which SQLAlchemy dialect
and driver it takes, and the one-line explanation of a database error that says what to do about it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from pytest_llmperf.errors import HistoryError

__all__ = [
    "URL_FORMS",
    "default_url",
    "display_url",
    "explain",
    "first_line",
    "parse_url",
    "url_secrets",
    "with_driver",
]

URL_FORMS: Final = "sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"


def default_url(rootdir: Path) -> str:
    """``sqlite:///<rootdir>/.llmperf/history.db``."""
    return f"sqlite:///{(rootdir / '.llmperf' / 'history.db').as_posix()}"


def display_url(url: str) -> str:
    """``url`` with its password (and any secret in its query) shown as ``***``; a HistoryError, that does not
    repeat it, when it is malformed."""
    parsed = parse_url(url)
    if not url_secrets(parsed):
        return url.strip()
    hidden = {key: "***" for key in parsed.query if _secret_key(key)}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


def parse_url(url: str) -> URL:
    try:
        return make_url(url.strip())
    except (sa_exc.ArgumentError, ValueError, TypeError):
        # The message SQLAlchemy gives repeats the string, password and all.
        raise HistoryError(
            f"the history database URL is not a database URL: expected {URL_FORMS} (--llmperf-history)"
        ) from None


def url_secrets(url: URL) -> list[str]:
    """The secrets in a URL, to keep out of every message."""
    found = [url.password] if url.password else []
    for key, value in url.query.items():
        if _secret_key(key):
            found += [value] if isinstance(value, str) else list(value)
    return [secret for secret in found if secret]


def _secret_key(key: str) -> bool:
    """A query parameter that holds a secret (libpq takes ``password`` there too)."""
    return any(word in key.lower() for word in ("password", "secret", "token"))


def with_driver(url: URL, shown: str) -> URL:
    """The dialects the history knows, with psycopg 3 for PostgreSQL unless another driver is named."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url
    if backend in ("postgresql", "postgres"):
        driver = url.get_driver_name() if "+" in url.drivername else "psycopg"
        return url.set(drivername=f"postgresql+{driver}")
    raise HistoryError(f"history database {shown}: {backend!r} databases are not supported; use {URL_FORMS}")


# --- error messages --------------------------------------------------------------------------------------------


def first_line(text: str, hidden: Sequence[str]) -> str:
    """The first line of a driver's message, with every secret in ``hidden`` shown as ``***``."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    for secret in hidden:
        line = line.replace(secret, "***")
    return line


def explain(shown: str, hidden: Sequence[str], what: str, exc: BaseException, *, write: bool, busy_s: float) -> str:
    """``history database URL: what (the driver's words); what to do``. ``write``: whether the database was
    opened to write (what a user may lack differs); ``busy_s``: how long SQLite waited for a lock."""
    orig = getattr(exc, "orig", None) or exc
    said = first_line(str(orig), hidden)
    lowered = said.lower()
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if "not a database" in lowered or "malformed" in lowered or "file is encrypted" in lowered:
        advice = "it is not an SQLite database or is damaged: name another file, or move it away"
    elif "readonly" in lowered or "read-only" in lowered or sqlstate == "25006":
        advice = "it is read-only: make it writable or point --llmperf-history at another database"
    elif "unable to open" in lowered:
        advice = (
            "check that the path names a file in a directory this user may write"
            if write
            else "check that the path names a history database this user may read"
        )
    elif "locked" in lowered or "busy" in lowered:
        advice = f"another process held it for more than {busy_s:g} s: try again, or use another database"
    elif sqlstate == "42501":
        advice = (
            "this user may not write to it: grant it CREATE and INSERT, or use another database"
            if write
            else "this user may not read it: grant it USAGE on the schema and SELECT on the llmperf_* tables"
        )
    elif sqlstate.startswith("28") or "authentication" in lowered or "password" in lowered:
        advice = "check the user name and password in the URL"
    elif sqlstate == "3D000" or ("database" in lowered and "does not exist" in lowered):
        advice = "create the database first (createdb), or name an existing one"
    elif isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or sqlstate.startswith("08"):
        advice = "check that the server runs and is reachable at that host and port, and the URL's credentials"
    else:
        advice = f"check the database URL ({URL_FORMS})"
    return f"history database {shown}: {what}" + (f" ({said})" if said else "") + f"; {advice}"
