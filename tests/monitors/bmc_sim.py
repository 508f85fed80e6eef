"""A real BMC for the ``ipmi`` tests: OpenIPMI's ``ipmi_sim`` (Debian package
``openipmi``) on a free UDP port of 127.0.0.1 (or ::1).

The test writes the simulator's ``lan.conf`` (a LAN channel with RMCP+, two
users, a chassis-control script whose power state is a file), an emulation
file (the BMC, its SEL, a temperature and a fan sensor with full SDR records
and thresholds), starts it, and changes sensor values during the test
through the simulator's console port (``sensor_set_value``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.monitors.conftest import free_port, stop_process, wait_tcp

ADMIN_USER, ADMIN_PASSWORD = "vigil", "s3cret-pass"
VIEWER_USER, VIEWER_PASSWORD = "viewer", "view-pass"

#: Sensor numbers of the emulation.
CPU_TEMP, FAN1, P12V = 1, 2, 3


def ipmi_sim_path() -> str | None:
    """The ``ipmi_sim`` executable, or None when ``openipmi`` is not installed."""
    return shutil.which("ipmi_sim") or (
        "/usr/bin/ipmi_sim" if Path("/usr/bin/ipmi_sim").exists() else None
    )


def full_sdr(
    number: int,
    name: str,
    *,
    sensor_type: int,
    unit: int,
    m: int = 1,
    b: int = 0,
    r_exp: int = 0,
    upper: tuple[int, int, int] = (0, 0, 0),
    lower: tuple[int, int, int] = (0, 0, 0),
    readable: int = 0,
) -> list[int]:
    """A Full Sensor Record (IPMI 2.0, table 43-1) of a linear threshold sensor.

    ``upper``/``lower`` are the raw (non-recoverable, critical, non-critical)
    thresholds; ``readable`` the mask of readable thresholds (bit 0 LNC … 5 UNR).
    Reading = (m * raw + b) * 10^r_exp in ``unit`` (table 43-15: 1 °C, 4 V, 18 RPM).
    """
    body = [
        0x20,  # owner: the BMC
        0x00,  # LUN
        number,
        0x07,  # entity: system board
        0x01,
        0x7F,  # initialization: scanning, events, thresholds, hysteresis, type
        0x68,  # capabilities: auto re-arm, hysteresis and thresholds readable/settable
        sensor_type,
        0x01,  # event/reading type: threshold
        0x00,
        0x00,  # assertion event mask
        0x00,
        0x00,  # deassertion event mask
        readable,
        readable,  # readable / settable thresholds
        0x00,  # units 1: unsigned, no rate, no modifier
        unit,
        0x00,
        0x00,  # linear
        m & 0xFF,
        (m >> 8 & 3) << 6,
        b & 0xFF,
        (b >> 8 & 3) << 6,
        0x00,
        (r_exp & 0xF) << 4,
        0x00,  # analog characteristics
        0,
        0,
        0,  # nominal, normal max, normal min
        0xFF,
        0x00,  # sensor max, min
        *upper,
        *lower,
        0,
        0,  # hysteresis
        0,
        0,
        0,  # reserved, OEM
        0xC0 | len(name),  # 8-bit ASCII + Latin-1
        *name.encode(),
    ]
    return [0x00, 0x00, 0x51, 0x01, len(body), *body]


def _hex(data: list[int]) -> str:
    return " ".join(f"0x{x:02x}" for x in data)


#: Event support: global events and scanning on, every threshold's events.
_EVENTS = "enable scanning per-state " + " ".join(["000111111111111"] * 4)


def emulation() -> str:
    """The emulation file: the BMC at 0x20 with a SEL and three sensors.

    - CPU Temp (°C, raw = °C): UNC 85, UC 95, UNR 105; starts at 40.
    - FAN1 (RPM, 50 * raw): LC 1000 (20), LNC 1500 (30); starts at 3000 (60).
    - 12V (V, 0.1 * raw): LC 10.8, UC 13.2; starts at 12.1 (121).
    """
    lines = [
        "mc_setbmc 0x20",
        "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02",
        "sel_enable 0x20 200 0x0a",
        # CPU Temp
        "sensor_add 0x20 0 1 0x01 0x01",
        "main_sdr_add 0x20 "
        + _hex(
            full_sdr(
                CPU_TEMP, "CPU Temp", sensor_type=0x01, unit=1, upper=(105, 95, 85), readable=0x38
            )
        ),
        "sensor_set_threshold 0x20 0 1 settable 111000 105 95 85 0 0 0",
        f"sensor_set_event_support 0x20 0 1 {_EVENTS}",
        "sensor_set_value 0x20 0 1 40 0",
        # FAN1
        "sensor_add 0x20 0 2 0x04 0x01",
        "main_sdr_add 0x20 "
        + _hex(
            full_sdr(
                FAN1, "FAN1", sensor_type=0x04, unit=18, m=50, lower=(0, 20, 30), readable=0x03
            )
        ),
        "sensor_set_threshold 0x20 0 2 settable 000011 0 0 0 0 20 30",
        f"sensor_set_event_support 0x20 0 2 {_EVENTS}",
        "sensor_set_value 0x20 0 2 60 0",
        # 12V
        "sensor_add 0x20 0 3 0x02 0x01",
        "main_sdr_add 0x20 "
        + _hex(
            full_sdr(
                P12V,
                "12V",
                sensor_type=0x02,
                unit=4,
                r_exp=-1,
                upper=(0, 132, 0),
                lower=(0, 108, 0),
                readable=0x12,
            )
        ),
        "sensor_set_threshold 0x20 0 3 settable 010010 0 132 0 0 108 0",
        f"sensor_set_event_support 0x20 0 3 {_EVENTS}",
        "sensor_set_value 0x20 0 3 121 0",
        "mc_enable 0x20",
    ]
    return "\n".join(lines) + "\n"


_CHASSIS = """#!/bin/sh
# ipmi_sim's chassis control: "get power" prints the power file, "set power N" writes it
dir=$(dirname "$0")
shift
op=$1; shift
case $op in
  get) for p in "$@"; do
         case $p in
           power) echo "power:$(cat "$dir/power")" ;;
           boot) echo "boot:default" ;;
           *) echo "Invalid parameter: $p"; exit 1 ;;
         esac
       done ;;
  set) while [ -n "$1" ]; do
         [ "$1" = power ] && echo "$2" > "$dir/power"
         shift 2
       done ;;
  *) exit 1 ;;
