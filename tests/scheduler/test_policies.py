"""Downtime model, confirmation, flapping, maintenance and stale detection."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from minion.monitors.base import Status
from services.core.config import ConfigError
from services.core.config.packages import (
    DEFAULT_DOWNTIME,
    DowntimeStep,
    Flapping,
    MaintenanceWindow,
    downtime_interval,
)
from services.scheduler.config import parse_config
from services.scheduler.model import ServiceKey
from services.scheduler.timing import effective_interval
from tests.scheduler.util import (
    T0,
    all_outages,
    make_keeper,
    obs,
    outbox_events,
    policy,
    stale_sweeper,
)

KEY = ServiceKey("n1", "10.0.0.1", "HTTP")


@pytest.mark.parametrize(
    ("down_for", "expected"),
    [
        (0, 30),
        (299, 30),
        (300, 300),
        (43199, 300),
        (43200, 600),
        (431999, 600),
        (432000, 3600),
        (10**8, 3600),
    ],
)
def test_default_downtime_model_is_opennms(down_for: float, expected: float) -> None:
    assert downtime_interval(DEFAULT_DOWNTIME, down_for) == expected


def test_downtime_step_can_stop_polling() -> None:
    steps = (DowntimeStep(begin=0, interval=60), DowntimeStep(begin=86400, stop=True))
    assert downtime_interval(steps, 100) == 60
    assert downtime_interval(steps, 86400) is None


@pytest.mark.parametrize(
    ("downtime", "message"),
    [
        ([{"begin": "5m", "interval": "1m"}], "the first step must begin at 0"),
        ([{"begin": 0, "interval": "1m"}, {"begin": 0, "interval": "2m"}], "increasing order"),
        ([{"begin": 0}], "give either interval or stop"),
        ([{"begin": 0, "interval": "1m", "stop": True}], "give either interval or stop"),
    ],
)
def test_bad_downtime_model_is_refused(downtime: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_config({"packages": [{"name": "p", "downtime": downtime}]}, "f.yaml", env={})
    assert "packages[0].downtime" in str(err.value)


async def test_downtime_model_drives_the_interval_while_down(tmp_path: Path) -> None:
    keeper = await make_keeper(f"sqlite:///{tmp_path}/s.db", [KEY], policy(critical=None))
    rt = keeper.topology.services[KEY]
    await keeper.apply([obs(KEY, Status.UP, T0)])
    assert effective_interval(rt, T0) == 60  # the service's own interval
    await keeper.apply([obs(KEY, Status.DOWN, T0 + 10)])
    assert effective_interval(rt, T0 + 20) == 30
    assert effective_interval(rt, T0 + 10 + 6 * 3600) == 300
    assert effective_interval(rt, T0 + 10 + 13 * 3600) == 600
    assert effective_interval(rt, T0 + 10 + 6 * 86400) == 3600
    await keeper.persister.store.close()


async def test_confirmation_before_down_and_before_up(tmp_path: Path) -> None:
    keeper = await make_keeper(
        f"sqlite:///{tmp_path}/s.db", [KEY], policy(confirm_down=3, confirm_up=2, critical=None)
    )
    rt = keeper.topology.services[KEY]
    await keeper.apply([obs(KEY, Status.UP, T0)])
    # Two failures, then a success: a blip, no outage (the false "30-second outage").
    await keeper.apply([obs(KEY, Status.DOWN, T0 + 1), obs(KEY, Status.DOWN, T0 + 2)])
    assert rt.status is Status.UP and rt.suspect
    assert effective_interval(rt, T0 + 2) == 10  # re-polled at the retry interval
    await keeper.apply([obs(KEY, Status.UP, T0 + 3)])
    assert not rt.suspect
    assert await all_outages(keeper) == []
    # Three in a row, with an UNKNOWN in between that counts for nothing.
    await keeper.apply(
        [
            obs(KEY, Status.DOWN, T0 + 10),
            obs(KEY, Status.UNKNOWN, T0 + 11),
            obs(KEY, Status.DOWN, T0 + 12),
        ]
    )
    assert rt.status is Status.UP
    await keeper.apply([obs(KEY, Status.DOWN, T0 + 13)])
    assert rt.status is Status.DOWN
    [outage] = await all_outages(keeper)
    assert outage.opened_at == T0 + 10  # the first failure, not the confirmation
    await keeper.apply([obs(KEY, Status.UP, T0 + 20)])
    assert rt.status is Status.DOWN  # one success is not enough
    await keeper.apply([obs(KEY, Status.UP, T0 + 21)])
    assert rt.status is Status.UP
    [outage] = await all_outages(keeper)
    assert outage.closed_at == T0 + 20
    kinds = [(e["type"], e["action"]) for e in await outbox_events(keeper)]
    assert kinds == [
        ("service", "lost"),
        ("outage", "opened"),
        ("service", "regained"),
        ("outage", "closed"),
    ]
    await keeper.persister.store.close()


async def test_flapping_suppresses_lost_and_regained_until_settled(tmp_path: Path) -> None:
    keeper = await make_keeper(
        f"sqlite:///{tmp_path}/s.db",
        [KEY],
        policy(flapping=Flapping(window=6, threshold=4), critical=None),
    )
    rt = keeper.topology.services[KEY]
    seq = [
        Status.UP,
        Status.DOWN,
        Status.UP,
        Status.DOWN,
        Status.UP,
        Status.DOWN,
        Status.UP,
        Status.DOWN,
    ]
    await keeper.apply([obs(KEY, s, T0 + i) for i, s in enumerate(seq)])
    assert rt.flapping
    events = await outbox_events(keeper)
    kinds = [(e["type"], e["action"]) for e in events]
    assert kinds.count(("service", "flapping")) == 1
    flapping_at = kinds.index(("service", "flapping"))
    after = kinds[flapping_at + 1 :]
    assert ("service", "lost") not in after and ("service", "regained") not in after
    # Outages are still recorded, marked as suppressed by flapping.
    assert ("outage", "opened") in after
    assert all(e["data"].get("suppressed") == "flapping" for e in events[flapping_at + 1 :])
    # It stays down for a while: settled, with the current state.
    await keeper.apply([obs(KEY, Status.DOWN, T0 + 20 + i) for i in range(6)])
    assert not rt.flapping
    settled = [e for e in await outbox_events(keeper) if e["action"] == "settled"]
    assert len(settled) == 1 and settled[0]["data"]["status"] == "DOWN"
    await keeper.persister.store.close()


async def test_maintenance_marks_events_suppressed(tmp_path: Path) -> None:
    window = MaintenanceWindow(
        name="patch-tuesday",
        start=datetime.fromtimestamp(T0 - 3600, UTC),
        end=datetime.fromtimestamp(T0 + 3600, UTC),
    )
    keeper = await make_keeper(
        f"sqlite:///{tmp_path}/s.db", [KEY], policy(maintenance=(window,), critical=None)
    )
    await keeper.apply([obs(KEY, Status.UP, T0), obs(KEY, Status.DOWN, T0 + 1)])
    # Outside the window: not suppressed.
    await keeper.apply([obs(KEY, Status.UP, T0 + 7200)])
    events = await outbox_events(keeper)
    by_action = {(e["type"], e["action"]): e for e in events}
    assert by_action[("service", "lost")]["data"]["suppressed"] == "maintenance: patch-tuesday"
    assert "suppressed" not in by_action[("service", "regained")]["data"]
    assert len(await all_outages(keeper)) == 1  # recorded all the same
    await keeper.persister.store.close()


def test_weekly_maintenance_window_recurs() -> None:
    w = MaintenanceWindow(
        start=datetime(2026, 11, 3, 2, 0, tzinfo=UTC),
        end=datetime(2026, 11, 3, 4, 0, tzinfo=UTC),
        weekly=True,
    )
    assert w.active(datetime(2026, 11, 10, 3, 0, tzinfo=UTC).timestamp())
    assert not w.active(datetime(2026, 11, 10, 5, 0, tzinfo=UTC).timestamp())
    assert not w.active(datetime(2026, 10, 27, 3, 0, tzinfo=UTC).timestamp())  # before the first


async def test_stale_service_emits_poller_stale_once(tmp_path: Path) -> None:
    keeper = await make_keeper(f"sqlite:///{tmp_path}/s.db", [KEY], policy(critical=None))
    rt = keeper.topology.services[KEY]
    await keeper.apply([obs(KEY, Status.UP, T0)])
    assert await stale_sweeper(keeper).sweep(T0 + 100) == 0  # within 2 intervals (60 s)
    assert await stale_sweeper(keeper).sweep(T0 + 121) == 1
    assert rt.stale
    assert await stale_sweeper(keeper).sweep(T0 + 200) == 0  # once
    # Any result, even UNKNOWN, ends it.
    await keeper.apply([obs(KEY, Status.UNKNOWN, T0 + 201)])
    assert not rt.stale
    # A paused service is not stale.
    rt.paused = True
    assert await stale_sweeper(keeper).sweep(T0 + 10_000) == 0
    stale = [
        e for e in await outbox_events(keeper) if (e["type"], e["action"]) == ("poller", "stale")
    ]
    assert len(stale) == 1 and stale[0]["typeId"] == str(KEY)
    await keeper.persister.store.close()


async def test_regained_and_closed_say_how_long_the_outage_lasted(tmp_path: Path) -> None:
    """Issue 10, defect 16: ``service regained`` and ``outage closed`` carry the duration."""
    keeper = await make_keeper(f"sqlite:///{tmp_path}/s.db", [KEY], policy(critical=None))
    await keeper.apply([obs(KEY, Status.UP, T0), obs(KEY, Status.DOWN, T0 + 10)])
    await keeper.apply([obs(KEY, Status.UP, T0 + 10 + 312)])
    events = await outbox_events(keeper)
    by_action = {(e["type"], e["action"]): e for e in events}
    [outage] = await all_outages(keeper)
    expected = outage.closed_at - outage.opened_at
    assert expected == 312
    regained = by_action[("service", "regained")]["data"]
    closed = by_action[("outage", "closed")]["data"]
    for data in (regained, closed):
        assert data["durationSeconds"] == 312
        assert data["duration"] == "5m12s"
    assert regained["text"] == "service regained after 5m12s"
    assert closed["text"] == "outage closed: service regained after 5m12s"
    assert closed["reason"] == "service regained"  # consumers match on it: unchanged
    await keeper.persister.store.close()


async def test_after_a_restart_staleness_counts_from_the_startup_grace(tmp_path: Path) -> None:
    """Issue 10, defect 15: the scheduler's absence is not a ``poller stale`` per service."""
    from services.scheduler.assurance.housekeeping import STARTUP_GRACE

    keeper = await make_keeper(f"sqlite:///{tmp_path}/s.db", [KEY], policy(critical=None))
    rt = keeper.topology.services[KEY]
    await keeper.apply([obs(KEY, Status.UP, T0 - 3600)])  # the last poll before a long stop
    rt.added = T0  # the scheduler started again and scheduled it
    sweeper = stale_sweeper(keeper)
    # Two intervals (120 s here) after the restart, plus the grace minions have to reconnect.
    assert await sweeper.sweep(T0 + 121) == 0
    assert await sweeper.sweep(T0 + STARTUP_GRACE + 119) == 0
    # Still nothing long after that: now it is stale, and says when it was last polled.
    assert await sweeper.sweep(T0 + STARTUP_GRACE + 121) == 1
    [stale] = [
        e for e in await outbox_events(keeper) if (e["type"], e["action"]) == ("poller", "stale")
    ]
    assert stale["data"]["lastPollAt"] == T0 - 3600
    await keeper.persister.store.close()
