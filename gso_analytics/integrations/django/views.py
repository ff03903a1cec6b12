"""The metrics views: a Django request in, :class:`~..metrics.MetricsEndpoint` decides.

Each view only copies the three inputs that matter (``Authorization``, ``Accept``,
``?format=``) into a :class:`~..metrics.MetricsRequest` and the answer into an
``HttpResponse``, so Django answers exactly as the Flask blueprint does.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from ..metrics import MetricsRequest, View
from .apps import running


def serve(request: HttpRequest, view: View) -> HttpResponse:
    current = running()
    answer = current.endpoint.handle(
        current.analytics,
        view,
        MetricsRequest(
            authorization=request.headers.get("Authorization"),
            accept=request.headers.get("Accept"),
            format=request.GET.get("format"),
        ),
    )
    response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    for name, value in answer.headers.items():
        response[name] = value
    return response


@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    """The seed's ``getMetrics()``: JSON, or Prometheus text by ``Accept`` or ``?format``."""
    return serve(request, "metrics")


@require_safe
def days(request: HttpRequest) -> HttpResponse:
    """The seed's ``getLast30Days()``, newest first, as JSON."""
    return serve(request, "days")


@require_safe
def stats(request: HttpRequest) -> HttpResponse:
    """This process's health (``Analytics.stats()``), JSON or Prometheus; no store read."""
    return serve(request, "stats")