esac
"""


def lan_conf(tmp: Path, host: str, port: int, console: int) -> str:
    """``lan.conf``: one RMCP+ LAN channel on ``host``, two users, a console.

    (This ipmi_sim takes one address per channel: an IPv6 test starts its own.)
    """
    return f"""name "vigiltest"
set_working_mc 0x20
  startlan 1
    addr {host} {port}
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{tmp / "chassis.sh"} 0x20"
  user 2 true "{ADMIN_USER}" "{ADMIN_PASSWORD}" admin 10 md5
  user 3 true "{VIEWER_USER}" "{VIEWER_PASSWORD}" user 10 md5
console 127.0.0.1 {console}
"""


@dataclass
class IpmiSim:
    """A running ``ipmi_sim``: its UDP port and console."""

    port: int
    console_port: int
    tmp: Path
    proc: subprocess.Popen[Any]

    def command(self, line: str, timeout: float = 5.0) -> str:
        """Run one emulation command on the console; raises on the simulator's ``**`` errors."""
        with socket.create_connection(("127.0.0.1", self.console_port), timeout=timeout) as s:
            s.settimeout(timeout)
            self._until_prompt(s)
            s.sendall(line.encode() + b"\n")
            out = self._until_prompt(s)
        text = out.decode("latin-1").replace("\r", "")
        if "**" in text:
            raise RuntimeError(f"ipmi_sim refused {line!r}: {text.strip()}")
        return text

    @staticmethod
    def _until_prompt(s: socket.socket) -> bytes:
        buf = b""
        end = time.monotonic() + 5
        while not buf.endswith(b"> "):
            if time.monotonic() > end:
                raise TimeoutError(f"no ipmi_sim prompt (got {buf!r})")
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError(f"ipmi_sim console closed (got {buf!r})")
            buf += chunk
        return buf

    def set_sensor(self, number: int, raw: int, event: bool = False) -> None:
        """Set a sensor's raw reading; ``event`` lets the BMC log threshold crossings."""
        self.command(f"sensor_set_value 0x20 0 {number} {raw} {1 if event else 0}")

    def set_power(self, on: bool) -> None:
        """What the chassis control script reports as the power state."""
        (self.tmp / "power").write_text("1\n" if on else "0\n")


def start_ipmi_sim(host: str = "127.0.0.1") -> IpmiSim:
    """Write the configuration and start ``ipmi_sim``; the caller stops it (:func:`stop`)."""
    exe = ipmi_sim_path()
    assert exe is not None
    tmp = Path(tempfile.mkdtemp(prefix="vigil-ipmisim-"))
    (tmp / "state").mkdir()
    (tmp / "power").write_text("1\n")
    script = tmp / "chassis.sh"
    script.write_text(_CHASSIS)
    script.chmod(0o755)
    port = free_port(socket.SOCK_DGRAM, host)
    console = free_port()
    (tmp / "lan.conf").write_text(lan_conf(tmp, host, port, console))
    (tmp / "sim.emu").write_text(emulation())
    log = open(tmp / "log", "wb")  # noqa: SIM115 - the simulator writes to it until stopped
    proc = subprocess.Popen(
        [
            exe,
            "-c",
            str(tmp / "lan.conf"),
            "-f",
            str(tmp / "sim.emu"),
            "-s",
            str(tmp / "state"),
            "-n",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        # SIGPIPE stays ignored (as in Python): the simulator writes its prompt to
        # console connections, and one closed early must not kill it
        restore_signals=False,
    )
    log.close()
    try:
        wait_tcp("127.0.0.1", console, timeout=10)
    except TimeoutError:
        stop_process(proc)
        text = (tmp / "log").read_text(errors="replace")
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"ipmi_sim did not start: {text}") from None
    return IpmiSim(port, console, tmp, proc)


def stop(sim: IpmiSim) -> None:
    """Stop the simulator and remove its files."""
    stop_process(sim.proc)
    shutil.rmtree(sim.tmp, ignore_errors=True)
