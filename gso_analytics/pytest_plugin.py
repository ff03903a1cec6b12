"""The pytest plugin (entry point ``pytest11``, name ``gso_analytics``): two fixtures.

``gso_clock`` is a :class:`~gso_analytics.testing.FrozenClock`; a test sets its start
with ``@pytest.mark.gso_clock("2025-01-31T23:59:00+00:00")``. ``gso_analytics`` is a
started, strict :class:`~gso_analytics.testing.RecordingAnalytics` on a fresh
``memory://`` store driven by ``gso_clock``, with no forwarders (a test never sends
events anywhere, whatever ``ANALYTICS_WEBHOOK_URL`` says), stopped at teardown.

While a run lasts, :func:`~gso_analytics.testing.is_test_run` is true: an ASGI app
made in it counts into ``memory://`` (see :mod:`gso_analytics.integrations.asgi`).

Installed with the library, so every pytest run has them; ``pytest -p no:gso_analytics``
turns the plugin off.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import DEFAULT_START, FrozenClock, RecordingAnalytics, set_test_run


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gso_clock(start): where the gso_clock fixture starts (ISO-8601 or datetime)"
    )
    # An ASGI app made in this run counts into memory:// (see integrations.asgi).
    set_test_run(True)


def pytest_unconfigure(config: pytest.Config) -> None:
    set_test_run(False)


@pytest.fixture
def gso_clock(request: pytest.FixtureRequest) -> FrozenClock:
    """A clock that moves only when the test says (``advance(minutes=5)``, ``move_to(...)``)."""
    marker = request.node.get_closest_marker("gso_clock")
    return FrozenClock(marker.args[0] if marker is not None else DEFAULT_START)


@pytest.fixture
def gso_analytics(gso_clock: FrozenClock) -> Iterator[RecordingAnalytics]:
    """An ``Analytics`` of this test only: empty, strict, recording its calls in
    ``captured``."""
    analytics = RecordingAnalytics("memory://", clock=gso_clock, strict=True, forwarders=[])
    with analytics:
        yield analytics
