"""The metrics views: a Django request in, :class:`~..metrics.MetricsEndpoint` decides.

Each view only copies the three inputs that matter (``Authorization``, ``Accept``,
``?format=``) into a :class:`~..metrics.MetricsRequest` and the answer into an
``HttpResponse``, so Django answers exactly as the Flask blueprint does. They take
every method: the endpoint refuses the unsafe ones only after authorization, so a
stranger gets the same answer to a POST as to a GET.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

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
            method=request.method or "GET",
        ),
    )
    response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    for name, value in answer.headers.items():
        response[name] = value
    return response


def metrics(request: HttpRequest) -> HttpResponse:
    """The seed's ``getMetrics()``: JSON, or Prometheus text by ``Accept`` or ``?format``."""
    return serve(request, "metrics")


def days(request: HttpRequest) -> HttpResponse:
    """The seed's ``getLast30Days()``, newest first, as JSON."""
    return serve(request, "days")


def stats(request: HttpRequest) -> HttpResponse:
    """This process's health (``Analytics.stats()``), JSON or Prometheus; no store read."""
    return serve(request, "stats")
