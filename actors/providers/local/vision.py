"""Offline image analysis: OCR with RapidOCR and image-quality metrics with Pillow + numpy.

RapidOCR 3 ships its PP-OCR ONNX models inside the wheel and runs them with onnxruntime, so
nothing is downloaded. There is no offline captioning, tagging or object-detection model, so
the caption and tags are *descriptions of what was measured* (size, exposure, sharpness, how
many lines of text were read), never guesses about the content, and ``objects`` stays empty.

Features (the ``features`` argument):

``read``
    OCR lines in reading order (top to bottom, left to right) with their confidences.
``quality``
    :class:`~events.support.ImageQuality`, judged by :class:`QualityThresholds`.
``caption`` / ``tags``
    Built from the quality metrics and the OCR results, so asking for either also runs OCR
    (about 2 s of CPU per image on two cores).
``objects``
    No offline detector: ignored when asked with other features, ``UnsupportedError`` alone.

Needs ``pip install 'ai-apps[local]'`` (rapidocr, onnxruntime, numpy).
"""

from __future__ import annotations

import asyncio
import io
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps, UnidentifiedImageError

from actors.capabilities import ImageAnalysis
from actors.errors import PermanentError, UnsupportedError
from events.common import ProviderInfo, Usage
from events.support import ImageQuality, TextLine

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["LocalImageAnalyzer", "QualityThresholds"]

_PROVIDER = "local"
_BY = "\N{MULTIPLICATION SIGN}"  # captions read "960 (times) 720", as people write sizes
_INSTALL_HINT = "pip install 'ai-apps[local]'"

# Media type -> its Pillow decoder. Only these decoders ever see customer uploads, which keeps
# Pillow's rarer (and less hardened) formats out of reach.
_FORMATS: dict[str, str] = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/jpg": "JPEG",
    "image/pjpeg": "JPEG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
    "image/bmp": "BMP",
    "image/x-ms-bmp": "BMP",
    "image/tiff": "TIFF",
}
# Blob stores often know only "octet-stream": sniff the bytes among the formats above.
_SNIFF = ("application/octet-stream",)
_ALL_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

_FEATURES = frozenset({"caption", "tags", "objects", "read", "quality"})

# 40 megapixels: more than any phone camera; beyond it an upload is a mistake or an attack.
_MAX_PIXELS = 40_000_000
# Sharpness is measured on a copy whose longest side is at most this, so that a sharp 12 MP
# photo and a sharp 1 MP photo score alike (the Laplacian is per pixel).
_SHARPNESS_SIDE = 1024
# "document" needs several lines of text, not a single sticker or logo.
_DOCUMENT_MIN_LINES = 3


@dataclass(frozen=True, slots=True)
class QualityThresholds:
    """When an image is judged unfit: each failed check adds an issue and makes it
    unacceptable.

    Brightness and contrast are the mean and standard deviation of luminance (0 to 1).
    Sharpness is the variance of the 4-neighbour Laplacian of the 0-255 luminance, measured
    after scaling the longest side down to 1024 px; below about 100 text and edges are visibly
    soft (the usual rule of thumb for this measure).
    """

    min_pixels: int = 320 * 240
    """Fewer pixels than QVGA: "too small" (a thumbnail; a narrow strip of text is fine)."""
    min_brightness: float = 0.25
    """Below this: "too dark"."""
    max_brightness: float = 0.92
    """Above this *and* flatter than ``washed_out_contrast``: "too bright" (overexposed). A white
    page with dark text is just as bright but keeps its contrast, so it passes."""
    washed_out_contrast: float = 0.12
    min_contrast: float = 0.08
    """Below this: "low contrast"."""
    min_sharpness: float = 100.0
    """Below this: "blurry"."""


@dataclass(frozen=True, slots=True)
class _Measured:
    quality: ImageQuality
    greyscale: bool


