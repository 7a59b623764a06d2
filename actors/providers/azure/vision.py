"""Azure AI Vision Image Analysis 4.0 through ``azure-ai-vision-imageanalysis`` 1.x (aio client).

One call, ``POST /computervision/imageanalysis:analyze?api-version=2023-10-01&features=…``
with the image bytes (``application/octet-stream``), returns caption, tags, objects and the
read (OCR) result. ``quality`` (our own measure of size, contrast and sharpness) has no Azure
counterpart and is left ``None``; asking only for it makes no call.

OCR lines come in the service's reading order (blocks, then lines within a block); a line's
confidence is the mean of its words' confidences.

Usage: one transaction per visual feature asked for (caption, tags, objects, read), not per
call. Azure's price list for Image Analysis quotes each feature group (tags and objects;
OCR/read; caption and dense captions) at its own price per 1,000 transactions
(https://azure.microsoft.com/pricing/details/cognitive-services/computer-vision/, where "all
features are available in the free tier; they are written out in the S1 tier because they
are priced differently there", MicrosoftDocs/azure-docs#38106), which only adds up if every
feature of a call is a transaction of its own; an image analysed for caption, tags and read is
billed as three. (We found no page that states the rule in so many words; if your invoice
shows one transaction per call, price ``image-analysis*`` per feature at a third.)
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from actors.capabilities import ImageAnalysis
from actors.errors import PermanentError, UnsupportedError
from actors.providers.azure._auth import (
    as_secret,
    auth_kind,
    close_quietly,
    is_loopback_http,
    secret_values,
)
from actors.providers.azure.errors import DEFAULT_MAX_RETRY_AFTER, mapped_errors
from events.common import ProviderInfo, Usage
from events.support import TextLine

if TYPE_CHECKING:
    from azure.ai.vision.imageanalysis.aio import ImageAnalysisClient
    from azure.ai.vision.imageanalysis.models import ImageAnalysisResult
    from azure.core.credentials_async import AsyncTokenCredential

PROVIDER_NAME = "azure-vision"
API_VERSION = "2023-10-01"
MAX_IMAGE_BYTES = 20 * 1024 * 1024
"""The service rejects larger images; checked here to save the round trip."""

_FEATURES = ("caption", "tags", "objects", "read", "quality")
# 1x1 PNG: the service rejects images under 50x50 px with 400 after the gateway's key check
_TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


class AzureImageAnalyzer:
    """``ImageAnalyzer`` on Azure AI Vision. Authenticate with ``key`` or an Entra ID
    ``credential``. Tags and objects below ``min_confidence`` are dropped."""

    def __init__(
        self,
        endpoint: str,
        *,
        key: SecretStr | str | None = None,
        credential: AsyncTokenCredential | None = None,
        language: str = "en",
        gender_neutral_caption: bool = True,
        min_confidence: float = 0.5,
        timeout: float = 30.0,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        close_credential: bool = False,
    ) -> None:
        self._key = as_secret(key)
        if (self._key is None) == (credential is None):
            raise ValueError("pass exactly one of key= or credential=")
        self.endpoint = endpoint.rstrip("/")
        self._credential = credential
        self._language = language
        self._gender_neutral = gender_neutral_caption
        self._min_confidence = min_confidence
        self._timeout = timeout
        self._max_retry_after = max_retry_after
        self._close_credential = close_credential
        self._client: ImageAnalysisClient | None = None

    def __repr__(self) -> str:
        auth = auth_kind(self._key, self._credential)
        return f"AzureImageAnalyzer(endpoint={self.endpoint!r}, auth={auth!r})"

    def _get_client(self) -> ImageAnalysisClient:
        if self._client is None:
            try:
                from azure.ai.vision.imageanalysis.aio import ImageAnalysisClient
                from azure.core.credentials import AzureKeyCredential
            except ImportError as exc:
                raise UnsupportedError(
                    "Azure AI Vision needs the 'azure' extra: pip install 'ai-apps[azure]'",
                    provider=PROVIDER_NAME,
                ) from exc
            credential: Any = (
                AzureKeyCredential(self._key.get_secret_value()) if self._key is not None
                else self._credential
            )
            self._client = ImageAnalysisClient(
                endpoint=self.endpoint, credential=credential, retry_total=0,
                connection_timeout=self._timeout, read_timeout=self._timeout,
            )
        return self._client

    def deployment_parts(self) -> dict[str, object]:
        """Where calls go (the throttle's bucket; part of the cache key); no secret."""
        return {"endpoint": self.endpoint}

    def output_parts(self) -> dict[str, object]:
        """What changes an analysis besides the image and features (part of the cache key)."""
        return {"api_version": API_VERSION, "language": self._language,
                "gender_neutral_caption": self._gender_neutral,
                "min_confidence": self._min_confidence}

    def _call_options(self) -> dict[str, Any]:
        if self._credential is not None and is_loopback_http(self.endpoint):
            return {"enforce_https": False}
        return {}

    async def analyze(
        self, image: bytes, media_type: str, features: tuple[str, ...]
    ) -> ImageAnalysis:
        unknown = set(features) - set(_FEATURES)
        if unknown or not features:
            raise PermanentError(
                f"unknown or no image features {sorted(unknown)}; expected some of {list(_FEATURES)}",
                provider=PROVIDER_NAME,
            )
        if not image:
            raise PermanentError("the image is empty", provider=PROVIDER_NAME)
        if len(image) > MAX_IMAGE_BYTES:
            raise PermanentError(
                f"the image is {len(image)} bytes; Azure AI Vision accepts at most {MAX_IMAGE_BYTES}",
                provider=PROVIDER_NAME,
            )
        asked = [f for f in _FEATURES if f in features and f != "quality"]
        if not asked:  # only "quality": nothing Azure measures
            return ImageAnalysis(provider=ProviderInfo(name="azure", model=f"image-analysis-{API_VERSION}"))
        client = self._get_client()
        from azure.ai.vision.imageanalysis.models import VisualFeatures

        visual = [VisualFeatures(f) for f in asked]
        with mapped_errors(
            PROVIDER_NAME, secrets=secret_values(self._key), max_retry_after=self._max_retry_after
        ):
            result = await client.analyze(
                image_data=image,
                visual_features=visual,
                language=self._language,
                gender_neutral_caption=self._gender_neutral if "caption" in features else None,
                **self._call_options(),
            )
        return self._to_analysis(result, len(asked))

    def _to_analysis(self, result: ImageAnalysisResult, features: int) -> ImageAnalysis:
        """The result of a call that asked for ``features`` visual features (each billed as
        a transaction, see the module docstring)."""
        floor = self._min_confidence
        lines: list[TextLine] = []
        if result.read is not None:
            for block in result.read.blocks:
                for line in block.lines:
                    words = [w.confidence for w in line.words]
                    confidence = min(max(sum(words) / len(words), 0.0), 1.0) if words else 1.0
                    lines.append(TextLine(text=line.text, confidence=round(confidence, 4)))
        objects: list[str] = []
        if result.objects is not None:
            for found in result.objects.list:
                best = max(found.tags, key=lambda t: t.confidence, default=None)
                if best is not None and best.confidence >= floor and best.name not in objects:
                    objects.append(best.name)
        tags = tuple(t.name for t in result.tags.list if t.confidence >= floor) if result.tags else ()
        caption = result.caption.text if result.caption is not None else None
        return ImageAnalysis(
            provider=ProviderInfo(name="azure", model=f"image-analysis-{result.model_version}"),
            caption=caption,
            tags=tags,
            objects=tuple(objects),
            ocr_lines=tuple(lines),
            usage=Usage(transactions=features),
        )

    async def check(self) -> str:
        """Reachability and key check for ``ai-apps providers check``: a 1x1 image, which the
        gateway authenticates and the service rejects as too small (400) without analysing it.
        Raises :class:`AuthError` when the key is refused."""
        try:
            await self.analyze(_TINY_PNG, "image/png", ("tags",))
        except PermanentError:
            return "credentials accepted (probe: a 1x1 image, rejected with 400 as too small)"
        return "credentials accepted, but the 1x1 probe image was analysed (1 transaction)"

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()
        if self._close_credential and self._credential is not None:
            await close_quietly(self._credential)
