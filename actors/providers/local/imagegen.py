"""Offline image generation: concept and instruction *cards* laid out with Pillow.

There is no offline image model small enough to ship, and a picture that pretends to be a
photograph or a diffusion render would be a lie. So this generator renders exactly what it is
given, as a clearly labelled card: the brand colours as a header band, accents and swatches,
the wordmark, a title and the body text wrapped to fit, and, for instruction cards, the
product photo with the region to fix marked in red. Every card carries a black footer
reading "CONCEPT CARD — generated offline, not a photograph" (or INSTRUCTION CARD), plus the
reference it was made for (the campaign and language, the inspection and defect).

Used through :class:`~actors.creative.CardRenderer` (structured fields) by the image actor,
and through the plain :class:`~actors.capabilities.ImageGenerator` protocol (a prompt) by
anything else, in which case the prompt is the body text.

Fonts: DejaVu (Debian ``fonts-dejavu-core``) when installed, which covers Latin, Greek and
Cyrillic; otherwise Pillow's built-in font.
"""

from __future__ import annotations

import asyncio
import io
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from actors.capabilities import GeneratedImage
from actors.creative import CardSpec
from actors.errors import PermanentError
from events.common import ProviderInfo, Usage

__all__ = ["LABELS", "CardImageGenerator"]

PROVIDER = ProviderInfo(name="local", model="card-renderer")
LABELS = {
    "concept": "CONCEPT CARD \N{EM DASH} generated offline, not a photograph",
    "instruction": "INSTRUCTION CARD \N{EM DASH} generated offline, not a photograph",
}
_DEFAULT_COLOURS = ("#1F4E79", "#F2A900")
_FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/dejavu"))
_MIN_SIDE, _MAX_SIDE = 256, 2048

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
RGB = tuple[int, int, int]


@lru_cache(maxsize=64)
def _font(size: int, bold: bool = False) -> Font:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in _FONT_DIRS:
        if (folder / name).is_file():
            return ImageFont.truetype(str(folder / name), size)
    return ImageFont.load_default(size)


def _rgb(colour: str) -> RGB:
    value = colour.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _ink_on(background: RGB) -> RGB:
    """Black or white, whichever reads better on ``background`` (relative luminance)."""
    r, g, b = (c / 255 for c in background)
    return (20, 20, 20) if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.55 else (255, 255, 255)


