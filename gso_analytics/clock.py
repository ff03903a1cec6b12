"""Time: the injectable clock, day and month keys in the configured timezone, rounding.

Every timestamp, day and month key comes from one ``clock`` callable so a test can
replay days; keys are computed in ``tz`` (UTC by default, as in the seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from .errors import ConfigurationError

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def resolve_tz(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    try:
        return UTC if tz.upper() == "UTC" else ZoneInfo(tz)
    except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ConfigurationError(f"unknown timezone {tz!r}") from exc


def to_utc_ms(moment: datetime) -> datetime:
    """``moment`` in UTC, truncated to milliseconds (JavaScript ``Date`` resolution)."""
    if moment.tzinfo is None:
        raise ConfigurationError("the clock must return aware datetimes (with tzinfo)")
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def iso_ms(moment: datetime) -> str:
    """``2026-11-25T16:01:30.123Z``: how the seed's ``Date.toISOString()`` writes it."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso_ms(text: str) -> datetime:
    return datetime.fromisoformat(text)


def round_half_up(value: float) -> int:
    """JavaScript's ``Math.round`` for the values we round (halves go up)."""
    return math.floor(value + 0.5)


def duration_s(login_at: datetime, logout_at: datetime) -> int:
    """Rounded seconds between login and logout; a clock that went backwards gives 0."""
    return max(0, round_half_up((logout_at - login_at).total_seconds()))


class DayKeys:
    """Maps a moment to its ``YYYY-MM-DD`` day and ``YYYY-MM`` month in ``tz``.

    The current day's bounds are cached, so the hot path is two comparisons.
    """

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        never = datetime.min.replace(tzinfo=UTC)
        # One tuple, replaced whole, so threads never see a torn cache.
        self._cached: tuple[datetime, datetime, tuple[str, str]] = (never, never, ("", ""))

    def __call__(self, moment: datetime) -> tuple[str, str]:
        start, end, keys = self._cached
        if start <= moment < end:
            return keys
        local = moment.astimezone(self.tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        # Next local midnight, robust to DST: step past it, then truncate.
        next_midnight = (midnight + timedelta(hours=26)).replace(hour=0)
        keys = (local.strftime("%Y-%m-%d"), local.strftime("%Y-%m"))
        self._cached = (midnight, next_midnight, keys)
        return keys
