"""The store URL: which options are the store's, which go to libpq, and the settings
every connection gets (timeouts, UTC, ``target_session_attrs=read-write``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import attrs

from gso_analytics.errors import ConfigurationError

INSTALL_HINT = (
    "the PostgreSQL store needs psycopg 3 and psycopg-pool: pip install 'gso-analytics[postgres]'"
)
DEFAULT_SCHEMA = "gso_analytics"
#: A schema name the store writes unquoted into its SQL: lower-case, so it is the
#: name PostgreSQL shows (an unquoted name is folded to lower case), and nothing else.
_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def psycopg() -> Any:
    """The driver, imported when a PostgreSQL store is opened."""
    try:
        import psycopg as driver
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ConfigurationError(INSTALL_HINT) from exc
    return driver


def pool_class() -> Any:
    try:
        from psycopg_pool import ConnectionPool
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise ConfigurationError(INSTALL_HINT) from exc
    return ConnectionPool


def pool_timeout() -> type[Exception]:
    """The pool's error when no connection came in time (the server is unreachable)."""
    from psycopg_pool import PoolTimeout

    return PoolTimeout


def check_schema(schema: object) -> str:
    if not isinstance(schema, str) or not _SCHEMA_RE.fullmatch(schema):
        raise ConfigurationError(
            f"schema {schema!r} must be lower-case letters, digits and '_' (at most 63),"
            " not starting with a digit"
        )
    return schema


@attrs.frozen
class Options:
    """The store's own settings (the URL's query or keyword arguments).

    ``pool_size``: the most connections one process opens (one per thread applying a
    batch or reading; more threads wait for one, at most ``pool_timeout``).
    ``statement_timeout`` and ``lock_timeout`` bound every statement and every lock
    wait on the server, so a hung query or a lock held by a stuck session fails (and is
    retried) instead of hanging a worker's flush thread for ever.
    ``partitions_ahead``: days of event partitions created ahead of today.
    ``create_schema``: False for an application role that may not create tables
    (``gso-analytics pg-init`` ran as the owner at deploy time).
    ``existing``: refuse a schema without this library's tables (creating nothing), as
    the commands that read or erase open a store.
    ``replica``: ``host[:port][,host[:port]...]`` of standbys for the reads that may lag
    (the KPIs' range reads, :class:`~.reads.Reads`), with the URL's credentials and
    database; the figures, sessions and events are always read on the primary.
    """

    schema: str = attrs.field(default=DEFAULT_SCHEMA, converter=check_schema)
    pool_size: int = 4
    pool_timeout: float = 10.0
    statement_timeout: timedelta = timedelta(seconds=30)
    lock_timeout: timedelta = timedelta(seconds=10)
    partitions_ahead: int = 7
    create_schema: bool = True
    replica: str | None = None
    existing: bool = False


_CONVERT: dict[str, Callable[[str], Any]] = {
    "schema": str,
    "pool_size": int,
    "pool_timeout": float,
    "statement_timeout": lambda text: timedelta(milliseconds=int(text)),
    "lock_timeout": lambda text: timedelta(milliseconds=int(text)),
    "partitions_ahead": int,
    "create_schema": lambda text: {"true": True, "false": False}[text.lower()],
    "replica": str,
    "existing": lambda text: {"true": True, "false": False}[text.lower()],
}


def split_url(url: str, options: dict[str, Any]) -> tuple[str, str | None, str, Options]:
    """``postgresql://user:pass@host:port/db?schema=...&sslmode=...`` -> (the libpq
    connection string, the replica's (None without ``replica``), where it points without
    credentials, the store's options).

    Store options come from the query (``schema``, ``pool_size``, ``pool_timeout``,
    ``statement_timeout`` and ``lock_timeout`` in ms, ``partitions_ahead``,
    ``create_schema``, ``replica``) or as keyword arguments; the rest of the query goes to
    libpq.
    ``target_session_attrs=read-write`` is added unless given: after a failover a
    worker reconnects to the new primary, never to a standby that refuses writes.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    store: dict[str, Any] = {}
    for name, convert in _CONVERT.items():
        if name in query:
            text = query.pop(name)
            try:
                store[name] = convert(text)
            except (ValueError, KeyError):
                raise ConfigurationError(
                    f"PostgreSQL URL option {name}={text!r} is not valid"
                ) from None
    for name, value in options.items():
        if name not in _CONVERT:
            raise ConfigurationError(f"unknown PostgreSQL store option {name!r}")
        store[name] = value
    opts = Options(**store)
    query.setdefault("target_session_attrs", "read-write")
    query.setdefault("connect_timeout", "10")  # libpq's default waits for TCP's
    query.setdefault("application_name", "gso_analytics")
    settings = (
        f"-c statement_timeout={opts.statement_timeout // timedelta(milliseconds=1)}"
        f" -c lock_timeout={opts.lock_timeout // timedelta(milliseconds=1)}"
        " -c TimeZone=UTC"
    )
    query["options"] = f"{query['options']} {settings}" if "options" in query else settings

    def conninfo(netloc: str, attrs: str) -> str:
        text = urlencode({**query, "target_session_attrs": attrs}, quote_via=quote)
        return urlunsplit(("postgresql", netloc, parts.path, text, ""))

    primary = conninfo(parts.netloc, query["target_session_attrs"])
    replica = None
    if opts.replica is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        replica = conninfo(f"{userinfo}@{opts.replica}" if userinfo else opts.replica, "any")
    host = parts.hostname or "localhost"
    where = f"{host}:{parts.port or 5432}{parts.path or '/'} (schema {opts.schema})"
    return primary, replica, where, opts
