"""The ``companion`` command: serve, migrate, doctor, keys, models.

``serve`` starts the embedded PostgreSQL and Redis (where no URL is set) in
this process, before any worker, and hands their URLs to the workers through
the environment: every worker then shares the same two servers, and they stop
when the service stops. With several workers, Prometheus runs in
multiprocess mode so ``/metrics`` adds up all of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import click

from memory.accounts import AccountStore
from memory.embedded import EmbeddedPostgres, EmbeddedRedis
from server.launch import announce_when_ready, port_problem
from server.logs import configure_logging
from server.settings import CONFIG_FILE_VAR, Settings, SettingsError, load_settings

T = TypeVar("T")
_OVERRIDE_ENV = {"host": "COMPANION_HOST", "port": "COMPANION_PORT", "workers": "COMPANION_WORKERS"}


@click.group()
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"TOML settings file (else ${CONFIG_FILE_VAR}).",
)
@click.pass_context
def main(ctx: click.Context, config: Path | None) -> None:
    """Companion: a self-hosted AI companion service."""
    ctx.obj = config


@main.command()
@click.option("--host", help="Interface to listen on.")
@click.option("--port", type=int, help="Port to listen on.")
@click.option("--workers", type=int, help="Worker processes.")
@click.pass_obj
def serve(config: Path | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Start the API (and the embedded databases when no URLs are configured)."""
    overrides = {"host": host, "port": port, "workers": workers}
    settings = _load(config, overrides)
    configure_logging(settings.log_level, settings.log_format)
    problem = port_problem(settings.host, settings.port)
    if problem is not None:
        raise click.ClickException(problem)
    _export_for_workers(config, overrides)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again; turn
    # that second one into a normal exit so the embedded servers are stopped too.
    # (SIGINT already arrives as KeyboardInterrupt, which unwinds the same way.)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with embedded_services(settings):
        if settings.workers > 1:
            _prepare_multiprocess_metrics(settings.data_dir)
        import uvicorn

        announce_when_ready(
            settings.host, settings.port, settings.data_dir, lambda line: click.echo(line, err=True)
        )
        uvicorn.run(
            "server.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=30,
            # the client address from X-Forwarded-For only when the peer is a trusted proxy
            # (per-address rate limits behind nginx); nobody by default, not even loopback
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=",".join(settings.trusted_proxies) or "",
        )


@main.command()
@click.option(
    "--metrics-port", type=int, help="Serve this worker's Prometheus metrics on this port."
)
@click.pass_obj
def worker(config: Path | None, metrics_port: int | None) -> None:
    """Run the memory jobs (extraction, consolidation) without serving HTTP.

    For scaled-out deployments: run the API with COMPANION_MEMORY_WORKER=off and
    as many of these as the job load needs. They share PostgreSQL and Redis
    with the API (embedded servers of a `serve` on this data dir are adopted).
    """
    settings = _load(config)
    configure_logging(settings.log_level, settings.log_format)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.host)  # job counts, queue depth
    with embedded_services(settings, stop_adopted=False):
        settings = _load(config, {"memory_worker": "inprocess"})
        asyncio.run(_work_until_stopped(settings))


async def _work_until_stopped(settings: Settings) -> None:
    from server.resources import open_resources

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with open_resources(settings) as resources:
        if resources.chat is None:
            raise click.ClickException("memory jobs need the chat engine and the embedder")
        click.echo("memory worker running; Ctrl-C to stop", err=True)
        await stop.wait()


@main.command()
@click.pass_obj
def migrate(config: Path | None) -> None:
    """Apply pending schema migrations and exit."""
    from memory.migrate import migrate_url

    settings = _load(config)
    configure_logging(settings.log_level, settings.log_format)
    with embedded_services(settings, redis=False, stop_adopted=False):
        applied = asyncio.run(migrate_url(os.environ["DATABASE_URL"]))
    for migration in applied:
        click.echo(f"applied {migration.version:04d}_{migration.name}")
    if not applied:
        click.echo("schema is up to date")