def _fit_lines(
    draw: ImageDraw.ImageDraw, text: str, width: int, height: int, start: int, bold: bool = False
) -> tuple[list[str], Font, int]:
    """The largest font size (down from ``start``) at which ``text`` fits the box."""
    size = start
    while True:
        font = _font(size, bold)
        step = int(size * 1.3)
        lines = _wrap_exact(draw, text, font, width)
        if len(lines) * step <= height or size <= 12:
            max_lines = max(1, height // step)
            if len(lines) > max_lines:
                lines = lines[:max_lines]
                lines[-1] = lines[-1].rstrip(" .,;") + "\N{HORIZONTAL ELLIPSIS}"
            return lines, font, step
        size = max(12, int(size * 0.88))


def _wrap_exact(draw: ImageDraw.ImageDraw, text: str, font: Font, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


class CardImageGenerator:
    """:class:`~actors.capabilities.ImageGenerator` and :class:`~actors.creative.CardRenderer`
    that renders labelled cards on this machine (see the module docstring)."""

    def __init__(self, *, default_size: str = "1024x1024") -> None:
        self.default_size = default_size

    async def generate(self, prompt: str, *, size: str | None = None) -> GeneratedImage:
        if not prompt.strip():
            raise PermanentError("the image prompt is empty", provider=PROVIDER.name)
        width, height = _size(size or self.default_size)
        spec = CardSpec(kind="concept", width=width, height=height, prompt=prompt, text=prompt)
        return await self.render_card(spec)

    async def render_card(self, spec: CardSpec) -> GeneratedImage:
        _size(f"{spec.width}x{spec.height}")
        data = await asyncio.to_thread(render, spec)
        return GeneratedImage(data=data, media_type="image/png", provider=PROVIDER,
                              usage=Usage(images=1))


def _size(size: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size.split("x"))
    except ValueError:
        raise PermanentError(f"image size {size!r} is not WIDTHxHEIGHT", provider="local") from None
    if not (_MIN_SIDE <= width <= _MAX_SIDE and _MIN_SIDE <= height <= _MAX_SIDE):
        raise PermanentError(
            f"image size {size!r}: each side must be {_MIN_SIDE}-{_MAX_SIDE} px", provider="local"
        )
    return width, height


def render(spec: CardSpec) -> bytes:
    """The card as PNG bytes."""
    colours = [_rgb(c) for c in (spec.colours or _DEFAULT_COLOURS)]
    primary = colours[0]
    accent = colours[1] if len(colours) > 1 else primary
    w, h = spec.width, spec.height
    unit = min(w, h) / 1024
    card = Image.new("RGB", (w, h), (250, 250, 248))
    draw = ImageDraw.Draw(card)
    margin = int(56 * unit)

    # the header band: the brand's main colour and its wordmark
    band = int(h * 0.16)
    draw.rectangle((0, 0, w, band), fill=primary)
    wordmark = spec.logo_text or ("Corrective action" if spec.kind == "instruction" else "")
    if wordmark:
        lines, font, _ = _fit_lines(draw, wordmark, w - 2 * margin, int(band * 0.7), int(band * 0.55), True)
        draw.text((margin, band // 2), lines[0], font=font, fill=_ink_on(primary), anchor="lm")

    footer = int(h * 0.07)
    body_top = band + int(40 * unit)
    body_bottom = h - footer - int(96 * unit)  # room for the swatches
    if spec.kind == "instruction" and spec.base_image is not None:
        body_top = _photo_panel(card, spec, body_top, margin, int((h - band - footer) * 0.5))
    else:
        _accents(draw, spec.variant, w, h, band, footer, accent, unit)

    # title and body, left aligned in the free area
    # concepts keep clear of the accent shapes on the right
    text_width = w - 2 * margin if spec.base_image is not None else w - margin - int(320 * unit)
    y = body_top
    if spec.title:
        big = 64 if spec.base_image is None else 40  # under a photo the instruction matters more
        lines, font, step = _fit_lines(draw, spec.title, text_width, int(150 * unit), int(big * unit), True)
        for line in lines:
            draw.text((margin, y), line, font=font, fill=(25, 25, 25))
            y += step
        y += int(16 * unit)
        draw.rectangle((margin, y, margin + int(120 * unit), y + max(3, int(8 * unit))), fill=accent)
        y += int(36 * unit)
    if spec.text:
        lines, font, step = _fit_lines(draw, spec.text, text_width, max(40, body_bottom - y), int(44 * unit))
        for line in lines:
            draw.text((margin, y), line, font=font, fill=(40, 40, 40))
            y += step

    # the palette as swatches
    sw = int(56 * unit)
    sy = h - footer - int(80 * unit)
    for i, colour in enumerate(colours):
        x = margin + i * (sw + int(14 * unit))
        draw.rectangle((x, sy, x + sw, sy + sw), fill=colour, outline=(60, 60, 60))
    if spec.language:
        draw.text((w - margin, sy + sw // 2), spec.language.upper(), font=_font(int(40 * unit), True),
                  fill=primary, anchor="rm")

    # the label that says what this is
    draw.rectangle((0, h - footer, w, h), fill=(0, 0, 0))
    label = LABELS.get(spec.kind, LABELS["concept"])
    lines, font, _ = _fit_lines(draw, label, w - 2 * margin, footer, int(footer * 0.36))
    draw.text((margin, h - footer // 2 - (int(footer * 0.14) if spec.reference else 0)), lines[0],
              font=font, fill=(255, 255, 255), anchor="lm")
    if spec.reference:
        draw.text((margin, h - int(footer * 0.22)), spec.reference[:120],
                  font=_font(max(10, int(footer * 0.22))), fill=(190, 190, 190), anchor="lm")

    out = io.BytesIO()
    card.save(out, "PNG", optimize=True)
    return out.getvalue()


def _accents(draw: ImageDraw.ImageDraw, variant: int, w: int, h: int, band: int, footer: int,
             accent: RGB, unit: float) -> None:
    """A simple geometric accent in the secondary colour; the variant picks the layout, so
    several concepts of one campaign differ."""
    right = w - int(40 * unit)
    match variant % 3:
        case 0:
            r = int(120 * unit)
            draw.ellipse((right - 2 * r, band + int(40 * unit), right, band + int(40 * unit) + 2 * r),
                         fill=accent)
        case 1:
            draw.rectangle((right - int(90 * unit), band, right, h - footer), fill=accent)
        case _:
            for i in range(4):
                y = band + int((60 + 70 * i) * unit)
                draw.rectangle((right - int(200 * unit) + i * int(40 * unit), y, right, y + int(30 * unit)),
                               fill=accent)


def _photo_panel(card: Image.Image, spec: CardSpec, top: int, margin: int, height: int) -> int:
    """Paste the product photo with the highlighted region outlined; returns the y below it."""
    assert spec.base_image is not None
    try:
        opened = Image.open(io.BytesIO(spec.base_image))
        opened.load()
        photo = ImageOps.exif_transpose(opened).convert("RGB")
    except Exception as exc:
        raise PermanentError(f"the image to show cannot be decoded: {exc}", provider="local") from exc
    scale = min((card.width - 2 * margin) / photo.width, height / photo.height)
    shown = photo.resize((max(1, int(photo.width * scale)), max(1, int(photo.height * scale))))
    card.paste(shown, (margin, top))
    draw = ImageDraw.Draw(card)
    draw.rectangle((margin, top, margin + shown.width, top + shown.height), outline=(60, 60, 60), width=2)
    if spec.highlight is not None:
        x, y, bw, bh = spec.highlight
        pad = 6
        box = (margin + int(x * scale) - pad, top + int(y * scale) - pad,
               margin + int((x + bw) * scale) + pad, top + int((y + bh) * scale) + pad)
        draw.rectangle(box, outline=(220, 0, 0), width=max(3, int(6 * card.width / 1024)))
    return top + shown.height + int(28 * card.width / 1024)
