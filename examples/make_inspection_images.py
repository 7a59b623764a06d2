"""Generate the example product photos in ``examples/inspections/`` (deterministic: fixed seeds).

    .venv/bin/python examples/make_inspection_images.py [OUT_DIR]

A carton of "AQUA PURE 500 ML" water on a grey conveyor belt, photographed by a fixed
inspection camera:

* ``reference.jpg``: a good unit, 640 x 480 (a smaller camera: the inspection aligns by
  resizing).
* ``good.jpg``: another good unit, 960 x 720, a little brighter and with its own sensor noise.
* ``defective.jpg``: the same as ``good.jpg`` with a dark stain on the carton, inside
  :data:`DEFECT_BOX` (x, y, width, height in the 960 x 720 image).
* ``criteria.json``: the expected label text, the largest tolerated defect and the reference.

The tests call :func:`product_photo` to make the same images in a temporary folder. Needs
Pillow and numpy, and the DejaVu fonts (Debian ``fonts-dejavu-core``) for the label.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

OUT_DIR = Path(__file__).resolve().parent / "inspections"
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
LABEL_TEXT = "AQUA PURE 500 ML"
SIZE = (960, 720)
DEFECT_BOX = (588, 430, 96, 60)
"""Where the stain is in a 960 x 720 photo: x, y, width, height (the stain is an ellipse
inside it)."""
CRITERIA = {
    "expected_label_text": LABEL_TEXT,
    "max_defect_area": 0.002,
    "reference_image": "reference.jpg",
}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if FONT.is_file():
        return ImageFont.truetype(str(FONT), size)
    return ImageFont.load_default(size)


def product_photo(
    size: tuple[int, int] = SIZE, *, seed: int = 1, defect: bool = False, brightness: float = 1.0
) -> Image.Image:
    """The scene at ``size`` (all geometry is relative, so every size frames it alike)."""
    w, h = size
    sx, sy = w / SIZE[0], h / SIZE[1]
    scene = Image.new("RGB", size, (128, 130, 134))
    d = ImageDraw.Draw(scene)
    # the belt's slats
    for y in range(0, h, max(2, int(48 * sy))):
        d.line((0, y, w, y), fill=(112, 114, 118), width=max(1, int(4 * sy)))
    # the carton, its shaded side and its label
    d.rectangle((int(200 * sx), int(150 * sy), int(760 * sx), int(600 * sy)), fill=(96, 160, 214))
    d.polygon([(int(760 * sx), int(150 * sy)), (int(820 * sx), int(110 * sy)),
               (int(820 * sx), int(560 * sy)), (int(760 * sx), int(600 * sy))], fill=(70, 122, 170))
    d.rectangle((int(260 * sx), int(220 * sy), int(700 * sx), int(380 * sy)), fill=(248, 248, 244),
                outline=(30, 30, 30), width=max(1, int(3 * sx)))
    words, amount = LABEL_TEXT.rsplit(" ", 2)[0], " ".join(LABEL_TEXT.rsplit(" ", 2)[1:])
    d.text((int(480 * sx), int(270 * sy)), words, font=_font(int(58 * sy)), fill=(20, 40, 90), anchor="mm")
    d.text((int(480 * sx), int(338 * sy)), amount, font=_font(int(40 * sy)), fill=(20, 20, 20), anchor="mm")
    if defect:
        x, y, bw, bh = DEFECT_BOX
        d.ellipse((int(x * sx), int(y * sy), int((x + bw) * sx), int((y + bh) * sy)), fill=(58, 44, 30))
    scene = scene.filter(ImageFilter.GaussianBlur(0.8 * min(sx, sy)))
    rng = np.random.default_rng(seed)
    pixels = np.asarray(scene, dtype=np.float32) * brightness
    pixels += rng.normal(0.0, 3.0, (h, w, 1)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_examples(out: Path = OUT_DIR) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "reference": out / "reference.jpg",
        "good": out / "good.jpg",
        "defective": out / "defective.jpg",
        "criteria": out / "criteria.json",
    }
    # JPEG, as inspection cameras save them (and a tenth of the size of a noisy PNG)
    product_photo((640, 480), seed=7).save(files["reference"], quality=90)
    product_photo(seed=11, brightness=1.04).save(files["good"], quality=90)
    product_photo(seed=13, brightness=1.04, defect=True).save(files["defective"], quality=90)
    files["criteria"].write_text(json.dumps(CRITERIA, indent=2) + "\n")
    return files


if __name__ == "__main__":
    for name, path in write_examples(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR).items():
        print(f"{name}: {path}")
