"""Configuration: bad files fail start-up with the file and the key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.core.config import ConfigError, EventsConfig, MinionConfig, load_document
from services.core.durations import parse_duration
from services.scheduler.config import load_config, parse_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "vigil.yaml"
    p.write_text(text)
    return p


def vigil(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``vigil`` CLI in a child process (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=60
    )


def node(services: str) -> str:
    return f"""
nodes:
  - id: web-1
    interfaces:
      - ip: 10.0.0.5
        services:
{services}
"""


def test_demo_config_is_valid() -> None:
    cfg = load_config(Path("examples/demo.yaml"), env={})
    assert len(cfg.nodes[0].interfaces[0].services) >= 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scheduler:\n  listn: 127.0.0.1:1\n", "scheduler.listn: unknown key"),
        (
            "scheduler:\n  batch_size: lots\n",
            "scheduler.batch_size: Input should be a valid integer",
        ),
        (
            "scheduler:\n  listen: 127.0.0.1:99999\n",
            "scheduler.listen: '127.0.0.1:99999': port must be 0-65535",
        ),
        (
            "scheduler:\n  listen: not an address\n",
            "scheduler.listen: 'not an address' is not host:port",
        ),
        ("nats:\n  url: http://x:4222\n", "nats.url: 'http://x:4222' is not a NATS URL"),
        ("defaults:\n  interval: 5 parsecs\n", "defaults.interval: '5 parsecs' is not a duration"),
        ("defaults:\n  timeout: 0s\n", "defaults.timeout: Input should be greater than 0"),
        (
            node("          - {name: HTTP, monitor: htp}"),
            "nodes[0].interfaces[0].services[0].monitor: unknown monitor 'htp'",
        ),
        (
            node("          - {name: HTTP, monitor: tcp, params: {port: 0}}"),
            "nodes[0].interfaces[0].services[0].params.port: Input should be greater than or equal to 1",
        ),
        (
            node(
                "          - {name: A, monitor: tcp, params: {port: 1}}\n"
                "          - {name: A, monitor: tcp, params: {port: 2}}"
            ),
            "duplicate service 'A'",
        ),
        (
            "nodes:\n  - id: n\n    interfaces:\n      - ip: 10.0.0.300\n",
            "nodes[0].interfaces[0].ip",
        ),
        (
            "nodes:\n  - id: n\n    location: paris.east\n",
            "nodes[0].location: 'paris.east' is not a valid location",
        ),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("scheduler: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", env={})


def test_environment_overrides_connection_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path, "nats:\n  url: nats://file:4222\nscheduler:\n  store_url: sqlite:///file.db\n"
    )
    cfg = load_config(
        path,
        env={
            "VIGIL_NATS_URL": "nats://env:4222",
            "VIGIL_STORE_URL": "postgresql://vigil@db/vigil",
            "VIGIL_LOCATION": "edge",
            "VIGIL_SCHEDULER_ADDRESS": "scheduler:50051",
        },
    )
    assert cfg.nats.url == "nats://env:4222"
    assert cfg.scheduler.store_url == "postgresql://vigil@db/vigil"
    assert cfg.minion.location == "edge"
    assert cfg.minion.scheduler == "scheduler:50051"


def test_bad_environment_override_is_reported_like_a_file_error() -> None:
    with pytest.raises(ConfigError, match=r"minion.location: .*'bad location'"):
        parse_config({}, "<env>", env={"VIGIL_LOCATION": "bad location"})


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration(42) == 42
    for bad in ("", "5 x", "1h-2m", True, [1]):
        with pytest.raises(ValueError, match=r"duration|negative"):
            parse_duration(bad)


def test_cli_check_exits_2_with_the_message(tmp_path: Path) -> None:
    path = write(tmp_path, "scheduler:\n  listn: 127.0.0.1:1\n")
    proc = vigil("check", str(path))
    assert proc.returncode == 2
    assert f"{path}: scheduler.listn: unknown key" in proc.stderr


def test_cli_scheduler_refuses_to_start_on_bad_config(tmp_path: Path) -> None:
    path = write(
        tmp_path, node("          - {name: HTTP, monitor: http, params: {status: '200-99'}}")
    )
    proc = vigil("scheduler", "--config", str(path))
    assert proc.returncode == 2
    assert "nodes[0].interfaces[0].services[0].params.status" in proc.stderr


def test_every_bad_service_is_reported_in_one_pass(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        node(
            "          - {name: A, monitor: tcp, params: {port: 0}}\n"
            "          - {name: B, monitor: nope}\n"
            "          - {name: C, monitor: tcp, params: {port: 22}}"
        ),
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert "services[0].params.port" in message
    assert "services[1].monitor: unknown monitor 'nope'" in message
    assert "services[2]" not in message


# --- each process reads only its own sections --------------------------------


def test_a_minion_reads_its_sections_and_never_builds_the_nodes(tmp_path: Path) -> None:
    # The node below is invalid for the scheduler (a bad address, an unknown
    # monitor): a minion must not care, because it never builds ``nodes:``.
    path = write(
        tmp_path,
        "minion:\n  location: paris\n"
        "scheduler:\n  listen: not-an-address\n"
        + node("          - {name: X, monitor: no-such-monitor}").replace("10.0.0.5", "bad"),
    )
    cfg = load_document(MinionConfig, path, env={})
    assert cfg.minion.location == "paris"
    assert not hasattr(cfg, "nodes")
    events = load_document(EventsConfig, path, env={})
    assert events.events.listen == "127.0.0.1:50052"
    with pytest.raises(ConfigError, match="nodes"):
        load_config(path, env={})


def test_a_minion_still_refuses_an_unknown_section_and_its_own_bad_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"minoin: unknown section"):
        load_document(MinionConfig, write(tmp_path, "minoin:\n  location: paris\n"), env={})
    with pytest.raises(ConfigError, match=r"minion\.max_in_flight"):
        load_document(MinionConfig, write(tmp_path, "minion:\n  max_in_flight: 0\n"), env={})


def test_a_section_aliasing_a_skipped_one_is_still_read(tmp_path: Path) -> None:
    text = "nodes:\n  - &n {id: a}\nminion: &m\n  location: rome\n"
    assert load_document(MinionConfig, write(tmp_path, text), env={}).minion.location == "rome"
    aliased = "defaults: &d\n  retries: 2\nminion:\n  location: rome\n  <<: *d\n"
    with pytest.raises(ConfigError, match="retries: unknown key"):
        load_document(MinionConfig, write(tmp_path, aliased), env={})


@pytest.mark.parametrize(
    "content",
    [bytes(range(256)) * 4, "minion:\n  location: paris\n".encode("utf-16")],
    ids=["random-bytes", "utf-16"],
)
def test_a_file_that_is_not_utf8_is_an_invalid_configuration(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "g.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"g\.yaml: not UTF-8 text"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match=r"g\.yaml: not UTF-8 text"):
        load_document(MinionConfig, path, env={})
    proc = vigil("check", str(path))
    assert proc.returncode == 2
    assert "invalid configuration" in proc.stderr and "not UTF-8" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_repeated_key_is_an_error_naming_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults:\n  interval: 10s\n  retries: 2\n  interval: 20s\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    text = str(err.value)
    assert "vigil.yaml" in text and "'interval' twice" in text
    assert "first on line 2" in text and "line 4" in text
    # the same check where a minion reads only its own sections
    path = write(tmp_path, "minion:\n  location: a\n  location: b\n")
    with pytest.raises(ConfigError, match="'location' twice"):
        load_document(MinionConfig, path, env={})


def test_keys_brought_in_by_a_merge_may_be_overridden(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults:\n  <<: {interval: 10s, retries: 2}\n  retries: 3\n")
    assert load_config(path, env={}).defaults.retries == 3


@pytest.mark.parametrize(
    ("node", "key"),
    [
        ("{id: n, label: " + "x" * 1_000_000 + "}", "nodes[0].label"),
        ("{id: n, label: " + "x" * 257 + "}", "nodes[0].label"),
        ("{id: n, foreign_id: " + "f" * 129 + "}", "nodes[0].foreign_id"),
    ],
)
def test_text_that_flows_into_events_is_bounded(tmp_path: Path, node: str, key: str) -> None:
    """Issue 10, defect 1: a label too long for an event is refused naming the key."""
    path = write(tmp_path, f"nodes:\n  - {node}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    message = str(err.value)
    assert message.startswith(f"{path}: ") and key in message
    assert len(message) < 1000  # without the refused value
    write(tmp_path, "nodes:\n  - {id: n, label: " + "x" * 256 + "}\n")
    assert load_config(path, env={}).nodes[0].label == "x" * 256
