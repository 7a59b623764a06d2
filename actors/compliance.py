"""Pure image checks: brand compliance of a generated visual, and product inspection against a
reference photo and an expected label text. No I/O and no providers: the actors read the blobs
and run OCR, then call these functions (in a worker thread: they are CPU-bound).

Brand compliance (:func:`brand_compliance`)
    ``palette``: every pixel of a 128 px copy is classed as neutral (white, grey, black), near a
    brand colour (red-mean RGB distance below ``tolerance``) or off-brand; the score is the
    on-brand share, scaled down when the brand colours cover less than ``min_presence`` of the
    image (an all-white card is not "on brand"). ``logo``: the wordmark's similarity to the best
    OCR line (1.0 when it is contained in the text read). ``forbidden_words``: 1.0 when none is
    read, else 0.0 and the overall score is capped at 0.5. The overall score weighs palette 0.5,
    logo 0.3 and forbidden words 0.2 (re-weighted when there is no logo to check).

Inspection (:func:`inspect_surface`, :func:`check_label`)
    The reference is aligned to the product photo by resizing both to the same analysis size
    (longest side 320 px), smoothed, and matched in brightness and contrast per channel; the
    per-pixel colour difference above ``difference_threshold`` is a candidate, nearby candidates
    are merged (one dilation) and grouped into 8-connected regions; regions smaller than
    ``min_region_area`` are noise. A region larger than ``max_defect_area`` is a major defect.
    Surface score: 1 - 0.2 r for r = largest region / max_defect_area up to 1, then falling
    0.4 per unit of r beyond, so a surface passes exactly when its score is at least 0.8.
    Only resizing aligns the two photos: they must be framed alike (a fixed inspection camera).
"""

from __future__ import annotations

import difflib
import io
import re
import unicodedata
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFilter, UnidentifiedImageError

from actors.errors import PermanentError, UnsupportedError
from events.campaign import Box, BrandGuidelines, ComplianceCheck
from events.quality import Defect, InspectionCheck, InspectionCriteria

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

RGB = tuple[int, int, int]

NEUTRAL_SPREAD = 28
"""A pixel whose channels differ by less than this is neutral (white, grey or black)."""
PASS_SCORE = 0.8
_ANALYSIS_SIDE = 320
_PALETTE_SIDE = 128
_MAX_PIXELS = 40_000_000


# -- shared helpers ---------------------------------------------------------------------------


