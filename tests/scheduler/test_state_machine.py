"""Property tests of the state machine: any sequence of results yields well-formed outages.

They run on the pure rules, without a store; the keeper over SQLite is covered
by the policy and node-outage tests.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minion.monitors.base import Status
from services.scheduler.assurance import rules
from services.scheduler.assurance.transitions import (
    EventsQueued,
    OutageClosed,
    OutageOpened,
    Outcome,
)
from services.scheduler.model import ServiceKey
from tests.scheduler.util import T0, obs, policy, topology

KEY = ServiceKey("n1", "10.0.0.1", "HTTP")
statuses = st.sampled_from([Status.UP, Status.DOWN, Status.UNKNOWN])


def reference(seq: list[Status], n: int, m: int) -> tuple[Status, list[list[float | None]]]:
    """The rules, written as plainly as possible: outages as [opened_at, closed_at]."""
    state, against, since = Status.UNKNOWN, 0, None
    outages: list[list[float | None]] = []
    for i, s in enumerate(seq):
        t = T0 + i
        if s is Status.UNKNOWN:
            continue
        if s is Status.DOWN:
            if state is Status.DOWN:
                against, since = 0, None
                continue
            against, since = against + 1, since if since is not None else t
            if against >= n:
                state, against = Status.DOWN, 0
                outages.append([since, None])
                since = None
        else:
            if state is not Status.DOWN:
                state, against, since = Status.UP, 0, None
                continue
            against, since = against + 1, since if since is not None else t
            if against >= m:
                state, against = Status.UP, 0
                outages[-1][1] = since
                since = None
    return state, outages


def run(
    seq: list[Status], n: int, m: int, batch: int
) -> tuple[Status, list[list[float | None]], list[dict[str, object]]]:
    """The pure rules over ``seq``, in batches; the transitions replayed as the store would."""
    topo = topology([KEY], policy(n, m, critical=None))
    rt = topo.services[KEY]
    outages: list[list[float | None]] = []
    events: list[dict[str, object]] = []
    observations = [obs(KEY, s, T0 + i) for i, s in enumerate(seq)]
    for i in range(0, len(observations), batch):
        out = Outcome()
        for o in observations[i : i + batch]:
            rules.record_last_poll(rt, o)
            out.add(rules.observe(rt, o, topo))
        for t in out.transitions:
            match t:
                case OutageOpened():
                    t.ref.id = len(outages) + 1
                    outages.append([t.at, None])
                case OutageClosed():
                    assert t.ref.id is not None
                    outages[t.ref.id - 1][1] = t.at
                case EventsQueued():
                    events += [{"type": e.type, "action": e.action} for e in t.events]
    return rt.status, outages, events


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq=st.lists(statuses, max_size=40),
    n=st.integers(1, 3),
    m=st.integers(1, 3),
    batch=st.integers(1, 7),
)
def test_any_sequence_yields_well_formed_outages(
    seq: list[Status], n: int, m: int, batch: int
) -> None:
    state, outages, events = run(seq, n, m, batch)
    expected_state, expected = reference(seq, n, m)
    assert state is expected_state
    assert outages == expected
    # Never two open at once, every close after its open.
    assert sum(1 for _, closed in outages if closed is None) <= 1
    assert all(o[1] is None for o in outages[-1:]) or all(o[1] is not None for o in outages)
    for opened, closed in outages:
        assert closed is None or closed >= opened  # type: ignore[operator]
    # One lost + one opened per outage, one regained + one closed per closed outage.
    kinds = [(e["type"], e["action"]) for e in events]
    assert kinds.count(("service", "lost")) == len(outages) == kinds.count(("outage", "opened"))
    closed = sum(1 for o in outages if o[1] is not None)
    assert kinds.count(("service", "regained")) == closed == kinds.count(("outage", "closed"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.lists(statuses, max_size=30), n=st.integers(1, 3), m=st.integers(1, 3))
def test_unknown_changes_nothing(seq: list[Status], n: int, m: int) -> None:
    with_unknown = run(seq, n, m, 3)
    # The same results with every UNKNOWN removed (times kept): identical outages and state.
    kept = [s if s is not Status.UNKNOWN else None for s in seq]
    _, ref_outages = reference([s for s in kept if s is not None], n, m)
    state, outages, _ = with_unknown
    assert len(outages) == len(ref_outages)
    assert state is reference(seq, n, m)[0]
    assert outages == reference(seq, n, m)[1]
