"""Generate the example images in ``examples/images/`` (deterministic: fixed seeds).

    .venv/bin/python examples/make_images.py

Three photo-like scenes for the customer-support workflow:

* ``product_label_es.png``: a shipping label for a Spanish customer, rotated 1.5° and lying on
  corrugated cardboard, with order number ORD-2024-58317 and a barcode-like stripe.
* ``damaged_box.png``: a kraft box with a dent and a tear, labelled ORD-2024-61042.
* ``blurry_receipt.png``: a dark, out-of-focus receipt, for the image-quality check.

Saved as 256-colour palette PNGs to keep the repository small. Needs Pillow and numpy
(``pip install 'ai-apps[local]'``) and the DejaVu fonts (Debian ``fonts-dejavu-core``).
The tests use the committed PNGs and read them with the local OCR; a re-run with other Pillow
or FreeType versions may shift a few pixels, so run those tests again after regenerating.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
OUT_DIR = Path(__file__).resolve().parent / "images"
SEED = 20241203

Color = tuple[int, int, int]
Array = NDArray[np.float32]


def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / name), size)


def to_image(array: Array) -> Image.Image:
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")


def smooth_noise(rng: np.random.Generator, width: int, height: int, cell: int) -> Array:
    """Low-frequency noise in [-1, 1]: random values on a coarse grid, bicubically enlarged.
    Gives blotchy lighting without the per-pixel noise that bloats a PNG."""
    coarse = rng.uniform(0, 255, (height // cell + 2, width // cell + 2)).astype(np.uint8)
    big = Image.fromarray(coarse, "L").resize(
        (coarse.shape[1] * cell, coarse.shape[0] * cell), Image.Resampling.BICUBIC
    )
    return np.asarray(big, dtype=np.float32)[:height, :width] / 127.5 - 1.0


def grain(rng: np.random.Generator, width: int, height: int, amount: float) -> Array:
    """Per-pixel sensor noise, kept small: it is what makes the scene look photographed."""
    return rng.normal(0.0, amount, (height, width, 1)).astype(np.float32)


def lighting(width: int, height: int, strength: float) -> Array:
    """A vignette with a light source at the top left, as a multiplier per pixel."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx = (xs - width * 0.4) / width
    dy = (ys - height * 0.35) / height
    falloff: Array = (1.0 - strength * np.sqrt(dx * dx + dy * dy)).astype(np.float32)
    return falloff[..., None]


def barcode(draw: ImageDraw.ImageDraw, rnd: random.Random, box: tuple[int, int, int, int]) -> None:
    """Bars of random width: looks like a barcode, encodes nothing."""
    x0, y0, x1, y1 = box
    x = x0
    while x < x1 - 4:
        width = rnd.choice((1, 2, 2, 3, 4))
        if rnd.random() < 0.55:
            draw.rectangle((x, y0, x + width - 1, y1), fill=(20, 20, 20))
        x += width + rnd.choice((1, 2, 2, 3))


