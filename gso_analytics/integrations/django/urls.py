"""URL patterns of the metrics views, to include under a prefix of your choice::

    urlpatterns = [
        path("metrics/", include("gso_analytics.integrations.django.urls")),
    ]

serves ``/metrics/``, ``/metrics/days`` and ``/metrics/stats`` (URL names
``gso_analytics:metrics``, ``gso_analytics:days``, ``gso_analytics:stats``).

``/metrics/days/`` and ``/metrics/stats/`` answer too, with or without ``APPEND_SLASH``:
the index ends in a slash as Django's ``include()`` makes it, so a client (or a
Prometheus job) that adds one to the others must not meet a 404, nor a redirect that
drops its ``Authorization`` header.
"""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "gso_analytics"

urlpatterns = [
    path("", views.metrics, name="metrics"),
    path("days", views.days, name="days"),
    path("days/", views.days),
    path("stats", views.stats, name="stats"),
    path("stats/", views.stats),
]
