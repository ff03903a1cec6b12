"""``GSO_ANALYTICS = {"DATABASE": "default"}``: the PostgreSQL store in the project's own
database, its URL built from the ``DATABASES`` alias.

Why not through the ORM: the store needs its own connections (a pool per process,
REPEATABLE READ transactions, its own timeouts) and must not share the request's
transaction, so only the connection settings are taken, never a Django connection. The
tables go to their own schema (``gso_analytics`` unless ``"SCHEMA"`` says otherwise),
beside the project's, untouched by its migrations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from ...errors import ConfigurationError

#: Django's PostgreSQL engines (PostGIS is PostgreSQL too).
ENGINES = ("django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis")
#: Keys of a database's ``OPTIONS`` that are libpq connection parameters, passed on.
#: Others (``pool``, ``isolation_level``, ``server_side_binding``...) are Django's own.
LIBPQ_OPTIONS = frozenset(
    {
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "connect_timeout",
        "target_session_attrs",
        "passfile",
        "service",
        "gssencmode",
        "channel_binding",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
    }
)


def store_url(databases: Mapping[str, Mapping[str, Any]], alias: str, schema: str | None) -> str:
    """The ``postgresql://`` store URL of ``databases[alias]`` (Django's ``DATABASES``),
    in ``schema`` (None: the store's default)."""
    if alias not in databases:
        raise ConfigurationError(
            f'GSO_ANALYTICS["DATABASE"] names {alias!r}, which is not in DATABASES'
            f" ({', '.join(sorted(databases)) or 'none'})"
        )
    db = databases[alias]
    if db.get("ENGINE") not in ENGINES:
        raise ConfigurationError(
            f'GSO_ANALYTICS["DATABASE"]: DATABASES[{alias!r}] is {db.get("ENGINE")!r};'
            " the store can share only a PostgreSQL database (set STORE for another)"
        )
    user = quote(str(db.get("USER") or ""), safe="")
    password = quote(str(db.get("PASSWORD") or ""), safe="")
    credentials = f"{user}:{password}@" if password else f"{user}@" if user else ""
    host = str(db.get("HOST") or "")
    query = {
        key: str(value) for key, value in (db.get("OPTIONS") or {}).items() if key in LIBPQ_OPTIONS
    }
    if host.startswith("/"):  # a Unix socket directory
        query["host"] = host
        host = ""
    elif ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    if schema is not None:
        query["schema"] = schema
    name = quote(str(db.get("NAME") or ""), safe="")
    suffix = f"?{urlencode(query, quote_via=quote)}" if query else ""
    return f"postgresql://{credentials}{host}{port}/{name}{suffix}"
