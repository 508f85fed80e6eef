"""The ``vigil`` command: run the components, watch events."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from services.cli.grpcclient import PkiDirOpt, PlaintextOpt
from services.core.config import (
    ConfigError,
    DeploymentConfig,
    EventsConfig,
    MinionConfig,
    VigilConfig,
    load_document,
)
from services.core.logs import setup_logging

app = typer.Typer(
    name="vigil",
    help="Vigil: distributed service-assurance poller.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML configuration file.", show_default=False)
]
NatsOpt = Annotated[
    str | None,
    typer.Option(
        "--nats",
        help="NATS URL (default: $VIGIL_NATS_URL, .vigil/nats-url, nats://127.0.0.1:4222).",
    ),
]
Doc = TypeVar("Doc", bound=MinionConfig | EventsConfig)

LogOpt = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]


def _invalid(exc: ConfigError) -> typer.Exit:
    typer.echo(f"vigil: invalid configuration: {exc}", err=True)
    return typer.Exit(2)


def _config(path: Path | None) -> VigilConfig:
    """The whole document, checked as the scheduler checks it."""
    from services.scheduler.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise _invalid(exc) from None


def _sections(model: type[Doc], path: Path | None) -> Doc:
    """Only the sections a process reads (a minion never builds ``nodes:``)."""
    try:
        return load_document(model, path)
    except ConfigError as exc:
        raise _invalid(exc) from None


def _nats(explicit: str | None, cfg: MinionConfig | EventsConfig) -> str:
    """``--nats``, else the config's (or ``$VIGIL_NATS_URL``), else ``.vigil/nats-url``, else the default."""
    from services.core.natsconn import discover_nats_url

    if explicit:
        return explicit
    if "url" in cfg.nats.model_fields_set:
        return cfg.nats.url
    return discover_nats_url(None)


@app.command()
def up(
    config: Annotated[Path, typer.Option("--config", "-c", help="YAML configuration file.")] = Path(
        "examples/demo.yaml"
    ),
    state_dir: Annotated[
        Path, typer.Option(help="Where NATS data, ids and the SQLite stores live.")
    ] = Path(".vigil"),
    log_level: LogOpt = "INFO",
) -> None:
    """Run everything on this machine: embedded nats-server, event service, scheduler, minions."""
    from services.cli.up import run_up, validate

    cfg = _sections(DeploymentConfig, config)
    summary = validate(config)
    if summary is None:
        raise typer.Exit(2)
    raise typer.Exit(run_up(cfg, summary.locations, config, state_dir, log_level))


@app.command()
def scheduler(config: ConfigOpt = None, nats: NatsOpt = None, log_level: LogOpt = "INFO") -> None:
    """Run the scheduler: schedules polls, keeps service state and outages (gRPC :50051)."""
    from services.cli.runtime import serve
    from services.scheduler.app import Scheduler

    cfg = _config(config)
    setup_logging(log_level, "scheduler")
    url = _nats(nats, cfg)
    raise typer.Exit(asyncio.run(serve(lambda: Scheduler(cfg, nats_url=url))))


@app.command()
def events(config: ConfigOpt = None, nats: NatsOpt = None, log_level: LogOpt = "INFO") -> None:
    """Run the event service: normalizes, stores and publishes events (gRPC :50052)."""
    from services.cli.runtime import serve
    from services.events.app import EventService

    cfg = _sections(EventsConfig, config)
    setup_logging(log_level, "events")
    url = _nats(nats, cfg)
    raise typer.Exit(asyncio.run(serve(lambda: EventService(cfg, nats_url=url))))


@app.command()
def minion(
    config: ConfigOpt = None,
    nats: NatsOpt = None,
    location: Annotated[
        str | None, typer.Option(help="Location served (default: config, else Default).")
    ] = None,
    system_id: Annotated[
        str | None, typer.Option(help="Stable id (default: generated once, kept on disk).")
    ] = None,
    scheduler_address: Annotated[
        str | None, typer.Option("--scheduler", help="Scheduler gRPC host:port.")
    ] = None,
    log_level: LogOpt = "INFO",
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="A site bundle from `vigil ca bundle` (its minion.yaml; instead of --config).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a minion: takes poll requests for its location from NATS, returns results over gRPC."""
    from pydantic import ValidationError

    from minion.main import loop_factory, make_minion
    from services.cli.runtime import serve
    from services.core.config import MinionSettings
    from services.core.validation import describe

    if bundle is not None:
        from services.cli.ca import BUNDLE_CONFIG, resolve_bundle

        if config is not None:
            typer.echo("vigil: --bundle and --config exclude each other", err=True)
            raise typer.Exit(2)
        cfg = resolve_bundle(_sections(MinionConfig, bundle / BUNDLE_CONFIG), bundle)
    else:
        cfg = _sections(MinionConfig, config)
    overrides = {
        k: v
        for k, v in {
            "location": location,
            "system_id": system_id,
            "scheduler": scheduler_address,
        }.items()
        if v is not None
    }
    try:
        # Only what was set: a minion with a certificate takes what was not from it.
        settings = MinionSettings.model_validate(
            cfg.minion.model_dump(exclude_unset=True) | overrides
        )
    except ValidationError as exc:
        typer.echo(f"vigil: invalid minion option: {describe(exc)}", err=True)
        raise typer.Exit(2) from None
    setup_logging(log_level, f"minion[{settings.location}]")
    url = _nats(nats, cfg)
    # minion.workers > 1: a parent process and its workers; minion.event_loop: uvloop or asyncio.
    with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
        code = runner.run(serve(lambda: make_minion(settings, nats_url=url, pki=cfg.pki)))
    raise typer.Exit(code)


@app.command()
def sniff(
    subject: Annotated[str, typer.Argument(help="Subject to watch.")] = "vigil.events.>",
    nats: NatsOpt = None,
    pretty: Annotated[
        bool, typer.Option(help="One readable line per event instead of JSON.")
    ] = False,
    count: Annotated[int, typer.Option(help="Exit after this many messages (0: never).")] = 0,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Print events as they are published, one JSON line each (like RackHD's sniff.js).

    Connects as the operator (``operator.pem`` in ``.vigil/pki`` or ``--pki-dir``).
    """
    from services.cli.sniff import run_sniff
    from services.core.natsconn import discover_nats_url

    raise typer.Exit(
        asyncio.run(
            run_sniff(
                discover_nats_url(nats),
                subject,
                pretty=pretty,
                count=count,
                pki_dir=pki_dir,
                plaintext=plaintext,
            )
        )
    )


@app.command()
def check(config: Annotated[Path, typer.Argument(help="YAML configuration file.")]) -> None:
    """Validate a configuration file and summarise it (one JSON line)."""
    from services.core.ids import DEFAULT_LOCATION

    cfg = _config(config)
    services = sum(len(i.services) for n in cfg.nodes for i in n.interfaces)
    found = sorted({n.location for n in cfg.nodes} | {DEFAULT_LOCATION})
    typer.echo(
        json.dumps({"ok": True, "nodes": len(cfg.nodes), "services": services, "locations": found})
    )


app.add_typer(__import__("services.cli.hooks", fromlist=["app"]).app, name="hooks")
app.add_typer(__import__("services.cli.ca", fromlist=["app"]).app, name="ca")
_access = __import__("services.cli.access", fromlist=["token_app"])
app.command("login")(_access.login)
app.command("logout")(_access.logout)
app.command("whoami")(_access.whoami)
app.add_typer(_access.token_app, name="token")
app.add_typer(_access.users_app, name="users")
app.add_typer(_access.roles_app, name="roles")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
