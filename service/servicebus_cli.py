"""``ai-apps servicebus``: the Azure Service Bus topology of a deployment.

``AIAPPS_BUS`` names the namespace: a connection string (``Endpoint=sb://…;SharedAccessKeyName=…``,
or the emulator's with ``UseDevelopmentEmulator=true``), or ``sb://NAMESPACE.servicebus.windows.net``
to sign in with ``DefaultAzureCredential``. The topic is ``AIAPPS_BUS_EXCHANGE`` (``ai-apps``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from bus.base import RetryPolicy, TransportError
from service.settings import Settings

if TYPE_CHECKING:
    from bus.servicebus import ServiceBusTransport

servicebus_app = typer.Typer(
    help="Azure Service Bus: create or update the topic and the subscriptions.",
    no_args_is_help=True,
)


@servicebus_app.callback()
def servicebus() -> None:
    """Azure Service Bus: the topic and subscriptions of the deployment (AIAPPS_BUS)."""


def is_servicebus(url: str) -> bool:
    """Whether a bus URL names a Service Bus namespace."""
    return url.startswith(("Endpoint=sb://", "endpoint=sb://", "sb://"))


def servicebus_target(url: str) -> tuple[str | None, str | None]:
    """(connection string, namespace) of a Service Bus bus URL: one of them is set."""
    if url.lower().startswith("endpoint="):
        return url, None
    if url.startswith("sb://"):
        return None, url
    raise ValueError(f"AIAPPS_BUS={url[:20]!r}…: not a Service Bus connection string or sb:// namespace")


def deployment_groups(settings: Settings) -> dict[str, list[str]]:
    """Every subscriber group of a deployment and the event types it takes
    (:func:`service.wiring.deployment_topology`)."""
    from service.wiring import deployment_topology

    return deployment_topology(settings)


def default_max_delivery_count(settings: Settings) -> int:
    """The broker's own limit: well above the transport's retries, which come first."""
    return max(10, 2 * settings.bus_max_attempts)


def transport_from_settings(settings: Settings) -> ServiceBusTransport:
    """The Service Bus transport ``AIAPPS_BUS`` names (what ``service.wiring.make_transport``
    builds for an ``Endpoint=sb://…`` or ``sb://…`` URL)."""
    from bus.servicebus import ServiceBusTransport
    from service.wiring import KNOWN_GROUPS

    connection_string, namespace = servicebus_target(settings.bus)
    return ServiceBusTransport(
        connection_string, namespace=namespace, topic=settings.bus_exchange,
        retry=RetryPolicy(max_attempts=settings.bus_max_attempts,
                          initial_delay=settings.bus_retry_delay),
        prefetch=settings.concurrency, max_delivery_count=default_max_delivery_count(settings),
        known_groups=KNOWN_GROUPS,
    )


@servicebus_app.command("provision")
def provision_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would change; change nothing.")
    ] = False,
    max_delivery_count: Annotated[
        int | None,
        typer.Option(help="Deliveries before the broker itself dead-letters (default: "
                          "max(10, 2 x AIAPPS_BUS_MAX_ATTEMPTS)).", min=1),
    ] = None,
) -> None:
    """Create or update the topic and one subscription per subscriber group, with its rules,
    dead-lettering and max delivery count. Safe to run again: it changes only what differs."""
    from bus.servicebus_admin import provision
    from service.logs import configure_logging

    settings = Settings()
    configure_logging(settings)
    try:
        connection_string, namespace = servicebus_target(settings.bus)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    groups = deployment_groups(settings)
    count = max_delivery_count or default_max_delivery_count(settings)
    try:
        actions = asyncio.run(provision(
            connection_string, namespace=namespace, topic=settings.bus_exchange, groups=groups,
            max_delivery_count=count, dry_run=dry_run,
        ))
    except (TransportError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    prefix = "would " if dry_run else ""
    for action in actions:
        typer.echo(f"{prefix}{action}")
    if not actions:
        typer.echo(f"topic {settings.bus_exchange!r} and its {len(groups)} subscriptions are up to date")


__all__ = [
    "default_max_delivery_count",
    "deployment_groups",
    "is_servicebus",
    "servicebus_app",
    "servicebus_target",
    "transport_from_settings",
]
