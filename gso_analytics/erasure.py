"""Players' data rights: erasure tombstones, the rewriting of a batch for erased
players, pseudonymous ids, and what an export or an erase hands back.

An erased player's records are not deleted where they make a distinct count (the
(day, user) and (month, user) records behind ``dau``/``mau``, registrations, the
first-seen and first-payment days, revenue per payer and day, sessions and their
logout marks): the id is replaced by a random *token*, so every figure of the past,
and every figure recomputed later (retention, ARPPU, sessions per user), stays what
it was. The username goes; the event stream, which carries free-form ``data``, is
deleted. A *tombstone* ``HMAC(secret, user id) -> token`` stays behind, so a call of
that player still buffered in another worker, retried later or replayed from a
dead-letter file, is mapped to the same token inside the transaction that writes it
(:func:`~gso_analytics.store.apply_batch`): the id never comes back, and the token's
records stay one player. The secret is random, made once per store and kept in it,
so a tombstone cannot be matched against a list of guessed ids without the store; or
it is kept apart (:func:`configured_erasure_secret`) and the store keeps only a check
of it, so a copy of the store alone cannot be matched either.
"""

from __future__ import annotations

import functools
import hmac
import json
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import attrs

from .clock import iso_ms
from .errors import ConfigurationError
from .model import USER, FlushBatch, Login, Logout, Number, SessionRecord

#: The prefix of the tokens that replace an erased player's id.
TOKEN_PREFIX = "erased-"

#: Recent (key, player) hashes kept by :func:`keyed_hash`: about 300 bytes each.
HASH_CACHE = 16_384


def new_secret() -> str:
    """A store's erasure secret (hex; 256 random bits)."""
    return secrets.token_hex(32)


#: Where a process finds the erasure secret when it is kept outside the store: the
#: secret itself, or the path of a file holding it (read once, at start-up).
ERASURE_SECRET_ENV = "GSO_ANALYTICS_ERASURE_SECRET"
ERASURE_SECRET_FILE_ENV = "GSO_ANALYTICS_ERASURE_SECRET_FILE"
#: The shortest secret taken (as ``pseudonymize_key``).
MIN_SECRET_LENGTH = 16
#: What the store keeps instead of a secret kept outside it: this prefix and a keyed
#: check, which tells the secret again and reveals nothing of it.
_CHECK_PREFIX = "outside:"
_CHECK_TEXT = "gso_analytics: the erasure secret of this store"


def configured_erasure_secret(given: str | None, environ: Mapping[str, str]) -> str | None:
    """The erasure secret kept outside the store: ``given`` (``Analytics(erasure_secret=
    ...)``), else :data:`ERASURE_SECRET_ENV`, else the file :data:`ERASURE_SECRET_FILE_ENV`
    names (its text, without the line end); None: the store keeps its own."""
    secret = given
    if secret is None and environ.get(ERASURE_SECRET_ENV):
        secret = environ[ERASURE_SECRET_ENV]
    elif secret is None and environ.get(ERASURE_SECRET_FILE_ENV):
        path = environ[ERASURE_SECRET_FILE_ENV]
        try:
            with open(path, encoding="utf-8") as file:
                secret = file.read().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"{ERASURE_SECRET_FILE_ENV}: cannot read {path}: {exc.strerror}"
            ) from None
    if secret is not None and (not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH):
        raise ConfigurationError(
            f"the erasure secret must be a text of at least {MIN_SECRET_LENGTH} characters"
        )
    return secret


def secret_check(secret: str) -> str:
    """What a store keeps of an erasure secret kept outside it."""
    return _CHECK_PREFIX + keyed_hash(secret, _CHECK_TEXT)


def is_secret_check(stored: str) -> bool:
    return stored.startswith(_CHECK_PREFIX)


def new_token() -> str:
    """The random id an erased player's records keep (no function of the id)."""
    return TOKEN_PREFIX + secrets.token_hex(16)


