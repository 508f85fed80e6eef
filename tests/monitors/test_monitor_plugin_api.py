"""Plugin API: the example package under examples/plugin, installed for real,
found through the ``vigil.monitors`` entry point and polled via the registry."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from minion.monitors import registry
from minion.monitors.base import Status
from services.core.params import registry as params_registry
from tests.monitors.conftest import REPO


def _clear_registry_caches() -> None:
    params_registry.plugin_specs.cache_clear()
    params_registry.params_model.cache_clear()
    registry.monitor_class.cache_clear()


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pip-installs examples/plugin into a throw-away directory put on sys.path
    (the shared virtualenv stays as it was)."""
    target = tmp_path_factory.mktemp("plugin-site")
    # build from a copy: setuptools leaves build/ and *.egg-info next to the sources
    source = tmp_path_factory.mktemp("plugin-src") / "plugin"
    shutil.copytree(
        REPO / "examples" / "plugin", source, ignore=shutil.ignore_patterns("__pycache__")
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    sys.path.insert(0, str(target))
    _clear_registry_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        for mod in [m for m in sys.modules if m.startswith("vigil_example_plugin")]:
            del sys.modules[mod]
        _clear_registry_caches()


def test_entry_point_is_discovered(example_plugin):
    assert "file_age" in registry.available()
    assert registry.monitor_class("file_age").name == "file_age"


def test_discovered_in_a_fresh_process(example_plugin):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example_plugin), str(REPO)])}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from minion.monitors.registry import available; print(available())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(REPO),
    )
    assert out.returncode == 0, out.stderr
    assert "'file_age'" in out.stdout


def test_params_validated_at_configuration_time(example_plugin):
    with pytest.raises(
        params_registry.ParamsError, match=r"params\.path: must be an absolute path"
    ):
        params_registry.validate_params("file_age", {"path": "relative/file"})
    with pytest.raises(params_registry.ParamsError, match=r"params\.max_age: unknown key"):
        params_registry.validate_params("file_age", {"path": "/tmp/x", "max_age": 5})


async def test_poll_through_the_registry(example_plugin, poll, tmp_path):
    fresh = tmp_path / "fresh.dump"
    fresh.write_bytes(b"x" * 2048)
    stale = tmp_path / "stale.dump"
    stale.write_bytes(b"old")
    two_days_ago = time.time() - 2 * 86400
    os.utime(stale, (two_days_ago, two_days_ago))

    up = await poll("file_age", "127.0.0.1", {"path": str(fresh), "min_size_bytes": 1024})
    assert up.status is Status.UP, up.reason
    assert up.values["size_bytes"] == 2048.0

    old = await poll("file_age", "127.0.0.1", {"path": str(stale)})
    assert old.status is Status.DOWN
    assert old.reason.startswith(f"{stale} is 1728")
    assert "older than 86400s" in old.reason

    missing = await poll("file_age", "127.0.0.1", {"path": str(tmp_path / "nope")})
    assert missing.status is Status.DOWN
    assert missing.reason.endswith("does not exist")


def test_a_plugin_that_cannot_be_imported_is_reported_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.core.config import ConfigError
    from services.scheduler.config import parse_config

    params_registry.params_model.cache_clear()
    monkeypatch.setitem(params_registry.BUILTIN, "broken", "no_such_module_for_vigil:Monitor")
    try:
        node = {
            "id": "n",
            "interfaces": [{"ip": "10.0.0.1", "services": [{"name": "X", "monitor": "broken"}]}],
        }
        with pytest.raises(
            ConfigError, match=r"monitor 'broken' cannot be loaded from no_such_module_for_vigil"
        ):
            parse_config({"nodes": [node]}, "f.yaml", env={})
    finally:
        params_registry.params_model.cache_clear()