def open_rgb(data: bytes) -> Image.Image:
    """Decode an image (any format Pillow reads) to RGB, transparency flattened onto white."""
    if not data:
        raise PermanentError("the image is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > _MAX_PIXELS:
            raise PermanentError(f"the image is {image.width}x{image.height}: too large")
        image.load()
    except PermanentError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PermanentError(f"could not decode the image: {exc}") from exc
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def normalise_text(text: str) -> str:
    """Case-, accent- and punctuation-blind form: ``"Éco-Café!"`` → ``"eco cafe"``."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w]+", " ", stripped).split())


def text_similarity(expected: str, lines: Sequence[str]) -> tuple[float, str]:
    """How well ``expected`` matches what was read: 1.0 when it is contained in the text;
    otherwise the best similarity ratio against any line or run of consecutive lines. Returns
    the score and the text it was matched against."""
    target = normalise_text(expected)
    if not target:
        return 1.0, ""
    pairs = [(normalise_text(line), line) for line in lines]
    pairs = [(norm, line) for norm, line in pairs if norm]
    clean = [norm for norm, _ in pairs]
    if target in " ".join(clean):
        return 1.0, expected
    best, seen = 0.0, ""
    for start in range(len(clean)):
        for end in range(start + 1, min(len(clean), start + 3) + 1):
            ratio = difflib.SequenceMatcher(None, target, " ".join(clean[start:end])).ratio()
            if ratio > best:
                best, seen = ratio, " ".join(line for _, line in pairs[start:end])
    return round(best, 4), seen


def hex_to_rgb(colour: str) -> RGB:
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def rgb_to_hex(rgb: Iterable[int]) -> str:
    r, g, b = rgb
    return f"#{r:02X}{g:02X}{b:02X}"


def colour_distance(a: RGB, b: RGB) -> float:
    """The "red-mean" weighted RGB distance: cheap and closer to perception than plain RGB
    (0 for equal colours, about 765 for black against white)."""
    rmean = (a[0] + b[0]) / 2
    dr, dg, db = a[0] - b[0], a[1] - b[1], a[2] - b[2]
    return float(((2 + rmean / 256) * dr * dr + 4 * dg * dg + (2 + (255 - rmean) / 256) * db * db) ** 0.5)


# -- brand compliance -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrandCompliance:
    score: float
    checks: tuple[ComplianceCheck, ...]
    issues: tuple[str, ...]
    dominant_colours: tuple[str, ...]


def dominant_colours(image: Image.Image, count: int = 5) -> list[tuple[str, float]]:
    """The most common colours (median cut on a small copy), with their share of the image."""
    small = image.convert("RGB")
    small.thumbnail((_PALETTE_SIDE, _PALETTE_SIDE))
    quantised = small.quantize(colors=count, method=Image.Quantize.MEDIANCUT)
    palette = quantised.getpalette() or []
    colours = quantised.getcolors() or []
    total = sum(n for n, _ in colours) or 1
    out = []
    for n, index in sorted(colours, key=lambda c: -c[0]):
        assert isinstance(index, int)
        out.append((rgb_to_hex(palette[index * 3: index * 3 + 3]), round(n / total, 4)))
    return out


def palette_check(
    image: Image.Image, brand: Sequence[str], *, tolerance: float = 90.0, min_presence: float = 0.10
) -> ComplianceCheck:
    small = image.convert("RGB")
    small.thumbnail((_PALETTE_SIDE, _PALETTE_SIDE))
    brand_rgb = [hex_to_rgb(c) for c in brand]
    counts: dict[RGB, int] = {}
    for n, pixel in small.getcolors(maxcolors=_PALETTE_SIDE * _PALETTE_SIDE) or []:
        assert isinstance(pixel, tuple)
        counts[(pixel[0], pixel[1], pixel[2])] = n
    total = sum(counts.values()) or 1
    neutral = near_brand = 0
    for pixel, n in counts.items():
        if min(colour_distance(pixel, b) for b in brand_rgb) < tolerance:
            near_brand += n
        elif max(pixel) - min(pixel) < NEUTRAL_SPREAD:
            neutral += n
    on_brand = (neutral + near_brand) / total
    presence = near_brand / total
    score = on_brand * min(1.0, presence / min_presence) if min_presence > 0 else on_brand
    detail = (f"{on_brand:.0%} of the image is brand colour or neutral; brand colours cover "
              f"{presence:.0%} (at least {min_presence:.0%} wanted)")
    return ComplianceCheck(name="palette", score=round(min(1.0, score), 4),
                           passed=score >= PASS_SCORE, detail=detail)


def logo_check(ocr_lines: Sequence[str], logo_text: str) -> ComplianceCheck:
    score, seen = text_similarity(logo_text, ocr_lines)
    if score >= 1.0:
        detail = f"the wordmark {logo_text!r} is legible"
    elif not ocr_lines:
        detail = f"no text was read; the wordmark {logo_text!r} is missing or illegible"
    else:
        detail = f"the wordmark {logo_text!r} is not legible (closest text read: {seen!r})"
    return ComplianceCheck(name="logo", score=score, passed=score >= PASS_SCORE, detail=detail)


def forbidden_words_check(ocr_lines: Sequence[str], words: Sequence[str]) -> ComplianceCheck:
    text = f" {normalise_text(' '.join(ocr_lines))} "
    found = [w for w in words if normalise_text(w) and f" {normalise_text(w)} " in text]
    if found:
        return ComplianceCheck(name="forbidden_words", score=0.0, passed=False,
                               detail=f"shows forbidden word(s): {', '.join(found)}")
    return ComplianceCheck(name="forbidden_words", score=1.0, passed=True,
                           detail=f"none of {len(words)} forbidden word(s) is shown")


def brand_compliance(image: Image.Image, ocr_lines: Sequence[str], brand: BrandGuidelines) -> BrandCompliance:
    """Score a visual against the brand guidelines (see the module docstring)."""
    checks = [palette_check(image, brand.colours)]
    weights = [0.5]
    if brand.logo_text:
        checks.append(logo_check(ocr_lines, brand.logo_text))
        weights.append(0.3)
    checks.append(forbidden_words_check(ocr_lines, brand.forbidden_words))
    weights.append(0.2)
    score = sum(c.score * w for c, w in zip(checks, weights, strict=True)) / sum(weights)
    if not checks[-1].passed:
        score = min(score, 0.5)
    issues = tuple(c.detail for c in checks if not c.passed)
    dominant = tuple(hex_ for hex_, share in dominant_colours(image) if share >= 0.02)
    return BrandCompliance(round(score, 4), tuple(checks), issues, dominant)


# -- product inspection -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Region:
    box: Box
    area_fraction: float
    darker: bool


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise UnsupportedError(
            "comparing with a reference image needs numpy: pip install 'ai-apps[local]'"
        ) from exc
    return numpy


def difference_regions(
    product: Image.Image, reference: Image.Image, criteria: InspectionCriteria
) -> list[Region]:
    """Regions where ``product`` differs from ``reference``, largest first, in the product
    image's pixel coordinates."""
    np = _numpy()
    width, height = product.size
    scale = min(1.0, _ANALYSIS_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    smooth = ImageFilter.GaussianBlur(1.0)
    a = np.asarray(product.resize(size, Image.Resampling.BILINEAR).filter(smooth), dtype=np.float32)
    b = np.asarray(reference.resize(size, Image.Resampling.BILINEAR).filter(smooth), dtype=np.float32)
    # the same product under a slightly different lamp: match brightness and contrast per channel
    for c in range(3):
        std_b = float(b[..., c].std())
        gain = float(a[..., c].std()) / std_b if std_b > 1.0 else 1.0
        b[..., c] = (b[..., c] - b[..., c].mean()) * min(max(gain, 0.8), 1.25) + a[..., c].mean()
    diff = np.abs(a - b).max(axis=2)
    mask = diff > criteria.difference_threshold
    if not mask.any():
        return []
    # opening (erode, then dilate) drops thin lines, which are edges a resize or a lens
    # shifted by a pixel, not defects; one more dilation joins a broken-up stain
    mask = _dilate(np, _erode(np, mask)) & mask
    if not mask.any():
        return []
    grown = _dilate(np, mask)
    signed = (a - b).mean(axis=2)
    pixels = size[0] * size[1]
    regions = []
    for ys, xs in _components(np, grown):
        core = mask[ys, xs]
        area = int(core.sum())
        if area == 0 or area / pixels < criteria.min_region_area:
            continue
        x0, x1 = int(xs.min()), int(xs.max()) + 1
        y0, y1 = int(ys.min()), int(ys.max()) + 1
        box = Box(
            x=min(width - 1, int(x0 / scale)), y=min(height - 1, int(y0 / scale)),
            width=max(1, min(width, round(x1 / scale)) - int(x0 / scale)),
            height=max(1, min(height, round(y1 / scale)) - int(y0 / scale)),
        )
        darker = float(signed[ys, xs][core].mean()) < 0
        regions.append(Region(box=box, area_fraction=round(area / pixels, 6), darker=darker))
    return sorted(regions, key=lambda r: -r.area_fraction)


def _dilate(np: Any, mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """One step of 3x3 dilation, so a scratch broken by noise stays one region."""
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def _erode(np: Any, mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """One step of 3x3 erosion (pixels off the edge count as unset)."""
    return ~_dilate(np, ~mask) & _inner(np, mask)


def _inner(np: Any, mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = True
    return inner  # type: ignore[no-any-return]


def _components(np: Any, mask: NDArray[np.bool_]) -> list[tuple[Any, Any]]:
    """8-connected regions of ``mask`` as (row indices, column indices), by breadth-first
    search over the set pixels only (the mask is at most 320 x 320)."""
    height, width = mask.shape
    seen = np.zeros_like(mask)
    found = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue = deque([(int(y0), int(x0))])
        ys, xs = [], []
        while queue:
            y, x = queue.popleft()
            ys.append(y)
            xs.append(x)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        found.append((np.array(ys), np.array(xs)))
    return found


def where(box: Box, width: int, height: int) -> str:
    """Words for a box's position: "at the lower right (x 610-670, y 405-445)"."""
    cx = (box.x + box.width / 2) / width
    cy = (box.y + box.height / 2) / height
    row = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else "middle"
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    place = "centre" if (row, col) == ("middle", "centre") else f"{row} {col}".replace("middle ", "")
    return (f"at the {place} (x {box.x}-{box.x + box.width}, y {box.y}-{box.y + box.height})")


def surface_score(largest: float, max_area: float) -> float:
    ratio = largest / max_area
    score = 1 - 0.2 * ratio if ratio <= 1 else 0.8 - 0.4 * (ratio - 1)
    return round(min(1.0, max(0.0, score)), 4)


def inspect_surface(
    product: Image.Image, reference: Image.Image, criteria: InspectionCriteria
) -> tuple[InspectionCheck, list[Defect]]:
    width, height = product.size
    regions = difference_regions(product, reference, criteria)
    defects = []
    for region in regions:
        major = region.area_fraction > criteria.max_defect_area
        kind = "dark mark" if region.darker else "light mark"
        defects.append(Defect(
            kind="surface", severity="major" if major else "minor", box=region.box,
            area_fraction=region.area_fraction,
            description=(f"{kind} covering {region.area_fraction:.2%} of the image "
                         f"{where(region.box, width, height)}"),
        ))
    largest = regions[0].area_fraction if regions else 0.0
    score = surface_score(largest, criteria.max_defect_area)
    if regions:
        detail = (f"{len(regions)} region(s) differ from the reference; the largest covers "
                  f"{largest:.2%} (at most {criteria.max_defect_area:.2%} tolerated)")
    else:
        detail = "no difference from the reference"
    return InspectionCheck(name="surface", score=score, passed=score >= PASS_SCORE, detail=detail), defects


def check_label(
    ocr_lines: Sequence[str], criteria: InspectionCriteria
) -> tuple[InspectionCheck, list[Defect]]:
    expected = criteria.expected_label_text or ""
    score, seen = text_similarity(expected, ocr_lines)
    passed = score >= criteria.label_match_threshold
    if not ocr_lines:
        detail = f"no label text could be read (expected {expected!r})"
    elif score >= 1.0:
        detail = f"the label reads {expected!r}"
    else:
        detail = f"the label reads {seen!r}, expected {expected!r} (similarity {score:.2f})"
    check = InspectionCheck(name="label", score=score, passed=passed, detail=detail)
    defects = [] if passed else [Defect(kind="label", severity="major", description=detail)]
    return check, defects
