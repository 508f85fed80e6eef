"""The skip policy: under ``CI=true`` a skip fails the run, so a missing peer cannot pass unseen.

On a newcomer's machine (``CI`` unset or false) a test whose peer is missing
(PostgreSQL, snmpsim, monitoring-plugins, root, sshd, ...) skips with its
reason, as pytest's ``-ra`` summary shows. On CI the same skip is a failure
whose message names the reason: the CI machine is supposed to have every peer
(``.ci/run`` installs them), so a skip there means a peer went missing.

xfail is not touched: an expected failure is not a missing peer.

The hooks are activated by tests/conftest.py, which imports them. This module
imports nothing of the project, so tests/test_skip_policy.py can load it alone.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


def skips_fail() -> bool:
    """Whether a skip fails the run: ``CI`` is set to a true value (as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    # A skip's longrepr is (path, line, "Skipped: <reason>"); anything else is shown as is.
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, line, reason = longrepr
        return f"{reason.removeprefix('Skipped: ')} ({path}:{line})"
    return str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    # xfail is reported as a skip carrying ``wasxfail``: an expected failure is not a missing peer.
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI=true, where a skip fails the run (a missing peer must not pass "
            f"unseen): {_skip_reason(report)}"
        )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI, a skip in setup (``skipif`` marks, ``pytest.skip`` in a fixture), in the
    test or in teardown becomes a failure whose message names the skip's reason."""
    report = yield
    if skips_fail():
        _fail_skip(report)
    return report


#: Modules skipped at collection under CI; per session (pytester runs sessions inside this one).
_COLLECTION_SKIPS = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Under CI, remember a module skipped at collection (``pytest.skip(allow_module_level=True)``,
    ``pytest.importorskip``).

    Not turned into a collection error: that would interrupt the session
    before any test ran; the session's exit status and summary say it instead.
    """
    report = yield
    if skips_fail() and report.skipped:
        skips = collector.config.stash.setdefault(_COLLECTION_SKIPS, [])
        skips.append(f"{report.nodeid}: {_skip_reason(report)}")
    return report


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Name the modules skipped at collection under CI, which fail the run."""
    skips = config.stash.get(_COLLECTION_SKIPS, [])
    if skips:
        terminalreporter.section("skipped at collection under CI=true (fails the run)", red=True)
        for line in skips:
            terminalreporter.line(line)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Under CI, a module skipped at collection fails an otherwise green run."""
    green = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    if session.config.stash.get(_COLLECTION_SKIPS, []) and session.exitstatus in green:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
