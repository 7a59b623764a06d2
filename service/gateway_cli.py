"""The gateway's commands: ``serve``, ``keys create|list|revoke`` and ``asyncapi``.

``register(app)`` adds them to the ``ai-apps`` Typer app; ``python -m service.gateway_cli``
runs them on their own."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.table import Table

from saga.store import ApiKey, SagaStore
from service.console import console
from service.gateway.settings import gateway_settings
from service.logs import configure_logging
from service.settings import Settings
from service.wiring import ConfigurationError, Service, make_store

out = console()
err = console(stderr=True)

keys_app = typer.Typer(help="API keys of the HTTP gateway, one tenant each.", no_args_is_help=True)


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings)
    return settings


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def _embedded(settings: Settings) -> bool:
    return settings.bus.startswith("memory://")


# -- serve -----------------------------------------------------------------------------------


def serve(
    port: Annotated[int | None, typer.Option(
        help="TCP port (default: AIAPPS_GATEWAY__PORT, 3000).", min=1, max=65535)] = None,
    host: Annotated[str | None, typer.Option(
        help="Interface (default: AIAPPS_GATEWAY__HOST, 127.0.0.1; 0.0.0.0 in a container)."
    )] = None,
) -> None:
    """Run the HTTP gateway. On the embedded default bus it runs the coordinator and the
    actors in this process too (one command, a working service); on a broker it is a client
    of the deployment."""
    settings = _settings()
    gateway = gateway_settings(settings)
    overrides: dict[str, Any] = {}
    if port is not None:
        overrides["port"] = port
    if host is not None:
        overrides["host"] = host
    gateway = gateway.model_copy(update=overrides)
    try:
        import uvicorn  # noqa: F401  (here, to name the extra when it is missing)

        from service.gateway.app import create_app
    except ImportError as exc:
        raise _fail(f"'ai-apps serve' needs the 'gateway' extra: pip install "
                    f"'ai-apps[gateway]' ({exc})") from None
    try:
        service = (Service(settings) if _embedded(settings)
                   else Service(settings, coordinator=False, actors=[]))
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None
    app = create_app(service, settings, gateway=gateway)
    role = ("gateway, coordinator and actors (embedded bus)" if _embedded(settings)
            else "gateway (client of the broker)")
    err.print(f"ai-apps {role} on http://{gateway.host}:{gateway.port}  "
              "(SIGTERM or Ctrl-C stops)", highlight=False)
    server = _server(uvicorn_config(app, settings, gateway), app.state.gateway.hub.close)
    try:
        server.run()
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None
    if not server.started:
        raise _fail("the gateway did not start (see the log above)", 3)


UVICORN_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        name: {"handlers": [], "propagate": True}
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
    },
}
"""uvicorn's loggers without handlers of their own (uvicorn's default config gives them
plain-text ones): their lines, the access log and the "Exception in ASGI application"
tracebacks included, go to the root logger, whose handler ``configure_logging`` set up: the
same structlog chain as ours, JSON and redacted. (A dict rather than ``log_config=None``: it
also takes off handlers an earlier uvicorn in the process installed.)"""


def uvicorn_config(app: Any, settings: Settings, gateway: Any) -> Any:
    """The uvicorn configuration ``serve`` runs ``app`` with (its logs through ours)."""
    import uvicorn

    return uvicorn.Config(
        app, host=gateway.host, port=gateway.port, lifespan="on",
        log_config=UVICORN_LOGGING, log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(gateway.graceful_shutdown) or None,
    )


def _server(config: Any, on_shutdown: Any) -> Any:
    """A uvicorn server that ends the response streams as soon as shutdown begins (instead
    of waiting out the grace period for them), and exits 0 after a signal-initiated
    graceful stop (uvicorn re-raises the signal), as the other long-running commands do."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            on_shutdown()
            await super().shutdown(sockets)

    return Server(config)


# -- keys ------------------------------------------------------------------------------------


async def _with_store(settings: Settings, work: Any) -> Any:
    store: SagaStore = make_store(settings)
    await store.open()
    try:
        return await work(store)
    finally:
        await store.close()


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None


def _persistent(settings: Settings) -> None:
    if settings.store.startswith("memory://"):
        raise _fail("API keys need a store that lasts: set AIAPPS_STORE=sqlite:///… or "
                    "postgresql://… (the gateway must use the same store)")


def _key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id, "tenant": key.tenant, "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "active": key.active,
    }


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create an API key for a tenant and print it. It is shown this once: only its hash is
    stored."""
    settings = _settings()
    _persistent(settings)
    from service.gateway.auth import create_api_key, valid_tenant

    if not valid_tenant(tenant):
        raise _fail(f"tenant {tenant!r}: use 1-64 letters, digits, '.', '_' or '-', starting "
                    "with a letter or digit")

    async def create(store: SagaStore) -> tuple[ApiKey, str]:
        return await create_api_key(store, tenant)

    record, token = _run(_with_store(settings, create))
    if as_json:
        sys.stdout.write(json.dumps({**_key_json(record), "key": token}, indent=2) + "\n")
        return
    sys.stdout.write(token + "\n")
    err.print(f"key {record.key_id} for tenant {record.tenant!r}: shown only now; send it as "
              "'Authorization: Bearer <key>'", highlight=False)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List API keys (ids, tenants, when created or revoked; never the keys)."""
    settings = _settings()

    async def load(store: SagaStore) -> list[ApiKey]:
        return await store.list_api_keys(tenant)

    keys: list[ApiKey] = _run(_with_store(settings, load))
    if as_json:
        sys.stdout.write(json.dumps([_key_json(k) for k in keys], indent=2) + "\n")
        return
    table = Table("key id", "tenant", "created", "status")
    for key in keys:
        status = "active" if key.active else (
            f"revoked {key.revoked_at.isoformat(timespec='seconds')}" if key.revoked_at else "")
        table.add_row(key.key_id, key.tenant, key.created_at.isoformat(timespec="seconds"),
                      status)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (see 'keys list').")]) -> None:
    """Revoke an API key: calls with it get 401 from now on, and its open streams end."""
    settings = _settings()
    from datetime import UTC, datetime

    async def revoke(store: SagaStore) -> bool:
        return await store.revoke_api_key(key_id, datetime.now(UTC))

    if not _run(_with_store(settings, revoke)):
        raise _fail(f"no active key {key_id!r} in {settings.store}", 1)
    out.print(f"revoked {key_id}")


# -- asyncapi --------------------------------------------------------------------------------


def asyncapi(
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write to this file instead of standard output.")] = None,
) -> None:
    """Print the AsyncAPI 3 document of the bus: every channel (event type), its CloudEvent
    payload schema, and which role sends and receives it."""
    settings = _settings()
    from service.gateway.asyncapi import asyncapi_document

    host = "localhost:5672"
    if not _embedded(settings):
        try:
            parts = urlsplit(settings.bus)
            host = f"{parts.hostname or 'localhost'}:{parts.port or 5672}"
        except ValueError:
            pass
    text = json.dumps(asyncapi_document(exchange=settings.bus_exchange, server_host=host),
                      indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    output.write_text(text)
    err.print(f"wrote {output}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``serve``, ``keys`` and ``asyncapi`` to the ``ai-apps`` command line."""
    app.command()(serve)
    app.add_typer(keys_app, name="keys")
    app.command()(asyncapi)


app = typer.Typer(help="ai-apps HTTP gateway.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
register(app)

__all__ = ["app", "register"]

if __name__ == "__main__":
    app()