def paste_rotated(
    scene: Image.Image, card: Image.Image, angle: float, at: tuple[int, int], shadow: int = 14
) -> None:
    """Rotates ``card`` by ``angle`` degrees and lays it on ``scene`` with a soft drop shadow."""
    mask = Image.new("L", card.size, 255)
    card_r = card.rotate(angle, Image.Resampling.BICUBIC, expand=True, fillcolor=(0, 0, 0))
    mask_r = mask.rotate(angle, Image.Resampling.BICUBIC, expand=True)
    shade = mask_r.filter(ImageFilter.GaussianBlur(shadow / 2))
    dark = Image.new("RGB", card_r.size, (0, 0, 0))
    sx, sy = at[0] + shadow // 2, at[1] + shadow
    shadow_alpha = shade.point(lambda v: v * 110 // 255)
    scene.paste(dark, (sx, sy), shadow_alpha)
    scene.paste(card_r, at, mask_r)


def cardboard(rng: np.random.Generator, width: int, height: int, base: Color) -> Array:
    """Kraft cardboard: flutes (soft stripes), blotches and grain."""
    ys = np.arange(height, dtype=np.float32)[:, None, None]
    flutes = 6.0 * np.sin(ys * 2 * np.pi / 9.0)
    blotch = 14.0 * smooth_noise(rng, width, height, 48)[..., None]
    fibre = 5.0 * smooth_noise(rng, width, height, 6)[..., None]
    rgb = np.array(base, dtype=np.float32)[None, None, :]
    texture: Array = (rgb + flutes + blotch + fibre).astype(np.float32)
    return texture


def finish(image: Image.Image, blur: float) -> Image.Image:
    """The camera: light fall-off and a little defocus. (No sensor grain on the sharp scenes:
    per-pixel noise would triple the PNG size for no gain in realism at this resolution.)"""
    array = np.asarray(image, dtype=np.float32)
    h, w = array.shape[:2]
    array = array * lighting(w, h, 0.35)
    return to_image(array).filter(ImageFilter.GaussianBlur(blur))


def product_label(rng: np.random.Generator, rnd: random.Random) -> Image.Image:
    width, height = 960, 720
    scene = to_image(cardboard(rng, width, height, (176, 134, 88)))

    card = Image.new("RGB", (640, 470), (246, 244, 238))
    d = ImageDraw.Draw(card)
    d.rectangle((0, 0, 639, 469), outline=(60, 60, 60), width=3)
    d.rectangle((0, 0, 639, 54), fill=(25, 25, 25))
    d.text((20, 10), "ENVÍO / SHIPPING", font=font("DejaVuSans-Bold.ttf", 28), fill=(245, 245, 245))
    d.text((430, 14), "1 / 1", font=font("DejaVuSans-Bold.ttf", 24), fill=(245, 245, 245))
    d.text(
        (20, 72),
        "PEDIDO / ORDER: ORD-2024-58317",
        font=font("DejaVuSans-Bold.ttf", 30),
        fill=(15, 15, 15),
    )
    body = font("DejaVuSans.ttf", 24)
    d.text((20, 120), "Producto: Cafetera Espresso X200", font=body, fill=(25, 25, 25))
    d.text((20, 156), "Cantidad: 1     Peso: 2,4 kg", font=body, fill=(25, 25, 25))
    d.line((20, 198, 620, 198), fill=(80, 80, 80), width=2)
    d.text((20, 210), "Enviar a:", font=font("DejaVuSans-Bold.ttf", 24), fill=(25, 25, 25))
    d.text((20, 244), "María García", font=body, fill=(25, 25, 25))
    d.text((20, 278), "Calle Mayor 12", font=body, fill=(25, 25, 25))
    d.text((20, 312), "28013 Madrid, España", font=body, fill=(25, 25, 25))
    barcode(d, rnd, (20, 356, 420, 426))
    d.text((40, 432), "8 412345 583172", font=font("DejaVuSansMono.ttf", 22), fill=(25, 25, 25))
    d.rectangle((460, 356, 620, 452), outline=(25, 25, 25), width=2)
    d.text((478, 370), "MAD-03", font=font("DejaVuSans-Bold.ttf", 26), fill=(25, 25, 25))
    d.text((478, 410), "24h", font=font("DejaVuSans-Bold.ttf", 26), fill=(25, 25, 25))

    # Paper is never flat white under a lamp: a faint blotch keeps it photographic.
    paper = np.asarray(card, dtype=np.float32)
    paper += 4.0 * smooth_noise(rng, card.width, card.height, 80)[..., None]
    paste_rotated(scene, to_image(paper), angle=1.5, at=(150, 110))
    return finish(scene, blur=0.7)


def damaged_box(rng: np.random.Generator) -> Image.Image:
    width, height = 960, 720
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    floor = np.array((120, 124, 130), np.float32) * (0.75 + 0.35 * ys)
    floor = floor + 10.0 * smooth_noise(rng, width, height, 64)[..., None]
    scene = to_image(np.broadcast_to(floor, (height, width, 3)).copy())

    box = to_image(cardboard(rng, width, height, (186, 140, 92)))
    shade_top = to_image(cardboard(rng, width, height, (206, 162, 110)))
    shade_side = to_image(cardboard(rng, width, height, (140, 102, 64)))
    front = [(150, 250), (650, 250), (650, 640), (150, 640)]
    top = [(150, 250), (650, 250), (790, 150), (290, 150)]
    side = [(650, 250), (790, 150), (790, 520), (650, 640)]
    for face, texture in ((front, box), (top, shade_top), (side, shade_side)):
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).polygon(face, fill=255)
        scene.paste(texture, (0, 0), mask)
    d = ImageDraw.Draw(scene)
    # Packing tape across the top and down the front.
    d.polygon([(380, 250), (420, 250), (560, 150), (520, 150)], fill=(214, 190, 140))
    d.rectangle((380, 250, 420, 300), fill=(214, 190, 140))
    for face in (front, top, side):
        d.polygon(face, outline=(90, 62, 36), width=3)

    # Dent at the front top-right corner: a crushed, darker area with creases.
    dent = [(560, 250), (650, 250), (650, 360), (610, 330), (585, 300)]
    d.polygon(dent, fill=(128, 92, 58))
    for (x0, y0), (x1, y1) in (
        ((565, 255), (640, 345)),
        ((590, 252), (648, 300)),
        ((575, 280), (620, 335)),
    ):
        d.line((x0, y0, x1, y1), fill=(80, 55, 32), width=3)
        d.line((x0 + 3, y0, x1 + 3, y1), fill=(200, 160, 115), width=1)
    d.line((650, 250, 650, 360), fill=(70, 48, 28), width=5)

    # Tear on the side face: a dark hole with ragged, light fibre edges.
    rnd = random.Random(SEED + 1)
    centre_x, centre_y = 720, 380
    points = []
    for i in range(18):
        angle = 2 * np.pi * i / 18
        radius = rnd.uniform(22, 46)
        points.append((centre_x + radius * 0.7 * np.cos(angle), centre_y + radius * np.sin(angle)))
    d.polygon(points, fill=(40, 28, 18))
    d.line([*points, points[0]], fill=(225, 200, 160), width=3, joint="curve")
    d.line((700, 340, 690, 300), fill=(60, 42, 25), width=2)

    # The shipping label on the front face.
    label = Image.new("RGB", (380, 220), (244, 243, 236))
    ld = ImageDraw.Draw(label)
    ld.rectangle((0, 0, 379, 219), outline=(50, 50, 50), width=3)
    ld.text((16, 14), "ORD-2024-61042", font=font("DejaVuSans-Bold.ttf", 34), fill=(15, 15, 15))
    ld.text((16, 66), "FRÁGIL / FRAGILE", font=font("DejaVuSans-Bold.ttf", 24), fill=(170, 20, 20))
    ld.text((16, 104), "Cliente: Jorge Romero", font=font("DejaVuSans.ttf", 22), fill=(25, 25, 25))
    ld.text((16, 136), "Valencia, España", font=font("DejaVuSans.ttf", 22), fill=(25, 25, 25))
    barcode(ld, rnd, (16, 172, 360, 206))
    paste_rotated(scene, label, angle=-1.0, at=(190, 360), shadow=6)
    return finish(scene, blur=0.8)