class LocalImageAnalyzer:
    """:class:`~actors.capabilities.ImageAnalyzer` that runs entirely on this machine:
    RapidOCR for text, Pillow + numpy for quality, and factual captions and tags.

    The OCR engine is created on first use (once per analyzer, thread-safe); calls are
    serialised on it because onnxruntime already uses every core for one image.
    """

    def __init__(
        self,
        *,
        min_confidence: float = 0.5,
        thresholds: QualityThresholds | None = None,
    ) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError("min_confidence must be between 0 and 1")
        self._min_confidence = min_confidence
        self._thresholds = thresholds or QualityThresholds()
        self._engine: Any = None
        self._engine_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._model = "rapidocr"

    @property
    def thresholds(self) -> QualityThresholds:
        return self._thresholds

    async def analyze(self, image: bytes, media_type: str, features: tuple[str, ...]) -> ImageAnalysis:
        wanted = _check_features(features)
        # Decoding, the metrics and OCR are all CPU-bound: keep them off the event loop.
        return await asyncio.to_thread(self._analyze_sync, image, media_type, wanted)

    def load(self) -> None:
        """Create the OCR engine now rather than on the first image (e.g. at start-up).
        Raises ``UnsupportedError`` when rapidocr or onnxruntime is missing."""
        self._ocr_engine()

    # -- the work, in a worker thread ------------------------------------------------------

    def _analyze_sync(self, data: bytes, media_type: str, wanted: frozenset[str]) -> ImageAnalysis:
        rgb = _decode(data, media_type)
        measured = _measure(rgb, self._thresholds)
        run_ocr = bool(wanted & {"read", "caption", "tags"})
        lines = self._read(rgb) if run_ocr else None
        return ImageAnalysis(
            provider=ProviderInfo(name=_PROVIDER, model=self._model if run_ocr else "pillow"),
            caption=_caption(measured, lines) if "caption" in wanted else None,
            tags=_tags(measured, lines) if "tags" in wanted else (),
            ocr_lines=tuple(lines or ()) if "read" in wanted else (),
            quality=measured.quality if "quality" in wanted else None,
            usage=Usage(transactions=1),
        )

    def _ocr_engine(self) -> Any:
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> Any:
        try:
            import onnxruntime  # noqa: F401  (rapidocr 3 does not depend on it; check early)
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise UnsupportedError(
                f"local OCR needs rapidocr and onnxruntime ({exc.name or exc} is missing): {_INSTALL_HINT}",
                provider=_PROVIDER,
            ) from exc
        try:
            version = metadata.version("rapidocr")
        except metadata.PackageNotFoundError:
            version = "3"
        self._model = f"rapidocr-{version}"
        # Its INFO logging prints one line per model file on every load: keep warnings only.
        return RapidOCR(params={"Global.log_level": "warning", "Global.text_score": self._min_confidence})

    def _read(self, rgb: Image.Image) -> list[TextLine]:
        engine = self._ocr_engine()
        with self._run_lock:
            try:
                output = engine(rgb)
            except MemoryError as exc:
                raise PermanentError(
                    "not enough memory to run OCR on this image", provider=_PROVIDER
                ) from exc
            except Exception as exc:
                # The same image and model fail the same way every time: not retryable.
                raise PermanentError(f"OCR failed: {exc}", provider=_PROVIDER) from exc
        texts = getattr(output, "txts", None)
        boxes = getattr(output, "boxes", None)
        scores = getattr(output, "scores", None)
        if not texts or boxes is None or scores is None:
            return []
        found = []
        for text, box, score in zip(texts, boxes, scores, strict=True):
            clean = str(text).strip()
            if not clean:
                continue
            xs = [float(point[0]) for point in box]
            ys = [float(point[1]) for point in box]
            found.append(
                _Box(
                    text=clean,
                    confidence=min(1.0, max(0.0, float(score))),
                    left=min(xs),
                    top=min(ys),
                    bottom=max(ys),
                )
            )
        return [TextLine(text=b.text, confidence=b.confidence) for b in _reading_order(found)]


# -- helpers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Box:
    text: str
    confidence: float
    left: float
    top: float
    bottom: float

    @property
    def middle(self) -> float:
        return (self.top + self.bottom) / 2

    @property
    def height(self) -> float:
        return max(1.0, self.bottom - self.top)


def _reading_order(boxes: list[_Box]) -> list[_Box]:
    """Top to bottom, then left to right within a row. Boxes whose vertical middles are within
    half a line height of a row's first box belong to that row, which tolerates the slight
    rotation of a photographed label."""
    rows: list[list[_Box]] = []
    for box in sorted(boxes, key=lambda b: b.middle):
        if rows:
            anchor = rows[-1][0]
            if abs(box.middle - anchor.middle) <= 0.5 * min(box.height, anchor.height):
                rows[-1].append(box)
                continue
        rows.append([box])
    return [box for row in rows for box in sorted(row, key=lambda b: b.left)]


def _check_features(features: tuple[str, ...]) -> frozenset[str]:
    wanted = frozenset(features)
    unknown = wanted - _FEATURES
    if unknown:
        raise PermanentError(
            f"unknown image feature(s) {sorted(unknown)}; expected some of {sorted(_FEATURES)}",
            provider=_PROVIDER,
        )
    if not wanted:
        raise PermanentError("no image features requested", provider=_PROVIDER)
    if wanted == {"objects"}:
        raise UnsupportedError(
            "the local image analyzer has no object-detection model; "
            "it offers caption, tags, read and quality",
            provider=_PROVIDER,
        )
    return wanted