@functools.lru_cache(maxsize=HASH_CACHE)
def keyed_hash(key: str | bytes, user_id: str) -> str:
    """HMAC-SHA256 of ``user_id`` under ``key``, hex: tombstones and pseudonymous ids.

    Every flush hashes each of its players to look for tombstones, on the flush
    thread, holding the GIL: about 2 µs each, a third of a memory-store flush. The
    same players come back flush after flush, so recent hashes are kept."""
    raw = key.encode() if isinstance(key, str) else key
    return hmac.digest(raw, user_id.encode(), "sha256").hex()


def rename_users(batch: FlushBatch, names: Mapping[str, str], *, keep_events: bool) -> FlushBatch:
    """``batch`` with each id of ``names`` replaced by ``names[id]`` and those players'
    usernames dropped; their events kept (renamed) or dropped. Counters are anonymous
    and stay as they are, so the day's figures are the same either way."""
    if not names:
        return batch

    def ids(users: Iterable[str]) -> set[str]:
        return {names.get(u, u) for u in users}

    def login(m: Login) -> Login:
        if m[USER] not in names:
            return m
        sid, user, at, origin, seq, _, day, month = m
        return (sid, names[user], at, origin, seq, None, day, month)

    def logout(m: Logout) -> Logout:
        sid, user, at, origin, seq = m
        return (sid, names[user], at, origin, seq) if user in names else m

    events = [
        (ts_ms, names.get(user, user), name, data, day)
        for ts_ms, user, name, data, day in batch.events
        if keep_events or user not in names
    ]
    payments: dict[str, dict[str, Number]] = {}
    for day, payers in batch.payments.items():
        renamed = payments.setdefault(day, {})
        for user, cents in payers.items():
            key = names.get(user, user)
            renamed[key] = renamed.get(key, 0) + cents
    activity: dict[str, list[int]] = {}
    for user, marks in batch.activity.items():
        activity.setdefault(names.get(user, user), []).extend(marks)
    return attrs.evolve(
        batch,
        activity={user: tuple(sorted(marks)) for user, marks in activity.items()},
        day_users={k: ids(v) for k, v in batch.day_users.items()},
        month_users={k: ids(v) for k, v in batch.month_users.items()},
        new_users={k: ids(v) for k, v in batch.new_users.items()},
        logins=[login(m) for m in batch.logins],
        logouts=[logout(m) for m in batch.logouts],
        events=events,
        payments=payments,
    )


def pseudonymize(batch: FlushBatch, key: bytes) -> FlushBatch:
    """``batch`` with every player id replaced by its keyed hash and no usernames: what
    ``Analytics(pseudonymize_key=...)`` stores. A hash is one-to-one on the ids in
    practice, so every distinct count is the same as with the ids themselves."""
    return rename_users(batch, {u: keyed_hash(key, u) for u in batch.players()}, keep_events=True)


def mention_needles(names: Iterable[str]) -> list[str]:
    """How each of ``names`` reads as a JSON string in stored event ``data`` (compact,
    non-ASCII kept, as :func:`~gso_analytics.validation.encode_data` writes it): a
    store may skip the events whose data text holds none of them."""
    return sorted({json.dumps(name, ensure_ascii=False) for name in names})


def replace_mentions(value: Any, names: Collection[str], token: str) -> tuple[Any, int]:
    """``value`` (a JSON value) with every string equal to one of ``names``, at any
    depth, replaced by ``token``; and how many were replaced. Keys are left as they are:
    a game that keys its data by player id keeps them (see the data rights page)."""
    if isinstance(value, str):
        return (token, 1) if value in names else (value, 0)
    if isinstance(value, list):
        items = [replace_mentions(item, names, token) for item in value]
        return [item for item, _ in items], sum(n for _, n in items)
    if isinstance(value, dict):
        pairs = {key: replace_mentions(item, names, token) for key, item in value.items()}
        return {key: item for key, (item, _) in pairs.items()}, sum(n for _, n in pairs.values())
    return value, 0


