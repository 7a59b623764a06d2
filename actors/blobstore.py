"""The blob store: images and audio travel by reference (claim check), never inline."""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from events.common import BlobRef
from events.errors import AiAppsError

# the stdlib table lacks the common audio names
_EXTENSIONS = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/mpeg": ".mp3", "audio/ogg": ".ogg"}


class BlobNotFound(AiAppsError):
    """The blob a reference points to is not in the store."""


class BlobStore(Protocol):
    async def put(self, data: bytes, media_type: str, filename: str | None = None) -> BlobRef: ...

    async def get(self, ref: BlobRef) -> bytes: ...

    async def delete(self, ref: BlobRef) -> None: ...


class FileBlobStore:
    """Content-addressed blobs in a folder: ``<root>/<sha256[:2]>/<sha256><ext>``.

    Writing the same bytes twice stores them once. References are ``file://`` URIs.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()

    async def put(self, data: bytes, media_type: str, filename: str | None = None) -> BlobRef:
        digest = hashlib.sha256(data).hexdigest()
        ext = _EXTENSIONS.get(media_type) or mimetypes.guess_extension(media_type) or ".bin"
        path = self.root / digest[:2] / f"{digest}{ext}"
        await asyncio.to_thread(_write_once, path, data)
        return BlobRef(
            uri=path.as_uri(), media_type=media_type, size=len(data), sha256=digest,
            filename=filename,
        )

    async def get(self, ref: BlobRef) -> bytes:
        path = self._path(ref)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {ref.uri} is not in the store") from None
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BlobNotFound(f"blob {ref.uri} does not match its sha256")
        return data

    async def delete(self, ref: BlobRef) -> None:
        await asyncio.to_thread(self._path(ref).unlink, missing_ok=True)

    def path(self, ref: BlobRef) -> Path:
        """The local file holding ``ref`` (for the CLI to print)."""
        return self._path(ref)

    def _path(self, ref: BlobRef) -> Path:
        parsed = urlparse(ref.uri)
        if parsed.scheme != "file":
            raise BlobNotFound(f"{ref.uri}: this store only serves file:// blobs")
        path = Path(parsed.path).resolve()
        if not path.is_relative_to(self.root):
            raise BlobNotFound(f"{ref.uri} is outside the blob store {self.root}")
        return path


def _write_once(path: Path, data: bytes) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: two writers of the same bytes at once must not share a temporary file
    tmp = path.with_suffix(f"{path.suffix}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
