"""``mongodb://host/db`` and ``mongodb+srv://``: the production store, on pymongo, for a
replica set (a single-node one in development) or a sharded cluster.

Collections (prefix ``gso_analytics_`` by default, ``?prefix=`` to change it) keep the
seed's camelCase documents, so dashboards built on the seed keep working:

- ``daily`` (``{day, month, dau, newUsers, creditsEarned, ...}``), ``monthly``
  (``{month, mau, timedSessions, timedSessionS}``) and ``totals`` (all time): the
  folded figures, written only by the roll-up (:mod:`.rollup`);
- ``batches``: one document per applied batch part, its exactly-once guard, holding
  the part's increments (its *delta*) until they are folded;
- ``day_users``, ``month_users`` (``{userId, day|month}``, one per active player:
  ``dau`` and ``mau`` count the records newly inserted, so no read runs
  ``distinct()``), ``new_users`` (``{userId, day}``, one per registered player, the
  earliest day: ``newUsers`` follows its changes), ``user_revenue`` (``{userId, day,
  revenueCents}``), ``first_seen`` and ``first_payments`` (``{_id: userId, day}``);
- ``sessions`` (``{_id: sessionId, userId, username, loginAt, logoutAt, durationS, day,
  month, timedOut, open, origin, seq}``: a login mark with the end the walk gives it,
  :mod:`gso_analytics.sessions`), ``logouts`` (the logout marks), ``session_users``
  (one per player with marks, the fence of :mod:`.batch`);
- ``events`` (``{ts, userId, event, data, day}``, expired by a TTL index on ``ts``);
- ``tombstones`` and ``meta`` (players' data rights, :mod:`gso_analytics.erasure`),
  ``heartbeats``, ``locks`` (the index-build lease).

The modules: :mod:`.options` (URL, client, concerns), :mod:`.connection` (handle,
errors, transactions), :mod:`.indexes` (indexes, TTL, collections, the 0.2
migration), :mod:`.batch` (a part as a transaction), :mod:`.rollup` (deltas folded),
:mod:`.reads`, :mod:`.erase`, :mod:`.store` (the store itself).
"""

from .indexes import DEFAULT_EVENT_TTL, INDEX_BUILD_LEASE, MAX_EVENT_TTL
from .options import DEFAULT_DATABASE, DEFAULT_PREFIX, INSTALL_HINT
from .store import MongoStore, mongo_init

__all__ = [
    "DEFAULT_DATABASE",
    "DEFAULT_EVENT_TTL",
    "DEFAULT_PREFIX",
    "INDEX_BUILD_LEASE",
    "INSTALL_HINT",
    "MAX_EVENT_TTL",
    "MongoStore",
    "mongo_init",
]
