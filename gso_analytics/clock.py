"""Time: the injectable clock, day and month keys in the configured timezone, rounding.

Every timestamp, day and month key comes from one ``clock`` callable so a test can
replay days; keys are computed in ``tz`` (UTC by default, as in the seed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from .errors import ConfigurationError

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def resolve_tz(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    if tz[:1] in ("+", "-") and tz[1:3].isdigit() and tz[3:4] == ":" and tz[4:].isdigit():
        minutes = int(tz[1:3]) * 60 + int(tz[4:])
        return timezone(timedelta(minutes=-minutes if tz[0] == "-" else minutes))
    try:
        return UTC if tz.upper() == "UTC" else ZoneInfo(tz)
    except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ConfigurationError(f"unknown timezone {tz!r}") from exc


def tz_name(tz: tzinfo) -> str:
    """A name :func:`resolve_tz` gives ``tz`` back from: batches carry their timezone
    by name, so a store (or a replay in another process) finds a session's day."""
    if tz is UTC:
        return "UTC"
    key = getattr(tz, "key", None)
    if isinstance(key, str):
        return key
    offset = tz.utcoffset(None)
    if isinstance(tz, timezone) and offset is not None:
        minutes = offset // timedelta(minutes=1)
        sign = "-" if minutes < 0 else "+"
        return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    raise ConfigurationError(
        f"tz {tz!r}: give a zone name ('Europe/Paris'), a ZoneInfo or a fixed offset"
        " (datetime.timezone)"
    )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, exactly (floor), for an aware datetime."""
    if moment.tzinfo is None:
        raise ConfigurationError("the clock must return aware datetimes (with tzinfo)")
    return (moment - EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    """The UTC datetime of ``ms`` milliseconds since the epoch.

    ``fromtimestamp`` is twice as fast as adding a timedelta to the epoch, and exact
    here: a double holds an epoch-seconds value to well under the half microsecond
    that ``fromtimestamp`` rounds to, so the milliseconds come back unchanged.
    """
    return datetime.fromtimestamp(ms / 1000, UTC)


def iso_ms(moment: datetime) -> str:
    """``2026-11-25T16:01:30.123Z``: how the seed's ``Date.toISOString()`` writes it."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"  # "+00:00" -> "Z"


def iso_from_ms(ms: int) -> str:
    """:func:`iso_ms` of integer milliseconds since the epoch, formatting each second once.

    Stores and forwarders write every event's time as text; ``isoformat`` costs about a
    microsecond a call, while the events of a flush or a forwarded batch mostly share
    a handful of seconds, so the second's prefix comes from a small cache.
    """
    return f"{_second_prefix(ms // 1000)}{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=256)
def _second_prefix(second: int) -> str:
    return iso_ms(from_ms(second * 1000))[:-4]  # "2026-11-25T16:01:30."


def parse_iso_ms(text: str) -> datetime:
    return datetime.fromisoformat(text)


def round_half_up(value: float) -> int:
    """JavaScript's ``Math.round`` for the values we round (halves go up)."""
    return math.floor(value + 0.5)


def duration_s(login_at: datetime, logout_at: datetime) -> int:
    """Rounded seconds between login and logout; a clock that went backwards gives 0."""
    return max(0, round_half_up((logout_at - login_at).total_seconds()))


class DayKeys:
    """Maps a moment (milliseconds since the epoch) to its ``YYYY-MM-DD`` day and
    ``YYYY-MM`` month in ``tz``.

    The last day's bounds are cached, so most calls are two integer comparisons.
    """

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        # One tuple, replaced whole, so threads never see a torn cache.
        self._cached: tuple[int, int, tuple[str, str]] = (0, 0, ("", ""))

    def __call__(self, ms: int) -> tuple[str, str]:
        start, end, keys = self._cached
        if start <= ms < end:
            return keys
        return self.bounds(ms)[2:]

    def bounds(self, ms: int) -> tuple[int, int, str, str]:
        """The day of ``ms``: ``(start_ms, end_ms, day, month)``, its local midnights
        in milliseconds and its keys (a batch carries them for its sessions' days)."""
        start, end, keys = self._cached
        if start <= ms < end:
            return (start, end, *keys)
        local = from_ms(ms).astimezone(self.tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        # Next local midnight, robust to DST: step past it, then truncate.
        next_midnight = (midnight + timedelta(hours=26)).replace(hour=0)
        keys = (local.strftime("%Y-%m-%d"), local.strftime("%Y-%m"))
        self._cached = (to_ms(midnight), to_ms(next_midnight), keys)
        return (*self._cached[:2], *keys)
