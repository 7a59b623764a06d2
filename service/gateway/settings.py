"""Settings of the HTTP gateway: ``Settings.gateway``, read from ``AIAPPS_GATEWAY__*``
(``AIAPPS_GATEWAY__PORT=8080``, ``AIAPPS_GATEWAY__ALLOWED_URL_HOSTS='["cdn.example.com"]'``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

MiB = 1024 * 1024

IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff"]


class GatewaySettings(BaseModel):
    """Where the gateway listens and what it accepts."""

    host: str = Field(
        default="127.0.0.1",
        description="Interface to listen on; 0.0.0.0 in a container.",
    )
    port: int = Field(default=3000, ge=1, le=65535, description="TCP port to listen on.")
    public_url: str | None = Field(
        default=None,
        description="Base URL clients reach the gateway at (https://support.example.com), "
        "for the status URLs it hands out; by default taken from the request.",
    )
    max_json_bytes: int = Field(
        default=1 * MiB, ge=1024, description="Largest JSON body (or JSON part) accepted."
    )
    max_upload_bytes: int = Field(
        default=10 * MiB, ge=1, description="Largest uploaded attachment, in bytes."
    )
    max_attachments: int = Field(
        default=8, ge=0, le=100, description="Most attachments (uploads and URLs) per inquiry."
    )
    allowed_media_types: list[str] = Field(
        default_factory=lambda: list(IMAGE_TYPES),
        description="Media types an attachment may have, judged by its content.",
    )
    allowed_url_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts attachment URLs may point at: exact names, '*.example.com' for "
        "subdomains, or '*' for any public host. Empty: attachments by URL are refused.",
    )
    allow_private_urls: bool = Field(
        default=False,
        description="Let attachment URLs resolve to private, loopback or link-local addresses "
        "(only for a trusted network).",
    )
    fetch_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to fetch one attachment URL, all in."
    )
    fetch_max_bytes: int = Field(
        default=10 * MiB, ge=1, description="Largest attachment fetched from a URL, in bytes."
    )
    fetch_max_redirects: int = Field(default=3, ge=0, le=10)
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed to call the gateway."
    )
    stream_keepalive: float = Field(
        default=15.0, gt=0, description="Seconds between SSE keep-alive comments."
    )
    stream_poll_interval: float = Field(
        default=5.0, gt=0,
        description="Seconds between event store reads of an idle stream (besides the bus "
        "wake-ups), so events recorded by other processes are seen too.",
    )
    stream_batch: int = Field(default=100, ge=1, le=1000)
    graceful_shutdown: float = Field(
        default=5.0, ge=0, description="Seconds open streams get to finish on shutdown."
    )

    @field_validator("allowed_media_types", "allowed_url_hosts")
    @classmethod
    def _lower(cls, values: list[str]) -> list[str]:
        return [v.strip().lower() for v in values if v.strip()]


def gateway_settings(settings: Any) -> GatewaySettings:
    """``settings.gateway`` if the settings have it, else the defaults."""
    found = getattr(settings, "gateway", None)
    return found if isinstance(found, GatewaySettings) else GatewaySettings()
