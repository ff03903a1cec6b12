"""The URL, the client and the concerns: how the store talks to MongoDB.

Every write of ours carries its own write concern, ``majority`` with a time bound,
never the client's: a URL's ``w=1``, a PSA replica set (whose implicit default is
``w: 1`` when an arbiter makes a majority of data-bearing members impossible to
require) or a cluster-wide default would let a failover roll back a batch we
acknowledged. Every read carries ``maxTimeMS``, so a slow query ends with an error the
flusher retries instead of holding a worker's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from gso_analytics.errors import ConfigurationError, InvalidTypeError, StoreError

if TYPE_CHECKING:
    from types import ModuleType

INSTALL_HINT = "pip install 'gso-analytics[mongo]'"
DEFAULT_DATABASE = "gso_analytics"
DEFAULT_PREFIX = "gso_analytics_"
#: Fail fast when the server is unreachable, instead of pymongo's 30 s default.
DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 5000
#: ``wtimeout`` of every write concern of ours: how long a write (or a commit) waits
#: for a majority of members before the server answers with an error. A commit that
#: timed out is not sent again at once (it would wait as long); the flusher retries.
WRITE_TIMEOUT_MS = 10_000
#: ``maxTimeMS`` of every read of ours, and ``maxCommitTimeMS`` of every commit.
READ_TIMEOUT_MS = 30_000
MAX_COMMIT_TIME_MS = WRITE_TIMEOUT_MS

#: ``MongoClient`` options the store sets unless the URL or the caller sets them: writes
#: retried once after a failover, the store named in the server's logs, and a lost
#: server reported after 5 s.
CLIENT_DEFAULTS: dict[str, Any] = {
    "retryWrites": True,
    "appname": "gso-analytics",
    "serverSelectionTimeoutMS": DEFAULT_SERVER_SELECTION_TIMEOUT_MS,
}
#: ``?name=`` options of the URL that belong to the store, not to pymongo.
URL_OPTIONS = {
    "prefix": "prefix",
    "transactions": "transactions",
    "ttlindex": "ttl_index",
    "createindexes": "create_indexes",
}
STORE_KWARGS = frozenset(
    {"prefix", "transactions", "ttl_index", "create_indexes", "event_ttl", "existing"}
)


def pymongo() -> ModuleType:
    """Import pymongo on first use, so the core never needs it."""
    try:
        import pymongo as driver
    except ImportError as exc:
        raise ConfigurationError(
            f"the MongoDB store needs the pymongo driver: {INSTALL_HINT}"
        ) from exc
    return driver


def majority() -> Any:
    """The write concern of every write and commit of ours (module docstring)."""
    return pymongo().WriteConcern("majority", wtimeout=WRITE_TIMEOUT_MS)


def aware(moment: datetime) -> datetime:
    """BSON dates come back naive unless the client is ``tz_aware``; they are UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def check_str(value: object, name: str) -> str:
    """Reads take caller input: a dict such as ``{"$ne": None}`` must never become a
    query operator."""
    if type(value) is not str:
        raise InvalidTypeError(name, f"must be a str, not {type(value).__name__}")
    return value


def parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ConfigurationError(f"MongoDB URL option {name} must be true or false, got {text!r}")


def split_url(
    url: str, options: dict[str, Any]
) -> tuple[Callable[[], Any], str, str, dict[str, Any]]:
    """``mongodb://[user:pass@]host[:port][,host...]/db?options`` taken apart: a
    function that makes the client, the database name, a description of the server for
    messages, and the store's own options (from the query or ``options``; every other
    keyword argument goes to ``MongoClient``)."""
    driver = pymongo()
    parts = urlsplit(url)
    query = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        option = URL_OPTIONS.get(name.lower())
        if option is None:
            query.append((name, value))
        elif option == "prefix":
            options.setdefault("prefix", value)
        elif option == "transactions":
            options.setdefault(
                "transactions", None if value.lower() == "auto" else parse_bool(name, value)
            )
        else:
            options.setdefault(option, parse_bool(name, value))
    store_options = {k: options.pop(k) for k in list(options) if k in STORE_KWARGS}
    # pymongo lets keyword arguments override the URL, and matches option names in any
    # case: a default goes in only where neither the URL nor the caller set it.
    given = {name.lower(): value for name, value in query}
    given.update((name.lower(), value) for name, value in options.items())
    client_options = {
        name: value for name, value in CLIENT_DEFAULTS.items() if name.lower() not in given
    }
    client_options.update(options)
    driver_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
    database = unquote(parts.path.lstrip("/")) or DEFAULT_DATABASE
    hosts = parts.netloc.rpartition("@")[2] or "localhost"
    timeout_ms = given.get("serverselectiontimeoutms", DEFAULT_SERVER_SELECTION_TIMEOUT_MS)
    where = f"{parts.scheme}://{hosts}/{database} (serverSelectionTimeoutMS={timeout_ms})"

    def connect() -> Any:
        try:
            return driver.MongoClient(driver_url, **client_options)
        except driver.errors.ConfigurationError as exc:  # bad option, unknown SRV name
            raise ConfigurationError(f"cannot open MongoDB {where}: {exc}") from exc
        except driver.errors.PyMongoError as exc:
            raise StoreError(f"cannot open MongoDB {where}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"invalid MongoDB URL option for {where}: {exc}") from exc

    return connect, database, where, store_options


def describe(database: Any) -> str:
    """``mongodb://host:port/db (serverSelectionTimeoutMS=...)`` of a database handle."""
    client = getattr(database, "client", None)
    hosts = "?"
    try:
        servers = client.topology_description.server_descriptions()  # type: ignore[union-attr]
        hosts = ",".join(f"{h}:{p}" for h, p in servers)
    except Exception:  # only a description for messages
        address = getattr(client, "address", None)
        if address:
            hosts = f"{address[0]}:{address[1]}"
    timeout = getattr(getattr(client, "options", None), "server_selection_timeout", None)
    shown = f" (serverSelectionTimeoutMS={int(timeout * 1000)})" if timeout is not None else ""
    return f"mongodb://{hosts}/{getattr(database, 'name', '?')}{shown}"


def transactions_possible(hello: Mapping[str, Any]) -> bool:
    """Transactions need a replica set (4.0+) or mongos (4.2+) with sessions."""
    if hello.get("logicalSessionTimeoutMinutes") is None:
        return False
    wire = int(hello.get("maxWireVersion", 0))
    if hello.get("msg") == "isdbgrid":
        return wire >= 8
    return "setName" in hello and wire >= 7


STANDALONE_REFUSED = (
    "the MongoDB store needs a replica set or a sharded cluster (every batch is one"
    " multi-document transaction), and {where} is a standalone server. A single-node"
    " replica set is enough for development: start mongod with --replSet rs0, run"
    " rs.initiate() once in mongosh, and add ?replicaSet=rs0 to the URL (or"
    " directConnection=true). For one machine without a server, use sqlite:///"
)
