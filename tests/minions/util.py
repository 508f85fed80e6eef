"""Helpers for the minion tests (issue 6), shared with tests/netns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from vigil.v1 import poller_pb2, poller_pb2_grpc

from tests import pki as test_pki
from tests.helpers import Stack, TcpTarget
from tests.pki import operator_channel

ROOT = Path(__file__).resolve().parents[2]


#: Python code a child runs first: the kernel kills it when the test process dies. Set by
#: the child itself, because ``preexec_fn`` is unsafe once gRPC's threads run in the parent
#: (a forked child can crash before its ``exec``).
DIE_WITH_PARENT = "import ctypes, signal; ctypes.CDLL('libc.so.6').prctl(1, signal.SIGKILL)"


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args`` that dies with the test process."""
    code = f"{DIE_WITH_PARENT}; import runpy, sys; sys.argv[0] = {module!r}; "
    code += f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return [sys.executable, "-c", code, *args]


def python_env() -> dict[str, str]:
    """Environment for child processes importing the project from the checkout."""
    # The run's CA stays (tests/pki.py): a child proves who it is with a certificate from it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_") or k == test_pki.ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "protos")])
    return env


def tcp_node(
    node_id: str, port: int, location: str = "Default", ip: str = "127.0.0.1", **svc: Any
) -> dict[str, Any]:
    """A node with one ``tcp`` service ``Echo`` on ``ip:port``."""
    params = {"port": port} | svc.pop("params", {})
    return {
        "id": node_id,
        "location": location,
        "interfaces": [
            {"ip": ip, "services": [{"name": "Echo", "monitor": "tcp", "params": params, **svc}]}
        ],
    }


def noop_nodes(count: int, location: str, prefix: str = "n") -> list[dict[str, Any]]:
    """``count`` nodes with one ``noop`` service each."""
    return [
        {
            "id": f"{prefix}{i}",
            "location": location,
            "interfaces": [{"ip": "127.0.0.1", "services": [{"name": "Noop", "monitor": "noop"}]}],
        }
        for i in range(count)
    ]


async def list_minions(stack: Stack, location: str = "") -> list[poller_pb2.Minion]:
    """``Poller/ListMinions`` over real gRPC."""
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        resp = await poller_pb2_grpc.PollerStub(ch).ListMinions(
            poller_pb2.ListMinionsRequest(location=location)
        )
    return list(resp.minions)


async def list_outages(stack: Stack) -> list[poller_pb2.Outage]:
    """``Poller/ListOutages`` (all states)."""
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        resp = await poller_pb2_grpc.PollerStub(ch).ListOutages(poller_pb2.ListOutagesRequest())
    return list(resp.outages)


class BannerTarget(TcpTarget):
    """A TCP service that answers ``OK`` only after ``delay`` seconds: a slow but UP target."""

    def __init__(self, delay: float) -> None:
        super().__init__(banner=b"OK\r\n", delay=delay)


class MinionProcess:
    """``vigil minion`` as a child process (to kill it or send it SIGTERM for real).

    ``prefix`` runs it under another command (``ip netns exec <ns>``).
    """

    def __init__(
        self,
        tmp: Path,
        *,
        nats_url: str,
        scheduler: str,
        location: str,
        system_id: str,
        prefix: tuple[str, ...] = (),
        **minion: Any,
    ) -> None:
        test_pki.minion_cert(location, system_id)  # as an operator would, before it starts
        self.log = tmp / f"minion-{system_id}.log"
        cfg = tmp / f"minion-{system_id}.yaml"
        settings = {
            "spool_dir": str(tmp / "spool"),
            "id_file": str(tmp / f"{system_id}.id"),
        } | minion
        cfg.write_text(yaml.safe_dump({"minion": settings}))
        self.args = [
            *prefix,
            *python_module(
                "services.cli", "minion", "--config", str(cfg),
                "--nats", nats_url, "--scheduler", scheduler,
                "--location", location, "--system-id", system_id, "--log-level", "INFO",
            ),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MinionProcess:
        """Start (again)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=python_env(),
                cwd=ROOT,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def output(self) -> str:
        """What it logged so far."""
        return self.log.read_text(errors="replace")
