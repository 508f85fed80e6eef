"""A scoped caller's outages and results, on SQLite and PostgreSQL: only its nodes'.

The visible node ids reach the query as one condition; beyond the inline
limit as one JSON parameter (a location may hold more nodes than a statement
may have parameters).
"""

from __future__ import annotations

import pytest

from services.core.access.visibility import INLINE_VALUES
from services.scheduler.store import SchedulerStore


@pytest.mark.parametrize("visible", [3, INLINE_VALUES + 100])
async def test_results_of_the_visible_nodes_only_counted_before_paging(
    db_url: str, visible: int
) -> None:
    store = SchedulerStore(db_url)
    await store.open()
    try:
        count = visible + 50
        await store.add_results(
            [
                {
                    "node_id": f"n-{i:04d}",
                    "ip": "10.0.0.1",
                    "service": "ICMP",
                    "status": "UP",
                    "reason": "",
                    "response_time_ms": 1.0,
                    "values": {},
                    "at": 1_800_000_000.0 + i,
                    "system_id": "m1",
                }
                for i in range(count)
            ]
        )
        nodes = [f"n-{i:04d}" for i in range(0, count, 2)][:visible]
        seen: list[str] = []
        before = None
        while True:
            rows, total = await store.list_results(
                node_id=None,
                ip=None,
                service=None,
                since=None,
                until=None,
                before_id=before,
                limit=200,
                node_ids=nodes,
            )
            assert total == len(nodes)
            seen += [r.key.node_id for r in rows]
            if len(rows) < 200:
                break
            before = rows[-1].id
        assert sorted(seen) == sorted(nodes)
        rows, total = await store.list_results(
            node_id=None,
            ip=None,
            service=None,
            since=None,
            until=None,
            before_id=None,
            limit=10,
            node_ids=[],
        )
        assert (rows, total) == ([], 0)
        outages, total = await store.list_outages(
            state=None, node_id=None, service=None, before_id=None, limit=10, node_ids=nodes
        )
        assert (outages, total) == ([], 0)
    finally:
        await store.close()
