"""The Django app: ``INSTALLED_APPS += ["gso_analytics.integrations.django"]``.

``ready()`` reads ``settings.GSO_ANALYTICS`` (keys ``STORE`` or ``DATABASE`` and
``SCHEMA`` (:mod:`.database`), ``FLUSH_INTERVAL``, ``METRICS_TOKEN``,
``METRICS_PUBLIC``, ``OPTIONS``; see :mod:`..config`) and starts one
:class:`~gso_analytics.Analytics` per process, which views reach through
:func:`get_analytics`.

Why the guards:

- ``runserver`` with its autoreloader runs ``ready()`` in two processes: a file
  watcher that never serves a request, and the child that does (``RUN_MAIN=true``).
  Only the child starts the library, so the watcher holds no store and no thread.
- ``manage.py gso_analytics ...`` (report, prune, export-user, erase) is a one-off
  command, not a worker: the library is built but not started, so the command writes
  no heartbeat and is not counted among the workers (see ``Analytics.start()``).
- ``ready()`` may run again (``apps.populate`` after a reset); a second start is a
  no-op.
- ``override_settings(GSO_ANALYTICS=...)`` in a test restarts the library with the
  new settings (and back again afterwards), as Django's own apps react to
  ``setting_changed``.

Stopping relies on the exit hook ``Analytics.start()`` registers (Django has no
shutdown signal): gunicorn workers leave through ``sys.exit`` and ``runserver`` exits
normally on Ctrl-C and on a reload, so it runs in each.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
from django.apps import AppConfig
from django.conf import settings
from django.core.signals import setting_changed

from ...analytics import Analytics
from ...errors import ConfigurationError
from ..config import DJANGO_KEYS, Settings, build_analytics, read_settings
from ..metrics import MetricsEndpoint
from .database import store_url

log = logging.getLogger("gso_analytics")

SETTING = "GSO_ANALYTICS"


@attrs.frozen
class Running:
    """This process's library instance and the endpoint that serves its metrics."""

    analytics: Analytics
    endpoint: MetricsEndpoint


_lock = threading.Lock()
_running: Running | None = None


def is_test_run() -> bool:
    """Django's test runner (``manage.py test``, ``django-admin test``) or pytest-django:
    where the configured store is replaced by ``memory://`` (see ``TEST_STORE``).

    Decided from the command and the loaded pytest-django plugin because ``ready()``
    runs before either sets the test environment up. Any pytest run is not enough: a
    script that imports pytest, or a project's own conftest, is not a Django test run.
    """
    return sys.argv[1:2] == ["test"] or "pytest_django" in sys.modules


def is_autoreloader_watcher() -> bool:
    """True in the file-watching parent of ``runserver``, which serves no request."""
    from django.utils.autoreload import DJANGO_AUTORELOAD_ENV

    return (
        sys.argv[1:2] == ["runserver"]
        and "--noreload" not in sys.argv
        and os.environ.get(DJANGO_AUTORELOAD_ENV) != "true"
    )


def is_own_command() -> bool:
    """True in ``manage.py gso_analytics ...``: a one-off command, not a worker."""
    return sys.argv[1:2] == ["gso_analytics"]


def _key(name: str) -> str:
    return f'{SETTING}["{name}"]'


def read_django_settings() -> Settings:
    """``settings.GSO_ANALYTICS`` validated into :class:`~..config.Settings`."""
    values = getattr(settings, SETTING, None)
    if values is None:
        values = {}
    elif not isinstance(values, Mapping):
        raise ConfigurationError(f"settings.{SETTING} must be a dict, not {values!r}")
    alias, schema = values.get("DATABASE"), values.get("SCHEMA")
    if alias is not None or schema is not None:
        if alias is None or "STORE" in values:
            raise ConfigurationError(
                f"set either {_key('STORE')} or {_key('DATABASE')} (a DATABASES alias, with"
                f" {_key('SCHEMA')} optionally), not both"
            )
        values = {k: v for k, v in values.items() if k not in ("DATABASE", "SCHEMA")}
        values["STORE"] = store_url(settings.DATABASES, alias, schema)
    return read_settings(
        values,
        name=_key,
        testing=is_test_run(),
        keys=DJANGO_KEYS,
        default_strict=bool(getattr(settings, "DEBUG", False)),
    )


def start(**overrides: Any) -> Analytics | None:
    """Start the library in this process (once); None in the autoreloader's watcher."""
    global _running
    with _lock:
        if _running is not None:
            return _running.analytics
        if is_autoreloader_watcher():
            log.debug("gso_analytics: not started in runserver's file watcher")
            return None
        app_settings = read_django_settings()
        analytics = build_analytics(app_settings, **overrides)
        _running = Running(analytics, MetricsEndpoint(app_settings.endpoint))
        return analytics if is_own_command() else analytics.start()


def stop() -> bool:
    """Stop the library (final flush); True when everything reached the store."""
    global _running
    with _lock:
        running, _running = _running, None
    return running.analytics.stop() if running is not None else True


def running() -> Running:
    """This process's :class:`Running` instance; an error when the app is not started."""
    current = _running
    if current is None:
        raise ConfigurationError(
            "gso_analytics is not running in this process: add"
            " 'gso_analytics.integrations.django' to INSTALLED_APPS"
        )
    return current


def get_analytics() -> Analytics:
    """The :class:`~gso_analytics.Analytics` of this process, for views and tasks."""
    return running().analytics


@contextmanager
def serving(analytics: Analytics) -> Iterator[Analytics]:
    """Within the block, views and :func:`get_analytics` reach ``analytics`` (the
    ``gso_analytics`` pytest fixture's, say) instead of the app's own, with the same
    metrics settings; afterwards the app's own again. Neither is stopped here."""
    global _running
    with _lock:
        previous = _running
        endpoint = (
            previous.endpoint
            if previous is not None
            else MetricsEndpoint(read_django_settings().endpoint)
        )
        _running = Running(analytics, endpoint)
    try:
        yield analytics
    finally:
        with _lock:
            _running = previous


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING:
        stop()
        start()


class GsoAnalyticsConfig(AppConfig):
    name = "gso_analytics.integrations.django"
    label = "gso_analytics"
    verbose_name = "gso_analytics"

    def ready(self) -> None:
        setting_changed.connect(_on_setting_changed, dispatch_uid="gso_analytics.setting")
        start()
