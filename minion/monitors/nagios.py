"""``nagios``: run a Monitoring Plugins (Nagios) executable and map its result.

Exit codes (Monitoring Plugins guidelines): 0 OK → UP; 1 WARNING → UP with the
value ``warning`` = 1 and the plugin's text as reason; 2 CRITICAL → DOWN;
3 UNKNOWN or anything else (or killed) → UNKNOWN. Performance data
(``label=value[UOM];warn;crit;min;max``) becomes measured values, the label
in snake_case, the number as the plugin printed it (units not converted).

The plugin runs directly (never through a shell) in its own process group
with a minimal environment; it is killed, with everything it started, when
``timeout`` or the attempt's deadline passes or the poll is cancelled. Only
the first ``max_output_bytes`` of its output are kept.

A plugin is named by its file name only, and runs only if that file is in
one of the minion's own plugin directories (:func:`set_plugin_dirs`, from
``minion.plugin_dirs``; default ``/usr/lib/nagios/plugins`` and
``/usr/lib/monitoring-plugins``). A path, ``..``, any other syntax, or a name
not found there is UNKNOWN ``plugin not allowed: <name>`` and nothing runs:
the minion checks this itself, whatever the scheduler validated, because a
poll request may be forged.

Arguments may use ``{address}`` (the target address) and ``{timeout}`` (whole
seconds the plugin has, at least 1; pass it to the plugin's ``-t``); with
``credential`` also ``{username}`` and ``{password}`` from the minion's
credentials (their secrets are masked as ``***`` in the plugin's output).

Response time: the plugin's run time. Measured values: the performance data
plus ``exit_code`` and, on WARNING, ``warning``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Sequence
from typing import ClassVar

from minion.monitors._common import first_line, plan, snake_case
from minion.monitors.base import (
    Monitor,
    PollContext,
    PollOutcome,
    Target,
    elapsed_ms,
)
from minion.monitors.credentials import credential, mask
from services.core.params.credentials import unknown_credential
from services.core.params.nagios import (
    DEFAULT_PLUGIN_DIRS,
    PLUGIN_NOT_ALLOWED,
    NagiosParams,
    env_name_allowed,
    plugin_name_allowed,
)

_plugin_dirs: tuple[str, ...] = DEFAULT_PLUGIN_DIRS
_resolved: dict[str, tuple[float, str | None]] = {}
_RESOLVE_TTL = 60.0

STATE_NAMES = {0: "OK", 1: "WARNING", 2: "CRITICAL", 3: "UNKNOWN"}

#: The plugin's whole environment, besides the service's checked ``env``.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C", "LC_ALL": "C"}


def set_plugin_dirs(dirs: Sequence[str]) -> None:
    """Where relative plugin names are looked up, in order (minion configuration)."""
    global _plugin_dirs
    for d in dirs:
        if not os.path.isabs(d):
            raise ValueError(f"plugin directory {d!r} must be an absolute path")
    _plugin_dirs = tuple(dirs)
    _resolved.clear()


def plugin_dirs() -> tuple[str, ...]:
    """The plugin directories in force."""
    return _plugin_dirs


def _resolve(plugin: str) -> str | None:
    # A plain file name only (no separator, no "..", no absolute path): what the
    # name can reach is the plugin directories' own entries, nothing else.
    if not plugin_name_allowed(plugin) or os.sep in plugin or "/" in plugin:
        return None
    for d in _plugin_dirs:
        path = os.path.join(d, plugin)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


async def resolve_plugin(plugin: str) -> str | None:
    """The executable for ``plugin`` in the plugin directories, or ``None``
    (also for anything but a plain file name); looked up off the loop, cached."""
    if not plugin_name_allowed(plugin):
        return None
    now = time.monotonic()
    hit = _resolved.get(plugin)
    if hit is not None and now - hit[0] < _RESOLVE_TTL:
        return hit[1]
    path = await asyncio.to_thread(_resolve, plugin)
    if len(_resolved) > 1024:  # bounded: plugin names come from configuration
        _resolved.clear()
    _resolved[plugin] = (now, path)
    return path


_PERF_ITEM = re.compile(r"\s*('(?:[^']|'')+'|[^'=\s][^=\s]*)=(\S*)")
_PERF_VALUE = re.compile(r"^([-+]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][-+]?\d+)?)([a-zA-Z%]*)$")


def parse_perfdata(text: str) -> dict[str, float]:
    """``"time=0.01s;;;0 'free space'=80%;90;95"`` → ``{"time": 0.01, "free_space": 80.0}``.

    Items that do not parse (or whose value is ``U``, undetermined) are skipped.
    """
    values: dict[str, float] = {}
    pos = 0
    while pos < len(text):
        m = _PERF_ITEM.match(text, pos)
        if m is None:
            # skip a malformed token and go on with the next one
            nxt = text.find(" ", pos + 1)
            if nxt < 0:
                break
            pos = nxt
            continue
        pos = m.end()
        label = m.group(1)
        if label.startswith("'"):
            label = label[1:-1].replace("''", "'")
        first = m.group(2).split(";", 1)[0]
        vm = _PERF_VALUE.match(first)
        if vm is None:
            continue
        try:
            number = float(vm.group(1).replace(",", "."))
        except ValueError:
            continue
        # "/" (a file system's mount point, as check_disk prints it) → "root"
        values[snake_case(label) if label.strip("/") else "root"] = number
    return values


def parse_output(text: str) -> tuple[str, dict[str, float]]:
    """Split plugin output into its first-line text and all performance data.

    Per the guidelines, perfdata follows ``|`` on the first line and, for
    multi-line output, follows the first ``|`` of the remaining lines.
    """
    lines = text.splitlines()
    if not lines:
        return "", {}
    head, _, perf = lines[0].partition("|")
    rest = "\n".join(lines[1:])
    _, bar, more = rest.partition("|")
    perf_text = perf + (" " + more.replace("\n", " ") if bar else "")
    return head.strip(), parse_perfdata(perf_text)


async def _read_bounded(stream: asyncio.StreamReader | None, limit: int) -> bytes:
    """Read to EOF, keeping only the first ``limit`` bytes (the rest is drained so
    the plugin never blocks on a full pipe)."""
    if stream is None:
        return b""
    kept = bytearray()
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return bytes(kept)
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]


def _expand(arg: str, macros: dict[str, str]) -> str:
    """Replace every macro in one pass (a value is never expanded again)."""
    return _MACRO.sub(lambda m: macros.get(m.group(0), m.group(0)), arg)


_MACRO = re.compile(r"\{(?:address|timeout|username|password)\}")


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class NagiosMonitor(Monitor[NagiosParams]):
    """Runs one plugin process per poll."""

    name: ClassVar[str] = "nagios"
    params_model = NagiosParams
    description = "Monitoring Plugins (Nagios) adapter: exit code and performance data"

    async def poll(self, target: Target, params: NagiosParams, ctx: PollContext) -> PollOutcome:
        """Run the plugin against ``target`` and translate its result."""
        when = plan(ctx)
        shown = repr(params.plugin)[1:-1][:200]
        path = await resolve_plugin(params.plugin)
        if path is None:
            return PollOutcome.unknown(
                PLUGIN_NOT_ALLOWED.format(name=shown)
                + f" (no executable of that name in {', '.join(_plugin_dirs)})"
            )
        for k in params.env:
            # checked by the schema too; again here, the request may be forged
            if not env_name_allowed(k):
                return PollOutcome.unknown(f"plugin environment variable not allowed: {k[:64]}")
        macros = {"{address}": target.address}
        secrets: list[str] = []
        if params.credential is not None:
            cred = credential(params.credential)
            if cred is None:
                return PollOutcome.unknown(unknown_credential(params.credential))
            macros["{username}"] = cred.username or cred.user or ""
            macros["{password}"] = cred.password.get_secret_value() if cred.password else ""
            secrets = cred.secrets()
        budget = when.until_report()
        if params.timeout is not None:
            budget = min(budget, params.timeout)
        if budget <= 0:
            return PollOutcome.unknown("no time left to run the plugin")
        macros["{timeout}"] = str(max(1, int(budget - 0.5)))
        argv = [_expand(a, macros) for a in params.args]
        env = {**params.env, **BASE_ENV}
        start = time.perf_counter()
        try:
            proc = await asyncio.create_subprocess_exec(
                path,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # own process group: kill it and its children
                close_fds=True,
            )
        except OSError as exc:
            return PollOutcome.unknown(f"cannot run {path}: {exc.strerror or exc}")
        try:
            async with asyncio.timeout(budget):
                out, err, code = await asyncio.gather(
                    _read_bounded(proc.stdout, params.max_output_bytes),
                    _read_bounded(proc.stderr, 4096),
                    proc.wait(),
                )
        except TimeoutError:
            _kill_group(proc)
            await self._reap(proc)
            return PollOutcome.down(
                f"plugin {os.path.basename(path)} timed out after {budget:.1f}s", elapsed_ms(start)
            )
        except BaseException:
            # cancelled (the runner's deadline) or anything else: leave nothing running
            _kill_group(proc)
            await self._reap(proc)
            raise
        rt = elapsed_ms(start)
        # The plugin may have left children holding the group; they have no business
        # outliving the check.
        _kill_group(proc)
        outcome = self._judge(path, code, out, err, rt)
        if secrets:
            # a plugin may echo its arguments: the reason must not carry the password
            outcome.reason = mask(outcome.reason, secrets)
        return outcome

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(TimeoutError, ProcessLookupError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(proc.wait())

    @staticmethod
    def _judge(path: str, code: int, out: bytes, err: bytes, rt: float) -> PollOutcome:
        text, values = parse_output(out.decode("utf-8", "replace"))
        values["exit_code"] = float(code)
        name = os.path.basename(path)
        if not text:
            text = first_line(err.decode("utf-8", "replace")) or f"{name} printed nothing"
        text = first_line(text, 300)
        if code == 0:
            outcome = PollOutcome.up(rt, **values)
            outcome.reason = text
            return outcome
        if code == 1:
            values["warning"] = 1.0
            outcome = PollOutcome.up(rt, **values)
            outcome.reason = text
            return outcome
        if code == 2:
            return PollOutcome.down(text, rt, **values)
        if code < 0:
            return PollOutcome.unknown(f"{name} killed by signal {-code}: {text}", **values)
        state = STATE_NAMES.get(code, f"exit code {code}")
        prefix = "" if text.upper().startswith(state) else f"{state}: "
        return PollOutcome.unknown(f"{prefix}{text}", **values)
