"""A report reads each store range once: the KPIs of one report share their reads
(:meth:`gso_analytics.kpis.KPIs.sharing_reads`), and give what fresh reads give."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gso_analytics import Analytics, open_store
from gso_analytics.demo import SimClock, plan_demo, replay
from gso_analytics.kpis import KPIs
from gso_analytics.report import collect_kpis
from gso_analytics.store import Store

TODAY = date(2026, 3, 12)


class CountingStore:
    """A store that counts each range read by (read, first, last)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads: Counter[tuple[str, str, str]] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if not name.endswith("_between"):
            return attribute

        def counted(first: str, last: str, *rest: Any) -> Any:
            self.reads[(name, first, last)] += 1
            return attribute(first, last, *rest)

        return counted


def test_a_report_reads_each_range_once_and_reports_what_fresh_reads_give() -> None:
    plan = plan_demo(players=80, days=12, seed=3, today=TODAY)
    clock = SimClock(datetime(2026, 3, 1, tzinfo=UTC))
    with open_store("memory://") as store:
        analytics = Analytics(store, clock=clock, forwarders=[])
        replay(plan, analytics, clock)
        analytics.stop()
        counting = CountingStore(store)
        kpis = KPIs(counting, clock=clock, test_users={"p00003"})  # type: ignore[arg-type]
        start, end = TODAY - timedelta(days=9), TODAY
        doc = collect_kpis(kpis, start, end)
        assert counting.reads, "the report read nothing"
        twice = {key: count for key, count in counting.reads.items() if count > 1}
        assert twice == {}
        # The same figures as each KPI read on its own, from the store each time.
        assert doc["headline"] == kpis.headline(start, end).to_dict()
        assert doc["retention"] == [r.to_dict() for r in kpis.retention(start, end, (1, 7, 30))]
        assert doc["sessions"] == [r.to_dict() for r in kpis.sessions(start, end)]
        assert doc["revenue"] == [r.to_dict() for r in kpis.revenue(start, end)]
        assert doc["activeUsers"] == [r.to_dict() for r in kpis.active_users(start, end)]
        # A plain KPIs keeps nothing: a second query reads the store again.
        before = sum(counting.reads.values())
        kpis.sessions(start, end)
        kpis.sessions(start, end)
        assert sum(counting.reads.values()) - before >= 4