@main.command()
@click.pass_obj
def doctor(config: Path | None) -> None:
    """Print the effective configuration (secrets masked) and what is reachable."""
    from server.doctor import run_doctor

    try:
        settings = load_settings(config_file=config, check_production=False)
    except SettingsError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    sys.exit(0 if asyncio.run(run_doctor(settings, click.echo)) else 1)


@main.group()
def keys() -> None:
    """Create, list and revoke API keys for /v1."""


@keys.command("create")
@click.argument("username")
@click.option("--name", default="", help="A label to tell keys apart.")
@click.option("--admin", is_flag=True, help="The user may use the admin endpoints.")
@click.pass_obj
def keys_create(config: Path | None, username: str, name: str, admin: bool) -> None:
    """Create a key for USERNAME (created if new); the key is printed once."""
    created = _run_accounts(config, lambda s: s.create_key(username, name, admin=admin))
    click.echo(f"key {created.info.id} for {username} ({created.info.prefix}...):", err=True)
    click.echo(created.key)


@keys.command("list")
@click.option("--user", "username", help="Only this user's keys.")
@click.pass_obj
def keys_list(config: Path | None, username: str | None) -> None:
    """List keys (never the keys themselves)."""
    for info in _run_accounts(config, lambda s: s.list_keys(username)):
        state = "revoked" if info.revoked_at else "active"
        used = info.last_used_at.isoformat(timespec="seconds") if info.last_used_at else "never"
        click.echo(
            f"{info.id}  {info.prefix}...  {info.username:<16} {state:<8} used {used}  {info.name}"
        )


@keys.command("revoke")
@click.argument("key_id", type=click.UUID)
@click.pass_obj
def keys_revoke(config: Path | None, key_id: UUID) -> None:
    """Revoke the key KEY_ID (see `keys list`)."""
    from memory.errors import AccountError

    try:
        _run_accounts(config, lambda s: s.revoke_key(key_id))
    except AccountError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    click.echo(f"revoked {key_id}")


def _run_accounts(config: Path | None, action: Callable[[AccountStore], Awaitable[T]]) -> T:
    """Run ``action`` on the account store of the configured (or embedded) database."""
    settings = _load(config)
    configure_logging("warning", settings.log_format)

    async def run(url: str) -> T:
        from memory.db import create_pool
        from memory.migrate import migrate_url

        await migrate_url(url)
        pool = await create_pool(
            dataclasses.replace(settings.database, pool_min=1, pool_max=2), url
        )
        try:
            return await action(AccountStore(pool))
        finally:
            await pool.close()

    with embedded_services(settings, redis=False, stop_adopted=False):
        return asyncio.run(run(os.environ["DATABASE_URL"]))


@main.group()
def models() -> None:
    """The model catalog: list, show, pull."""


@models.command("list")
@click.pass_obj
def models_list(config: Path | None) -> None:
    """Every model in the catalog and whether its weights are on disk."""
    from models.convert import converted

    catalog = _catalog(config)
    for spec in catalog.list():
        path = catalog.resolve(spec.id)
        state = "ready" if path else "not on disk"
        click.echo(f"{spec.id:<28} {spec.role:<10} {spec.backend:<22} {state}")
    settings = _load(config)
    copies = converted((settings.chat_engine.state_dir or settings.data_dir) / "vllm")
    if copies:
        click.echo("Converted for vLLM (from GGUF, reused at every start):")
    for directory, source in copies:
        click.echo(f"  {directory}  <- {source}")