def _decode(data: bytes, media_type: str) -> Image.Image:
    kind = media_type.split(";", 1)[0].strip().lower()
    if kind in _FORMATS:
        # The declared format first, then the others: uploads are often mislabelled (a PNG
        # saved as .jpg) and the bytes, not the label, say what the image is.
        declared = _FORMATS[kind]
        formats = (declared, *(f for f in _ALL_FORMATS if f != declared))
    elif kind in _SNIFF:
        formats = _ALL_FORMATS
    else:
        raise PermanentError(
            f"unsupported image media type {media_type!r}; expected one of {sorted(_FORMATS)}",
            provider=_PROVIDER,
        )
    if not data:
        raise PermanentError("the image is empty (0 bytes)", provider=_PROVIDER)
    try:
        opened = Image.open(io.BytesIO(data), formats=list(formats))
        width, height = opened.size
        if width * height > _MAX_PIXELS:
            raise PermanentError(
                f"the image is {width}{_BY}{height}, more than {_MAX_PIXELS // 1_000_000} megapixels",
                provider=_PROVIDER,
            )
        opened.load()
        # Phone photos are often stored sideways with an EXIF orientation tag.
        image = ImageOps.exif_transpose(opened)
    except PermanentError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports truncated and corrupt files with any of these.
        raise PermanentError(
            f"could not decode the image ({media_type}; tried {', '.join(formats)}): {exc}",
            provider=_PROVIDER,
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning is only raised when warnings are errors (as under pytest).
        raise PermanentError(f"the image is too large: {exc}", provider=_PROVIDER) from exc
    if image.width == 0 or image.height == 0:
        raise PermanentError("the image has no pixels", provider=_PROVIDER)
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white (how such images are viewed, and what OCR expects)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _measure(rgb: Image.Image, limits: QualityThresholds) -> _Measured:
    np = _numpy()
    pixels = np.asarray(rgb, dtype=np.float32)
    # ITU-R BT.601 luma, the weights Pillow's "L" conversion uses.
    luma = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    brightness = float(luma.mean()) / 255.0
    contrast = float(luma.std()) / 255.0

    small = rgb
    if max(rgb.size) > _SHARPNESS_SIDE:
        small = rgb.copy()
        small.thumbnail((_SHARPNESS_SIDE, _SHARPNESS_SIDE), Image.Resampling.LANCZOS)
    grey = np.asarray(small.convert("L"), dtype=np.float32)
    sharpness = _laplacian_variance(grey)

    # Channels that agree everywhere (within JPEG noise) mean a black-and-white picture.
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    greyscale = float(spread.mean()) < 2.0

    width, height = rgb.size
    issues: list[str] = []
    if width * height < limits.min_pixels:
        issues.append("too small")
    if brightness < limits.min_brightness:
        issues.append("too dark")
    elif brightness > limits.max_brightness and contrast < limits.washed_out_contrast:
        issues.append("too bright")
    if contrast < limits.min_contrast:
        issues.append("low contrast")
    if sharpness < limits.min_sharpness:
        issues.append("blurry")
    quality = ImageQuality(
        width=width,
        height=height,
        brightness=round(min(1.0, max(0.0, brightness)), 4),
        contrast=round(min(1.0, max(0.0, contrast)), 4),
        sharpness=round(sharpness, 2),
        acceptable=not issues,
        issues=tuple(issues),
    )
    return _Measured(quality=quality, greyscale=greyscale)


def _laplacian_variance(grey: NDArray[np.float32]) -> float:
    """Variance of the 4-neighbour Laplacian (the kernel of OpenCV's ``Laplacian`` with
    ksize=1) over the interior pixels."""
    if grey.shape[0] < 3 or grey.shape[1] < 3:
        return 0.0
    lap = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    return float(lap.var())


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise UnsupportedError(
            f"local image analysis needs numpy: {_INSTALL_HINT}", provider=_PROVIDER
        ) from exc
    return numpy


def _caption(measured: _Measured, lines: list[TextLine] | None) -> str:
    """A sentence made only of measurements: size, orientation, colour, the quality issues and
    how many lines of text OCR read (when it ran)."""
    q = measured.quality
    if q.width > q.height:
        shape = "landscape"
    elif q.width < q.height:
        shape = "portrait"
    else:
        shape = "square"
    colour = "greyscale" if measured.greyscale else "colour"
    caption = f"A {q.width}{_BY}{q.height} {shape} {colour} image"
    if q.issues:
        caption += f" ({', '.join(q.issues)})"
    if lines is not None:
        if lines:
            noun = "line" if len(lines) == 1 else "lines"
            caption += f" containing {len(lines)} {noun} of text"
        else:
            caption += " with no readable text"
    return caption + "."


def _tags(measured: _Measured, lines: list[TextLine] | None) -> tuple[str, ...]:
    """Tags for measured facts only: text found, several lines (a document), greyscale, and
    each quality issue."""
    tags: list[str] = []
    if lines:
        tags.append("text")
        if len(lines) >= _DOCUMENT_MIN_LINES:
            tags.append("document")
    if measured.greyscale:
        tags.append("greyscale")
    tags.extend(issue.replace("too ", "").replace(" ", "-") for issue in measured.quality.issues)
    return tuple(tags)
