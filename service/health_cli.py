"""``ai-apps ping``: can this process's configuration reach what a role needs?

It connects to the bus and opens the store named by the settings (the same ``AIAPPS_*``
environment the role runs with), optionally GETs HTTP endpoints (``--url``, e.g. the gateway's
``/health``), prints one line per check and exits 0 when every check passes, 1 otherwise. It is
the container image's ``HEALTHCHECK`` and the readiness probe of the worker and coordinator pods,
which have no HTTP port of their own. It answers for the configuration, not for a running
process: the process's own health is the gateway's ``/health`` or, for a worker, the bus's
consumer count.

Registered on the ``ai-apps`` application by :func:`register`.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import typer

from service.logs import configure_logging
from service.settings import Settings
from service.wiring import ConfigurationError, make_store, make_transport


@dataclass(frozen=True)
class Check:
    """The outcome of one check: what was reached, whether it answered, in how long."""

    name: str
    target: str
    ok: bool
    ms: float
    detail: str = ""


def redact(url: str) -> str:
    """``url`` without its password (``amqp://user:***@host/``); other strings as they are."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


async def _timed(name: str, target: str, probe: Callable[[], Awaitable[str]], timeout: float) -> Check:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            detail = await probe()
    except TimeoutError:
        ok, detail = False, f"no answer within {timeout:g}s"
    except Exception as exc:  # every failure is a failed check, reported with its cause
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    else:
        ok = True
    return Check(name, target, ok, round((time.perf_counter() - started) * 1000, 1), detail)


async def _bus(settings: Settings) -> str:
    if settings.bus.startswith("memory://"):
        return "in-process bus: nothing to reach"
    transport = make_transport(settings)
    await transport.start()
    await transport.close()
    return "connected"


async def _store(settings: Settings) -> str:
    if settings.store.startswith(("postgresql://", "postgres://")):
        # A connection and a query, not PostgresSagaStore.open(): that runs the schema's
        # CREATE … IF NOT EXISTS, whose CREATE INDEX takes a SHARE lock on the tables (inserts
        # wait behind it); a probe every few seconds from every pod must not.
        try:
            import asyncpg
        except ImportError as exc:
            raise ConfigurationError(
                f"asyncpg needs the 'postgres' extra: pip install 'ai-apps[postgres]' ({exc})"
            ) from exc
        conn = await asyncpg.connect(settings.store)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()
        return "connected"
    store = make_store(settings)
    await store.open()
    await store.close()
    return "opened"


def _get(url: str, timeout: float) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": "ai-apps-ping"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"HTTP {exc.code}") from None
    if not 200 <= status < 300:
        raise RuntimeError(f"HTTP {status}")
    return f"HTTP {status}"


def _http(url: str, timeout: float) -> Callable[[], Awaitable[str]]:
    return lambda: asyncio.to_thread(_get, url, timeout)


async def run_checks(
    settings: Settings, *, bus: bool = True, store: bool = True, urls: tuple[str, ...] = (),
    timeout: float = 10.0,
) -> list[Check]:
    """Run the chosen checks concurrently, each bounded by ``timeout`` seconds."""
    probes: list[Awaitable[Check]] = []
    if bus:
        probes.append(_timed("bus", redact(settings.bus), lambda: _bus(settings), timeout))
    if store:
        probes.append(_timed("store", redact(settings.store), lambda: _store(settings), timeout))
    for url in urls:
        probes.append(_timed("http", redact(url), _http(url, timeout), timeout))
    return list(await asyncio.gather(*probes))


def ping(
    urls: Annotated[list[str] | None, typer.Option(
        "--url", help="Also GET this URL (repeatable); a 2xx answer passes, e.g. "
        "http://127.0.0.1:3000/health for the gateway.",
    )] = None,
    bus: Annotated[bool, typer.Option("--bus/--no-bus", help="Connect to AIAPPS_BUS.")] = True,
    store: Annotated[bool, typer.Option("--store/--no-store", help="Open AIAPPS_STORE.")] = True,
    timeout: Annotated[float, typer.Option(help="Seconds each check may take.")] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check that the bus and the store of this configuration answer (and any --url); exit 0
    when every check passes, 1 otherwise. For container health checks and readiness probes."""
    settings = Settings()
    configure_logging(settings)
    checks = asyncio.run(run_checks(settings, bus=bus, store=store, urls=tuple(urls or ()),
                                    timeout=timeout))
    if as_json:
        sys.stdout.write(json.dumps([asdict(c) for c in checks], indent=2) + "\n")
    else:
        for c in checks:
            state = "ok" if c.ok else "FAIL"
            sys.stdout.write(f"{c.name:<6} {state:<4} {c.target}  {c.ms:.0f} ms  {c.detail}\n")
    if not checks or not all(c.ok for c in checks):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``ai-apps ping`` to the application."""
    app.command("ping")(ping)


__all__ = ["Check", "ping", "redact", "register", "run_checks"]