@models.command("show")
@click.argument("model_id")
@click.pass_obj
def models_show(config: Path | None, model_id: str) -> None:
    """Everything the catalog says about MODEL_ID."""
    from models.catalog import CatalogError

    catalog = _catalog(config)
    try:
        spec = catalog.get(model_id)
    except CatalogError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    for key, value in dataclasses.asdict(spec).items():
        if value not in (None, {}):
            click.echo(f"{key:<16} {value}")
    click.echo(f"{'weights':<16} {catalog.resolve(model_id) or '(not on disk)'}")


@models.command("pull")
@click.argument("model_id")
@click.pass_obj
def models_pull(config: Path | None, model_id: str) -> None:
    """Download MODEL_ID's weights (url: and hf: sources), with a progress bar and checksum.

    hf: sources go through huggingface_hub and its cache: HF_TOKEN (or `hf auth
    login`) for gated repositories, HF_ENDPOINT for a mirror; with HF_HUB_OFFLINE=1
    only files already in that cache are pulled.
    """
    from models.catalog import CatalogError, pull

    catalog = _catalog(config)
    with click.progressbar(length=0, label=f"pulling {model_id}", file=sys.stderr) as bar:

        def progress(done: int, total: int | None) -> None:
            bar.length = total or bar.length
            bar.update(done - bar.pos)

        try:
            path = pull(catalog, model_id, _http_fetch, progress)
        except CatalogError as exc:
            click.echo(f"\n{exc}", err=True)
            sys.exit(1)
    click.echo(str(path))


def _catalog(config: Path | None) -> Any:
    from models.catalog import CatalogError, load_catalog

    settings = _load(config)
    try:
        return load_catalog(settings.data_dir, hub_url=settings.hf_endpoint)
    except CatalogError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def _http_fetch(url: str, destination: Path, progress: Callable[[int, int | None], None]) -> None:
    import httpx

    from models.catalog import CatalogError

    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length") or 0) or None
            done = 0
            with destination.open("wb") as out:
                for block in response.iter_bytes(1 << 20):
                    out.write(block)
                    done += len(block)
                    progress(done, total)
    except httpx.HTTPError as exc:
        destination.unlink(missing_ok=True)
        raise CatalogError(f"download failed: {exc}") from exc


@contextmanager
def embedded_services(
    settings: Settings, *, redis: bool = True, stop_adopted: bool = True
) -> Iterator[None]:
    """Run the embedded servers that ``settings`` asks for; export their URLs to the environment.

    A server already running on the data dir (left by a crashed run, or serving
    while ``migrate`` runs) is adopted; ``stop_adopted`` says whether we stop it
    at the end too. ``serve`` does: it owns the data dir while it runs.
    """
    services: list[EmbeddedPostgres | EmbeddedRedis] = []
    if settings.embedded_database:
        services.append(EmbeddedPostgres(settings.data_dir))
    else:
        os.environ["DATABASE_URL"] = settings.database.url or ""
    if redis and settings.embedded_redis:
        services.append(EmbeddedRedis(settings.data_dir))
    with ExitStack() as stack:
        for service in services:
            url = service.start()
            os.environ["DATABASE_URL" if isinstance(service, EmbeddedPostgres) else "REDIS_URL"] = (
                url
            )
            if stop_adopted or not service.adopted:
                stack.callback(service.stop)
        yield


def _load(config: Path | None, overrides: Mapping[str, object] | None = None) -> Settings:
    try:
        return load_settings(config_file=config, overrides=overrides)
    except SettingsError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


def _export_for_workers(config: Path | None, overrides: Mapping[str, object]) -> None:
    """Workers read the settings from the environment: pass them what the flags said."""
    if config is not None:
        os.environ[CONFIG_FILE_VAR] = str(config.resolve())
    for key, value in overrides.items():
        if value is not None:
            os.environ[_OVERRIDE_ENV[key]] = str(value)


def _exit_on_signal(_signum: int, _frame: object) -> None:
    raise SystemExit(0)  # a requested stop that completed cleanly


def _prepare_multiprocess_metrics(data_dir: Path) -> None:
    directory = data_dir / "prometheus"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
