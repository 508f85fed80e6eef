"""The skip policy of tests/conftest.py: under ``CI=true`` a skip fails the run, elsewhere it skips.

Each case runs a small pytest session (``pytester``) whose conftest takes the
hooks from ours, so what is tested is the hook the suite really uses.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

CONFTEST = """
from tests.skip_policy import (
    pytest_make_collect_report,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
"""

# One of each way a test ends up skipped, plus what must stay as it is.
CASES = """
import pytest

@pytest.fixture
def database():
    pytest.skip("PostgreSQL unreachable at 127.0.0.1:5432")

def test_skip_in_fixture(database):
    pass

@pytest.mark.skipif(True, reason="snmpsim is not installed")
def test_skipif_mark():
    pass

@pytest.mark.skip(reason="needs root")
def test_skip_mark():
    pass

def test_skip_in_body():
    pytest.skip("monitoring-plugins-basic is not installed")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_xfail_mark():
    assert False

def test_xfail_imperative():
    pytest.xfail("known bug, imperative")

@pytest.mark.xfail(reason="known bug, fixed", strict=False)
def test_xpass():
    pass

def test_passes():
    pass
"""

MODULE_SKIP = """
import pytest

pytest.skip("sshd is not installed", allow_module_level=True)

def test_never_collected():
    pass
"""


@pytest.fixture
def session(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory holding our hooks and every kind of skip."""
    pytester.makeconftest(CONFTEST)
    # pytest-asyncio warns when its loop scope is unset; these sessions have no async tests.
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_cases=CASES)
    return pytester


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_under_ci_a_skip_fails_naming_its_reason(
    session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    result = session.runpytest("-p", "no:cacheprovider", "-rfE")
    # setup-time skips (fixture, skipif, skip marks) become errors, a skip in the body a failure;
    # xfail and xpass are untouched.
    result.assert_outcomes(passed=1, failed=1, errors=3, xfailed=2, xpassed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for reason in (
        "PostgreSQL unreachable at 127.0.0.1:5432",
        "snmpsim is not installed",
        "needs root",
        "monitoring-plugins-basic is not installed",
    ):
        result.stdout.fnmatch_lines([f"*skipped under CI=true*{reason}*"])
    result.stdout.no_fnmatch_line("*skipped under CI=true*known bug*")


def test_without_ci_a_skip_skips_with_its_reason(
    session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = session.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=4, xfailed=2, xpassed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["SKIPPED*PostgreSQL unreachable at 127.0.0.1:5432"])
    result.stdout.no_fnmatch_line("*skipped under CI=true*")


def test_ci_false_keeps_skips(session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    result = session.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=4, xfailed=2, xpassed=1)
    assert result.ret == pytest.ExitCode.OK


def test_under_ci_a_module_skipped_at_collection_fails_the_run(
    session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    session.makepyfile(test_module_skip=MODULE_SKIP)
    monkeypatch.setenv("CI", "true")
    alone = session.runpytest("-p", "no:cacheprovider", "test_module_skip.py")
    assert alone.ret == pytest.ExitCode.TESTS_FAILED
    alone.stdout.fnmatch_lines(
        ["*skipped at collection under CI=true*", "test_module_skip.py: sshd is not installed*"]
    )
    # not a collection error, which would interrupt the session: the other modules still run
    session.makepyfile(test_passing="def test_passes():\n    pass\n")
    mixed = session.runpytest("-p", "no:cacheprovider", "test_module_skip.py", "test_passing.py")
    mixed.assert_outcomes(passed=1, skipped=1)
    assert mixed.ret == pytest.ExitCode.TESTS_FAILED


def test_without_ci_a_module_skipped_at_collection_skips(
    session: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    session.makepyfile(test_module_skip=MODULE_SKIP)
    monkeypatch.delenv("CI", raising=False)
    result = session.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=5, xfailed=2, xpassed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["SKIPPED*sshd is not installed"])
