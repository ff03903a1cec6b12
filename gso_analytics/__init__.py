"""gso_analytics: exact, process-safe game analytics for Python game backends.

from gso_analytics import Analytics, open_store

with Analytics(open_store("sqlite:///gso_analytics.db")) as analytics:
    analytics.on_login("u1", "alice")
    analytics.track("credits.earn", "u1", {"amount": 50})
    print(analytics.get_metrics().to_dict())
"""

#: The one place the version is written: setup.cfg reads it, ``gso-analytics --version``
#: prints it.
__version__ = "0.2.0"

from .analytics import Analytics
from .counters import DAILY_FIELDS, DEFAULT_COUNTERS, CounterRule
from .errors import (
    ConfigurationError,
    GsoAnalyticsError,
    InvalidTypeError,
    StoreError,
    ValidationError,
)
from .forwarding import Backoff, Delivery, EncodedEvent, ForwardedEvent, Forwarder
from .http_forwarders import HttpForwarder, MixpanelForwarder, WebhookForwarder
from .kpis import KPIs
from .model import DailyStats, FlushBatch, Metrics, MonthStats, SessionRecord
from .store import Store, Transaction, open_store
from .validation import Limits

__all__ = [
    "DAILY_FIELDS",
    "DEFAULT_COUNTERS",
    "Analytics",
    "Backoff",
    "ConfigurationError",
    "CounterRule",
    "DailyStats",
    "Delivery",
    "EncodedEvent",
    "FlushBatch",
    "ForwardedEvent",
    "Forwarder",
    "GsoAnalyticsError",
    "HttpForwarder",
    "InvalidTypeError",
    "KPIs",
    "Limits",
    "Metrics",
    "MixpanelForwarder",
    "MonthStats",
    "SessionRecord",
    "Store",
    "StoreError",
    "Transaction",
    "ValidationError",
    "WebhookForwarder",
    "open_store",
]
