"""Nagios plugin adapter with the real Monitoring Plugins (check_dummy, check_tcp)."""

from __future__ import annotations

import asyncio
import os
import stat
import textwrap
from pathlib import Path

import pytest

from minion.monitors.base import Status
from minion.monitors.nagios import parse_output, parse_perfdata, set_plugin_dirs
from tests.monitors.conftest import free_port


@pytest.fixture(autouse=True)
def plugin_dir(nagios_plugins, tmp_path):
    set_plugin_dirs([nagios_plugins, str(tmp_path)])
    yield tmp_path
    set_plugin_dirs(["/usr/lib/nagios/plugins", "/usr/lib/monitoring-plugins"])


def _script(directory, name: str, body: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize(
    ("code", "status"),
    [(0, Status.UP), (1, Status.UP), (2, Status.DOWN), (3, Status.UNKNOWN)],
)
async def test_check_dummy_exit_codes(poll, code, status):
    out = await poll(
        "nagios", "127.0.0.1", {"plugin": "check_dummy", "args": [str(code), "from vigil"]}
    )
    assert out.status is status, out.reason
    assert out.values["exit_code"] == float(code)
    names = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}
    assert out.reason == f"{names[code]}: from vigil"
    if code == 1:
        assert out.values["warning"] == 1.0
    else:
        assert "warning" not in out.values


async def test_check_tcp_up_with_perfdata(poll, tcp_server):
    async def hello(reader, writer):
        writer.write(b"hello\r\n")
        await writer.drain()
        await reader.read(10)

    async with tcp_server(hello) as port:
        out = await poll(
            "nagios",
            "127.0.0.1",
            {
                "plugin": "check_tcp",
                "args": ["-H", "{address}", "-p", str(port), "-t", "{timeout}"],
            },
        )
    assert out.status is Status.UP, out.reason
    assert out.reason.startswith("TCP OK")
    assert "time" in out.values
    assert out.values["time"] >= 0
    assert out.response_time_ms > 0


async def test_check_tcp_refused_is_down(poll):
    port = free_port()
    out = await poll(
        "nagios", "127.0.0.1", {"plugin": "check_tcp", "args": ["-H", "{address}", "-p", str(port)]}
    )
    assert out.status is Status.DOWN
    assert "Connection refused" in out.reason
    assert out.values["exit_code"] == 2.0


async def test_unknown_plugin_is_unknown(poll):
    out = await poll("nagios", "127.0.0.1", {"plugin": "check_does_not_exist"})
    assert out.status is Status.UNKNOWN
    assert out.reason.startswith("plugin not allowed: check_does_not_exist (no executable ")


async def test_other_exit_codes_and_stderr(poll, plugin_dir):
    _script(plugin_dir, "check_weird", "echo 'went wrong' >&2\nexit 7\n")
    out = await poll("nagios", "127.0.0.1", {"plugin": "check_weird"})
    assert out.status is Status.UNKNOWN
    assert out.reason == "exit code 7: went wrong"


async def test_hanging_plugin_and_its_children_are_killed(poll, plugin_dir):
    marker = plugin_dir / "child.pid"
    _script(plugin_dir, "check_hang", f"sleep 60 &\necho $! > {marker}\nsleep 60\n")
    out = await poll("nagios", "127.0.0.1", {"plugin": "check_hang", "timeout": 0.5}, timeout=3)
    assert out.status is Status.DOWN
    assert out.reason == "plugin check_hang timed out after 0.5s"
    child = int(marker.read_text())
    await _wait_gone(child)


async def test_cancellation_kills_the_plugin(monitors, plugin_dir):
    from minion.monitors.base import PollContext, Target

    marker = plugin_dir / "self.pid"
    _script(plugin_dir, "check_slow", f"echo $$ > {marker}\nexec sleep 60\n")
    mon = monitors.get("nagios")
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(
        mon.poll(
            Target("127.0.0.1"),
            mon.parse_params({"plugin": "check_slow"}),
            PollContext(loop.time() + 30, 30),
        )
    )
    async with asyncio.timeout(10):
        # the plugin tells its pid through a file: nothing to await but the file
        while not marker.exists() or not marker.read_text().strip():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    # what the runner does when the deadline passes, or the minion stops
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_gone(int(marker.read_text()))


def _zombie_or_gone(pid: int) -> bool:
    # a zombie (waiting for init to reap it) is gone for our purposes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


async def _wait_gone(pid: int) -> None:
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if _zombie_or_gone(pid):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} still running")


async def test_huge_output_is_bounded(poll, plugin_dir):
    _script(
        plugin_dir,
        "check_chatty",
        "echo 'OK - fine | load=0.5;1;2'\nhead -c 20000000 /dev/zero | tr '\\\\0' x\nexit 0\n",
    )
    out = await poll(
        "nagios", "127.0.0.1", {"plugin": "check_chatty", "max_output_bytes": 4096}, timeout=10
    )
    assert out.status is Status.UP, out.reason
    assert out.reason == "OK - fine"
    assert out.values["load"] == 0.5


async def test_environment_and_macros(poll, plugin_dir):
    _script(plugin_dir, "check_env", 'echo "OK $VIGIL_X $1 $2|t=1"\n')
    out = await poll(
        "nagios",
        "192.0.2.5",
        {"plugin": "check_env", "args": ["{address}", "{timeout}"], "env": {"VIGIL_X": "hi"}},
        timeout=5,
    )
    assert out.status is Status.UP
    assert out.reason == "OK hi 192.0.2.5 4"


def test_perfdata_parsing():
    assert parse_perfdata(
        "time=0.000123s;;;0.000000;10.000000 'free space /var'=80%;90;95 rtaMax=1,5ms "
        "undetermined=U bad count=7c"
    ) == {"time": 0.000123, "free_space_var": 80.0, "rta_max": 1.5, "count": 7.0}
    assert parse_perfdata("'it''s'=3 =4 x=") == {"it_s": 3.0}
    text, values = parse_output(
        "DISK OK - free space: / 3326 MB|/=2643MB;5948;5958;0;5968\n"
        "/ 15272 MB (77%);\n"
        "/boot 68 MB (69%);\n"
        "| /boot=68MB;88;93;0;98\n"
        "/home=69357MB;253404;253409;0;253414\n"
    )
    assert text == "DISK OK - free space: / 3326 MB"
    assert values == {"root": 2643.0, "boot": 68.0, "home": 69357.0}
