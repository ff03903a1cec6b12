"""Web framework integrations: a Flask extension and a Django app.

Both start :class:`~gso_analytics.Analytics` with the web application and serve its
metrics (JSON and Prometheus text) behind a bearer token. What they share lives in
framework-free modules, so the two integrations cannot drift apart:

- :mod:`.config` reads and validates the settings (the same keys in both frameworks);
- :mod:`.metrics` is the metrics endpoint itself: authentication, content
  negotiation, JSON bodies, error responses;
- :mod:`.prometheus` renders the Prometheus exposition with ``prometheus_client``.

:mod:`.flask` and :mod:`.django` only translate a request into
:class:`~.metrics.MetricsRequest` and a :class:`~.metrics.MetricsResponse` back.
Importing this package imports neither framework.
"""