def blurry_receipt(rng: np.random.Generator) -> Image.Image:
    width, height = 480, 720
    base = np.array((34, 30, 28), np.float32)
    table = base + 6.0 * smooth_noise(rng, width, height, 40)[..., None]
    scene = to_image(np.broadcast_to(table, (height, width, 3)).copy())

    paper = Image.new("RGB", (300, 560), (232, 230, 222))
    d = ImageDraw.Draw(paper)
    mono = font("DejaVuSansMono.ttf", 18)
    lines = [
        "   CAFÉ CENTRAL",
        " Ticket 0042  12/03",
        "",
        "Café con leche  2,40",
        "Tostada         3,10",
        "Zumo naranja    3,50",
        "Croissant       2,20",
        "Agua            1,30",
        "",
        "TOTAL          12,50",
        "IVA incl.",
        "",
        "  Gracias!",
    ]
    for i, text in enumerate(lines):
        d.text((18, 24 + 34 * i), text, font=mono, fill=(30, 30, 30))
    paste_rotated(scene, paper, angle=-4.0, at=(80, 70), shadow=10)

    # Underexposed and badly out of focus: what the quality check must reject.
    dark = ImageChops.multiply(scene, Image.new("RGB", scene.size, (80, 80, 80)))
    blurred = dark.filter(ImageFilter.GaussianBlur(6))
    array = np.asarray(blurred, dtype=np.float32) + grain(rng, width, height, 1.0)
    return to_image(array)


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    rnd = random.Random(SEED)
    images = {
        "product_label_es.png": product_label(rng, rnd),
        "damaged_box.png": damaged_box(rng),
        "blurry_receipt.png": blurry_receipt(rng),
    }
    for name, image in images.items():
        path = OUT_DIR / name
        # A 256-colour palette (median cut, no visible banding on these scenes) keeps each
        # file well under 300 KB; the OCR reads the text just as well.
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        print(
            f"{path.relative_to(OUT_DIR.parent.parent)}: {image.width}x{image.height}, "
            f"{path.stat().st_size // 1024} KB"
        )


if __name__ == "__main__":
    main()
