"""The integrations' settings: one reader for Flask's config and Django's settings.

Why one reader: both frameworks take the same settings under two spellings
(``GSO_ANALYTICS_STORE`` in a Flask config, ``GSO_ANALYTICS["STORE"]`` in Django's
settings). Validating them here, with errors that name the key the way the user wrote
it, keeps the two integrations identical in behaviour. Mistakes fail at start-up, not
at the first scrape: an unknown key (most likely a typo of ``METRICS_TOKEN``), a
string where a boolean belongs (``"False"`` is true in Python), a token that no HTTP
client could send.
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from ..analytics import Analytics
from ..errors import ConfigurationError
from ..store import Store

log = logging.getLogger("gso_analytics")

#: Every setting, by its short name, with what it means (used in error messages).
KEYS: Mapping[str, str] = {
    "STORE": "the store URL, e.g. 'sqlite:///gso_analytics.db' (or a Store instance)",
    "FLUSH_INTERVAL": "seconds between background flushes (default 60)",
    "METRICS_TOKEN": "the bearer token the metrics endpoint requires",
    "METRICS_PUBLIC": "True serves the metrics without a token when none is configured",
    "METRICS_PATH": "where the metrics endpoint is mounted (default '/metrics'; None: not)",
    "OPTIONS": "more keyword arguments for Analytics (tz, idle_timeout, counters, ...)",
    "TEST_STORE": "'memory' (default): tests count into memory://; 'keep': the configured store",
}

#: Django mounts the endpoint with ``include()`` in the project's urls.py instead, and
#: may name a ``DATABASES`` alias instead of a store URL (see ``django/database.py``).
DJANGO_KEYS = (
    *(key for key in KEYS if key != "METRICS_PATH"),
    "DATABASE",
    "SCHEMA",
)

#: How a key is spelled in a Flask config and in the environment.
PREFIX = "GSO_ANALYTICS_"
#: The keys the environment may set: text values (``OPTIONS`` is a dict, code's to give).
ENVIRONMENT_KEYS = tuple(key for key in KEYS if key != "OPTIONS")
#: Other variables of ours, read elsewhere (:mod:`gso_analytics.erasure`), not settings.
OTHER_VARIABLES = frozenset({"ERASURE_SECRET", "ERASURE_SECRET_FILE"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

DEFAULT_FLUSH_INTERVAL = 60.0
DEFAULT_METRICS_PATH = "/metrics"
TESTING_STORE = "memory://"
TEST_STORE_CHOICES = ("memory", "keep")
_replacement_logged = False  # the test-store notice, once per process

#: ``Analytics`` keyword arguments OPTIONS may carry (``flush_interval`` has its own key).
ANALYTICS_OPTIONS = frozenset(
    name
    for name, param in inspect.signature(Analytics).parameters.items()
    if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "flush_interval"
)


@attrs.frozen
class EndpointSettings:
    """Who may read the metrics: the bearer ``token``, or anyone when ``public``."""

    token: str | None = attrs.field(default=None, repr=False)  # never in logs or reprs
    public: bool = False


#: ``Analytics`` options whose value is a secret: shown as ``<hidden>`` in ``repr``.
SECRET_OPTIONS = frozenset({"pseudonymize_key", "erasure_secret"})


def _store_repr(store: str | Store) -> str:
    """A store URL without its password (a MongoDB URL's userinfo)."""
    if not isinstance(store, str):
        return repr(store)
    parts = urlsplit(store)
    if parts.password is None:
        return repr(store)
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return repr(urlunsplit(parts._replace(netloc=netloc)))


def _options_repr(options: Mapping[str, Any]) -> str:
    shown = {k: "<hidden>" if k in SECRET_OPTIONS else v for k, v in options.items()}
    return repr(shown)


@attrs.frozen
class Settings:
    """Validated settings, whatever framework they came from. Their ``repr`` (in a
    debug page, a log line) shows no secret: the token, a store password, a
    pseudonymization key."""

    store: str | Store = attrs.field(repr=_store_repr)
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    endpoint: EndpointSettings = attrs.field(factory=EndpointSettings)
    metrics_path: str | None = DEFAULT_METRICS_PATH
    options: Mapping[str, Any] = attrs.field(factory=dict, repr=_options_repr)
    #: A test run: the app gets a RecordingAnalytics (see :mod:`gso_analytics.testing`).
    testing: bool = False
    #: ``strict`` unless ``OPTIONS`` or code says otherwise: True under a development
    #: server (Flask ``debug``, Django ``DEBUG``), where a bad amount is a bug to see at
    #: once; False in production, where a bad call must not fail a player's request
    #: (it is counted in ``stats()["rejected"]``, which the shipped alert watches).
    default_strict: bool = False


def read_settings(
    values: Mapping[str, Any],
    *,
    name: Callable[[str], str],
    testing: bool,
    keys: Collection[str] = tuple(KEYS),
    default_strict: bool = False,
) -> Settings:
    """Validate ``values`` (short key -> value) into :class:`Settings`.

    ``name`` spells a short key as the user wrote it, for error messages. Under
    ``testing`` a missing store becomes ``memory://`` with a warning, so an app's test
    suite needs no store; anywhere else it is an error, because a production process
    that silently counted into memory would lose everything at exit. Under
    ``testing`` a configured store URL is replaced by ``memory://`` too (logged once),
    so a test run never writes into the game's real numbers, unless ``TEST_STORE`` is
    ``"keep"``; a ``Store`` object is code's own choice and is kept.
    """
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise ConfigurationError(
            f"unknown setting {', '.join(name(key) for key in unknown)};"
            f" known: {', '.join(name(key) for key in keys)}"
        )
    store = _store(values.get("STORE"), name("STORE"), testing)
    test_store = values.get("TEST_STORE") or "memory"
    if test_store not in TEST_STORE_CHOICES:
        raise ConfigurationError(
            f"{name('TEST_STORE')} must be 'memory' or 'keep', not {test_store!r}"
        )
    if testing and test_store == "memory" and isinstance(store, str) and store != TESTING_STORE:
        _log_replacement(store, name)
        store = TESTING_STORE
    return Settings(
        store=store,
        testing=testing,
        default_strict=default_strict,
        flush_interval=_flush_interval(values.get("FLUSH_INTERVAL"), name("FLUSH_INTERVAL")),
        endpoint=EndpointSettings(
            token=_token(values.get("METRICS_TOKEN"), name("METRICS_TOKEN")),
            public=_bool(values.get("METRICS_PUBLIC", False), name("METRICS_PUBLIC")),
        ),
        metrics_path=_path(values.get("METRICS_PATH", DEFAULT_METRICS_PATH), name("METRICS_PATH")),
        options=_options(values.get("OPTIONS"), name("OPTIONS")),
    )


def prefixed(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``GSO_ANALYTICS_*`` entries of ``values`` (a Flask config), by short key."""
    return {
        key.removeprefix(PREFIX): value for key, value in values.items() if key.startswith(PREFIX)
    }


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings the ``GSO_ANALYTICS_*`` environment variables give, by short key.

    Why its own reader: the environment holds text only, so ``METRICS_PUBLIC`` is read
    from ``true``/``false`` (and ``1``/``0``, ``yes``/``no``, ``on``/``off``) here, and
    an empty variable counts as unset, as a shell's ``VAR=`` means. A variable of ours
    that no setting knows (a typo such as ``GSO_ANALYTICS_METRICS_TOKN``) is logged,
    not fatal: the environment is shared with other programs and may be older than
    this version of the library.
    """
    values: dict[str, Any] = {}
    for key, value in prefixed(environ).items():
        if key in OTHER_VARIABLES or value == "":
            continue
        if key not in ENVIRONMENT_KEYS:
            log.warning(
                "gso_analytics: ignoring the environment variable %s%s; known: %s",
                PREFIX,
                key,
                ", ".join(PREFIX + known for known in ENVIRONMENT_KEYS),
            )
            continue
        if key == "METRICS_PUBLIC":
            flag = value.strip().lower()
            if flag not in _TRUE | _FALSE:
                raise ConfigurationError(f"{PREFIX}{key} must be true or false, not {value!r}")
            values[key] = flag in _TRUE
        else:
            values[key] = value
    return values


def _store(value: Any, key: str, testing: bool) -> str | Store:
    if isinstance(value, Store):
        return value
    if value is None or value == "":
        if testing:
            warnings.warn(
                f"{key} is not set; using {TESTING_STORE} because this is a test run"
                " (the numbers live in this process only)",
                RuntimeWarning,
                stacklevel=2,
            )
            return TESTING_STORE
        raise ConfigurationError(f"{key} is not set: {KEYS['STORE']}")
    if not isinstance(value, str):
        raise ConfigurationError(f"{key} must be a store URL or a Store, not {value!r}")
    return value


def _log_replacement(url: str, name: Callable[[str], str]) -> None:
    global _replacement_logged
    if _replacement_logged:
        return
    _replacement_logged = True
    scheme = url.split("://", 1)[0]  # not the URL: it may carry a password
    log.warning(
        "gso_analytics: a test run, so the configured %s:// store (%s) is replaced by %s;"
        " set %s = 'keep' to test against it",
        scheme,
        name("STORE"),
        TESTING_STORE,
        name("TEST_STORE"),
    )


def _flush_interval(value: Any, key: str) -> float:
    if value is None:
        return DEFAULT_FLUSH_INTERVAL
    try:
        if isinstance(value, bool):
            raise ValueError
        seconds = float(value)  # a number, or a number read from the environment
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key} must be a number of seconds, not {value!r}") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigurationError(f"{key} must be a positive number of seconds, not {value!r}")
    return seconds


def _token(value: Any, key: str) -> str | None:
    if value is None or value == "":
        return None  # an empty token would match an empty "Bearer " header
    if not isinstance(value, str):
        raise ConfigurationError(f"{key} must be a string")
    if not all("!" <= char <= "~" for char in value):
        # HTTP headers carry ASCII; a space or a non-ASCII character could never match.
        raise ConfigurationError(
            f"{key} must be printable ASCII without spaces"
            " (e.g. from python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{key} must be True or False, not {value!r}")
    return value


def _path(value: Any, key: str) -> str | None:
    if value is None or value is False:
        return None
    path = value.rstrip("/") if isinstance(value, str) else ""
    if not path.startswith("/"):
        raise ConfigurationError(f"{key} must be a URL path such as '/metrics', not {value!r}")
    return path


def _options(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{key} must be a dict of Analytics keyword arguments")
    check_options(value, key)
    return dict(value)


def check_options(options: Mapping[str, Any], where: str) -> None:
    """Reject keyword arguments ``Analytics`` does not take, naming where they came from."""
    unknown = sorted(set(options) - ANALYTICS_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"{where}: Analytics takes no option {', '.join(map(repr, unknown))};"
            f" it takes {', '.join(sorted(ANALYTICS_OPTIONS))}"
            " (flush_interval has its own setting)"
        )


def build_analytics(settings: Settings, **overrides: Any) -> Analytics:
    """The ``Analytics`` of a web application, not started yet (in a test run, a
    :class:`~gso_analytics.testing.RecordingAnalytics`, for ``assert_tracked``).

    ``overrides`` are keyword arguments from code (a test's clock, say); they win over
    ``OPTIONS``. The caller starts it once the application is wired, so a failure in
    between leaves no thread behind; ``start()`` registers the exit hook that stops it.
    """
    check_options(overrides, "keyword arguments")
    # Imported here: the testing kit is only loaded by test runs.
    from ..testing import RecordingAnalytics

    factory = RecordingAnalytics if settings.testing else Analytics
    options = {"strict": settings.default_strict, **settings.options, **overrides}
    analytics = factory(settings.store, flush_interval=settings.flush_interval, **options)
    if settings.default_strict and "strict" not in {**settings.options, **overrides}:
        log.info(
            "gso_analytics: strict mode, as under every development server: a bad call"
            " raises; set OPTIONS={'strict': False} to count it in stats() instead"
        )
    if settings.endpoint.token and settings.endpoint.public:
        log.warning(
            "gso_analytics: METRICS_PUBLIC is ignored because METRICS_TOKEN is set;"
            " the metrics endpoint requires the token"
        )
    return analytics