def mentions(data: str, names: Collection[str]) -> bool:
    """Whether the JSON text ``data`` holds one of ``names`` as a string, at any depth."""
    return replace_mentions(json.loads(data), names, "")[1] > 0


def rewrite_mentions(data: str, names: Collection[str], token: str) -> str | None:
    """The JSON text ``data`` with the strings equal to one of ``names`` replaced by
    ``token``, encoded as the library encodes data; None when none is there."""
    value, replaced = replace_mentions(json.loads(data), names, token)
    if not replaced:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@attrs.frozen
class UserRecords:
    """What a store keeps about one player besides sessions and events."""

    days_active: list[str] = attrs.field(factory=list)
    months_active: list[str] = attrs.field(factory=list)
    registered_on: str | None = None  # the earliest registration (one record a player)
    first_seen: str | None = None
    first_payment: str | None = None
    revenue_cents: dict[str, Number] = attrs.field(factory=dict)  # day -> cents


def read_user_records(
    keys: Callable[[str, str], list[str]],
    first: Callable[[str], str | None],
    revenue: Mapping[str, Number],
) -> UserRecords:
    """A player's :class:`UserRecords` from a store's reads, which name the records as
    every backend does: ``keys(name, column)`` is the player's keys in the (key, player)
    records ``name``, sorted; ``first(name)`` the player's day in the per-player day
    records ``first_seen``, ``first_payments`` or ``new_users``; ``revenue`` day ->
    cents."""
    return UserRecords(
        days_active=keys("day_users", "day"),
        months_active=keys("month_users", "month"),
        registered_on=first("new_users"),
        first_seen=first("first_seen"),
        first_payment=first("first_payments"),
        revenue_cents=dict(sorted(revenue.items())),
    )


#: How to read, after an erase, what a returning player's calls stored under the token.
EXPORT_AFTER_ERASE = (
    "export_user(ID, after_erase=True), or gso-analytics export-user ID --after-erase"
)


@attrs.frozen
class ErasureReceipt:
    """What ``erase_user`` did: records whose id became the token (``pseudonymized``,
    per collection), records deleted (``deleted``: events), other players' events whose
    ``data`` named the player and now name the token (``mentions``), and whether the
    player was erased before (the same token is kept: the call is idempotent)."""

    pseudonymized: Mapping[str, int]
    deleted: Mapping[str, int]
    already_erased: bool
    #: SQLite: whether the WAL, which holds the pages as they were, was cut to zero
    #: bytes after the erase (None where the store has no such file).
    wal_truncated: bool | None = None
    mentions: int = 0
    #: Dead letters rewritten in the ``dead_letter_dir`` the erase could see (None:
    #: it had none).
    dead_letters: int | None = None

    @property
    def total(self) -> int:
        return sum(self.pseudonymized.values()) + sum(self.deleted.values()) + self.mentions

    @property
    def status(self) -> str:
        """``erased``, ``already erased`` (an earlier erase found the player), or ``not
        found``: the store held nothing under that id (a typo, another store, a store
        written with ``pseudonymize_key`` asked with the wrong key)."""
        if self.total:
            return "erased"
        return "already erased" if self.already_erased else "not found"

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "pseudonymized": dict(self.pseudonymized),
            "deleted": dict(self.deleted),
            "mentions": self.mentions,
            "alreadyErased": self.already_erased,
            "walTruncated": self.wal_truncated,
            "deadLetters": self.dead_letters,
            "total": self.total,
            # A returning player's new calls are stored under the token: how to get them.
            "exportAfterErase": EXPORT_AFTER_ERASE,
        }


def session_export(session: SessionRecord) -> dict[str, Any]:
    """A session as JSON-ready data (ISO 8601 times)."""
    doc = session.to_dict()
    doc["loginAt"] = iso_ms(session.login_at)
    doc["logoutAt"] = None if session.logout_at is None else iso_ms(session.logout_at)
    doc["lastAt"] = None if session.last_at is None else iso_ms(session.last_at)
    return doc
