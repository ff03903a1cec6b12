"""The library's exceptions.

Every backend translates its driver's errors into :class:`StoreError` (``raise
StoreError(...) from exc``), so callers handle one family of errors whatever store
they configured.
"""

from __future__ import annotations


class GsoAnalyticsError(Exception):
    """Base class of every error raised by gso_analytics."""


class ConfigurationError(GsoAnalyticsError):
    """A setting is missing or invalid (bad store URL, unknown scheme, bad option)."""


class StoreError(GsoAnalyticsError):
    """The store could not be reached or refused an operation.

    The flush thread keeps the batch and retries; callers of ``flush()`` and the read
    methods see this error. ``permanent`` is the backend's word that retrying the same
    operation cannot succeed (the store rejects what it was given, not an outage): the
    flusher then sets the batch aside after a few attempts instead of blocking every
    later batch behind it.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


#: The most characters of caller-supplied text (a ``data`` path, which holds the
#: caller's keys) an error message carries: rejections are logged and a few dozen are
#: kept for the process's life, so a 4 MiB key must not become a 4 MiB log line.
SHOWN_CHARS = 64


def shown(text: str) -> str:
    """``text`` as a message may show it: as it is when short and printable; otherwise
    its ``repr`` (newlines, terminal escapes and other control characters escaped, so
    no forged log line) cut to :data:`SHOWN_CHARS`, with its length."""
    if len(text) <= SHOWN_CHARS and text.isprintable():
        return text
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}... ({len(text)} characters)"


class ValidationError(GsoAnalyticsError, ValueError):
    """A tracked call was rejected (bad user id, event name, amount or data).

    Raised only with ``strict=True``; in lenient mode the call is counted in
    ``stats()["rejected"]`` and logged once per (event, field, reason).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{shown(field)}: {message}")
        self.field = field if len(field) <= SHOWN_CHARS else field[:SHOWN_CHARS] + "..."


class InvalidTypeError(ValidationError, TypeError):
    """A tracked call passed a value of the wrong type (a dict as user id, a bool amount)."""
