"""Attachments: what their bytes are, and fetching them from URLs without becoming a proxy
into the private network (SSRF).

A URL is fetched only if its host is allowed by ``allowed_url_hosts``; the host is resolved
once and every address it resolves to must be public (not private, loopback, link-local,
multicast, reserved or unspecified) unless ``allow_private_urls``; the connection is then
made to the checked address itself, with the original ``Host`` header and TLS server name, so
a second DNS answer (DNS rebinding) cannot send it elsewhere. Redirects are followed by hand,
each target checked the same way. The whole fetch has a time limit and a size cap, counted
while streaming.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote

import httpx

from service.gateway.settings import GatewaySettings

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves a host name and port to IP addresses (as text)."""

_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"BM", 0, "image/bmp"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"%PDF-", 0, "application/pdf"),
    (b"PK\x03\x04", 0, "application/zip"),
    (b"\x1f\x8b", 0, "application/gzip"),
    (b"ID3", 0, "audio/mpeg"),
    (b"OggS", 0, "audio/ogg"),
)


def sniff(data: bytes) -> str | None:
    """The media type the content's first bytes show, or None if they are not recognised."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "audio/wav"
    for magic, offset, media_type in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return media_type
    return None


def judge_media_type(data: bytes, declared: str | None) -> str:
    """The attachment's media type: what its content shows, else what it was declared as
    (lower case, without parameters), else ``application/octet-stream``."""
    found = sniff(data)
    if found is not None:
        return found
    plain = (declared or "").split(";", 1)[0].strip().lower()
    # an image type is believed only when the bytes show it
    if plain and not plain.startswith("image/") and plain != "application/octet-stream":
        return plain
    return "text/plain" if _looks_like_text(data) else "application/octet-stream"


def _looks_like_text(data: bytes) -> bool:
    sample = data[:512]
    if not sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in sample


class AttachmentRejected(Exception):
    """An attachment URL was refused or could not be fetched; the message says why."""


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    media_type: str
    filename: str | None


def host_allowed(host: str, patterns: list[str]) -> bool:
    """``host`` matches an exact name, ``*.domain`` (any subdomain) or ``*``."""
    host = host.lower().rstrip(".").strip("[]")
    for pattern in (p.strip("[]") for p in patterns):
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def address_problem(address: str) -> str | None:
    """Why connecting to ``address`` is refused (a private range), or None if it is public."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return address_problem(str(mapped))
    for attribute, name in (
        ("is_unspecified", "an unspecified"), ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local"), ("is_multicast", "a multicast"),
        ("is_private", "a private"), ("is_reserved", "a reserved"),
    ):
        if getattr(ip, attribute):
            return f"{name} address ({ip})"
    if not ip.is_global:
        return f"a non-public address ({ip})"
    return None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class UrlFetcher:
    """Fetches attachment URLs under the gateway's rules (see the module docstring)."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver or system_resolver
        self._client = httpx.AsyncClient(
            transport=transport, follow_redirects=False, trust_env=False,
            timeout=httpx.Timeout(settings.fetch_timeout),
            # no pooling: a connection to an address made for one host name (its TLS server
            # name) must not be reused for another name on the same address
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"User-Agent": "ai-apps-gateway", "Accept": "image/*"},
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def check_url(self, url: str) -> httpx.URL:
        """Parse ``url`` and check what can be checked without the network: the scheme and
        the host against the allow list. Raises :class:`AttachmentRejected`."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise AttachmentRejected(f"{url!r} is not a valid URL ({exc})") from None
        if parsed.scheme not in ("http", "https"):
            raise AttachmentRejected(f"{url!r}: only http and https URLs are fetched")
        host = parsed.host
        if not host:
            raise AttachmentRejected(f"{url!r} has no host")
        if parsed.userinfo:
            raise AttachmentRejected(f"{url!r}: URLs with credentials are not fetched")
        if not host_allowed(host, self.settings.allowed_url_hosts):
            allowed = ", ".join(self.settings.allowed_url_hosts) or "none are configured"
            raise AttachmentRejected(
                f"host {host!r} is not allowed for attachment URLs (allowed hosts: {allowed}; "
                "set AIAPPS_GATEWAY__ALLOWED_URL_HOSTS)"
            )
        return parsed

    async def fetch(self, url: str) -> Fetched:
        """The attachment at ``url``. Raises :class:`AttachmentRejected` saying why not."""
        try:
            async with asyncio.timeout(self.settings.fetch_timeout):
                return await self._fetch(url)
        except TimeoutError:
            raise AttachmentRejected(
                f"{url}: not fetched within {self.settings.fetch_timeout:g} s"
            ) from None

    async def _fetch(self, url: str) -> Fetched:
        current = url
        for _ in range(self.settings.fetch_max_redirects + 1):
            target = self.check_url(current)
            address = await self._checked_address(target)
            try:
                request = self._client.build_request(
                    "GET", target.copy_with(host=address),
                    headers={"Host": target.netloc.decode("ascii")},
                    extensions={"sni_hostname": target.host} if target.scheme == "https"
                    else {},
                )
                response = await self._client.send(request, stream=True)
            except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
                raise AttachmentRejected(f"{current}: cannot fetch ({exc!r})") from None
            try:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise AttachmentRejected(f"{current}: a redirect without a Location")
                    current = str(target.join(location))
                    continue
                if response.status_code != 200:
                    raise AttachmentRejected(
                        f"{current}: the server answered {response.status_code}"
                    )
                data = await self._read_capped(response, current)
            finally:
                await response.aclose()
            name = PurePosixPath(unquote(target.path)).name or None
            return Fetched(data, judge_media_type(data, response.headers.get("content-type")),
                           name)
        raise AttachmentRejected(
            f"{url}: more than {self.settings.fetch_max_redirects} redirects"
        )

    async def _checked_address(self, url: httpx.URL) -> str:
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            ipaddress.ip_address(host)
            addresses = [host]
        except ValueError:
            try:
                addresses = await self.resolver(host, port)
            except (OSError, UnicodeError, ValueError) as exc:
                raise AttachmentRejected(f"host {host!r} does not resolve ({exc})") from None
        if not addresses:
            raise AttachmentRejected(f"host {host!r} does not resolve")
        if not self.settings.allow_private_urls:
            for address in addresses:
                problem = address_problem(address)
                if problem is not None:
                    raise AttachmentRejected(
                        f"host {host!r} resolves to {problem}; attachment URLs must point at "
                        "public addresses"
                    )
        return addresses[0]

    async def _read_capped(self, response: httpx.Response, url: str) -> bytes:
        cap = self.settings.fetch_max_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise AttachmentRejected(f"{url}: {declared} bytes; at most {cap} bytes "
                                     "(AIAPPS_GATEWAY__FETCH_MAX_BYTES)")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > cap:
                    raise AttachmentRejected(f"{url}: larger than {cap} bytes "
                                             "(AIAPPS_GATEWAY__FETCH_MAX_BYTES)")
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise AttachmentRejected(f"{url}: the download failed ({exc!r})") from None
        return b"".join(chunks)
