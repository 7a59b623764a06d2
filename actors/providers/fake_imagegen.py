"""A programmable fake image generator (tests and benchmarks; never chosen by default).

Its PNG is tiny (32 x 32): vertical stripes of the requested colours (grey when none), with
the request's text stored in a PNG text chunk, so equal requests give equal bytes and
different requests different bytes. Failures, latency and hangs come from
:class:`~actors.providers.fake.FakeBehaviour`; ``hold`` additionally keeps answers back until
``release()`` (to test what happens to work that finishes after its saga ended); it can be
limited to the cards of one language.
"""

from __future__ import annotations

import asyncio
import io
import json

from PIL import Image, PngImagePlugin

from actors.capabilities import GeneratedImage
from actors.creative import CardSpec
from actors.providers.fake import FAKE, FakeBehaviour
from events.common import Usage

_SIDE = 32


class FakeImageGenerator:
    def __init__(self) -> None:
        self.behaviour = FakeBehaviour()
        self._hold: asyncio.Event | None = None
        self._hold_language: str | None = None
        self.held = 0

    def hold(self, language: str | None = None) -> None:
        """From now on, answers (for cards in ``language`` only, if given) wait until
        :meth:`release`; they count as hanging."""
        self._hold = asyncio.Event()
        self._hold_language = language

    def release(self) -> None:
        if self._hold is not None:
            self._hold.set()
            self._hold = None

    async def generate(self, prompt: str, *, size: str | None = None) -> GeneratedImage:
        await self.behaviour.before("generate", prompt, size)
        return await self._answer(("#808080",), {"prompt": prompt, "size": size}, None)

    async def render_card(self, spec: CardSpec) -> GeneratedImage:
        await self.behaviour.before("render_card", spec.kind, spec.language, spec.title, spec.text)
        fields: dict[str, object] = {
            "kind": spec.kind, "title": spec.title, "text": spec.text, "logo": spec.logo_text,
            "language": spec.language, "variant": spec.variant, "reference": spec.reference,
            "highlight": spec.highlight,
        }
        return await self._answer(spec.colours or ("#808080",), fields, spec.language)

    async def _answer(
        self, colours: tuple[str, ...], fields: dict[str, object], language: str | None
    ) -> GeneratedImage:
        gate = self._hold
        if gate is not None and self._hold_language in (None, language):
            self.held += 1
            self.behaviour.hanging += 1
            try:
                await gate.wait()
            finally:
                self.held -= 1
                self.behaviour.hanging -= 1
        return GeneratedImage(
            data=stripes(colours, json.dumps(fields, sort_keys=True)), media_type="image/png",
            provider=FAKE, usage=Usage(images=1),
        )


def stripes(colours: tuple[str, ...], text: str) -> bytes:
    image = Image.new("RGB", (_SIDE, _SIDE))
    width = max(1, _SIDE // len(colours))
    for i, colour in enumerate(colours):
        value = colour.lstrip("#")
        rgb = (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))
        image.paste(rgb, (i * width, 0, _SIDE if i == len(colours) - 1 else (i + 1) * width, _SIDE))
    info = PngImagePlugin.PngInfo()
    info.add_text("request", text)
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()
