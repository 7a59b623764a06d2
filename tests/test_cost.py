"""Cost accounting: a versioned price table, the cost of each step and of each saga."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from events import BlobRef, ProviderInfo, ResponseReady, Usage
from saga.cost import Price, PriceTable
from service.testing import FakeService, make_inquiry

FAKE_PRICES = PriceTable(version="test-1", prices=(
    Price(provider="fake", model="fake-*", per_1k_input_tokens=Decimal("0.5"),
          per_1k_output_tokens=Decimal("1.5"), per_million_characters=Decimal(20),
          per_1k_transactions=Decimal(2)),
))


class TestPriceTable:
    def test_most_specific_entry_wins(self) -> None:
        """An exact model beats the longest wildcard, which beats a shorter one."""
        table = PriceTable(prices=(
            Price(provider="p", model="*", per_image=Decimal(1)),
            Price(provider="p", model="gpt-4o*", per_image=Decimal(2)),
            Price(provider="p", model="gpt-4o-mini", per_image=Decimal(3)),
        ))
        one = Usage(images=1)
        assert table.cost(ProviderInfo(name="p", model="gpt-4o-mini"), one) == 3
        assert table.cost(ProviderInfo(name="p", model="gpt-4o-2024"), one) == 2
        assert table.cost(ProviderInfo(name="p", model="other"), one) == 1
        assert table.cost(ProviderInfo(name="local"), one) == 0

    def test_units(self) -> None:
        """Tokens per 1k, characters per million, transactions per 1k, images and seconds."""
        price = Price(provider="p", per_1k_input_tokens=Decimal("0.15"),
                      per_1k_output_tokens=Decimal("0.6"), per_million_characters=Decimal(10),
                      per_image=Decimal("0.04"), per_1k_transactions=Decimal(1),
                      per_audio_second=Decimal("0.001"))
        usage = Usage(input_tokens=2000, output_tokens=500, characters=250_000, images=2,
                      transactions=3, audio_seconds=1.5)
        assert price.cost(usage) == (Decimal("0.3") + Decimal("0.3") + Decimal("2.5")
                                     + Decimal("0.08") + Decimal("0.003") + Decimal("0.0015"))


class TestSagaCost:
    async def test_exact_cost_per_step_and_saga(self, tmp_path: Path) -> None:
        """The support workflow on fakes with a known price table: each step's cost and the
        saga's total are exact, on the terminal event with the table's version."""
        async with FakeService(tmp_path, pricing=FAKE_PRICES) as svc:
            svc.fakes.language.language = "es"
            image: BlobRef = await svc.blobs.put(b"img", "image/png")
            message = "Mi pedido llegó roto"  # 20 characters, 4 words
            await svc.submit(make_inquiry(message=message, attachments=(image,),
                                          voice_reply=True))
            done = await svc.wait("inq-1", timeout=10)
        assert isinstance(done.data, ResponseReady)
        cost = done.data.cost
        assert cost is not None
        assert cost.price_table == "test-1"
        per_char = Decimal(20) / 1_000_000
        english = "[es>en] " + message
        reply = "Re: " + english
        spanish = "[en>es] " + reply
        expected = {
            "analyze_image[0]": Decimal(2) / 1000,
            "detect_language": per_char * len(message),
            "translate_in": per_char * len(message),
            "respond": (Decimal("0.5") * len(english.split()) + Decimal("1.5") * len(reply.split()))
            / 1000,
            "translate_out": per_char * len(reply),
            "synthesize_voice": per_char * len(spanish),
        }
        assert cost.by_step == expected
        assert cost.total == sum(expected.values())

    async def test_fallback_costs_nothing(self, tmp_path: Path) -> None:
        """A step that fell back was not paid for."""
        from actors.providers.fake import permanent

        async with FakeService(tmp_path, pricing=FAKE_PRICES) as svc:
            svc.fakes.responder.behaviour.fail_always(permanent())
            await svc.submit(make_inquiry(language="en"))
            done = await svc.wait("inq-1", timeout=10)
        assert isinstance(done.data, ResponseReady)
        assert done.data.cost is not None
        assert done.data.cost.by_step == {}
        assert done.data.cost.total == 0


class TestImagePrices:
    def test_images_are_priced_by_size_and_quality(self) -> None:
        """The most specific of size/quality, size, */quality wins; per_image for the rest."""
        price = Price(provider="p", per_image=Decimal("0.04"), per_image_by={
            "1024x1792/hd": Decimal("0.12"), "1024x1792": Decimal("0.08"),
            "*/hd": Decimal("0.09"),
        })

        def cost(size: str | None, quality: str | None, images: int = 1) -> Decimal:
            return price.cost(Usage(images=images, image_size=size, image_quality=quality))

        assert cost("1024x1792", "hd", 2) == Decimal("0.24")
        assert cost("1024x1792", "standard") == Decimal("0.08")
        assert cost("1024x1024", "hd") == Decimal("0.09")
        assert cost("1024x1024", "standard") == Decimal("0.04")
        assert cost(None, None) == Decimal("0.04")

    def test_default_table_prices_dalle_3_by_size_and_quality(self) -> None:
        """The list prices of DALL-E 3: 0.04 square standard, 0.08 wide or HD, 0.12 both."""
        table = PriceTable()
        dalle = ProviderInfo(name="azure-openai", model="dall-e-3")

        def cost(size: str, quality: str) -> Decimal:
            return table.cost(dalle, Usage(images=1, image_size=size, image_quality=quality))

        assert cost("1024x1024", "standard") == Decimal("0.04")
        assert cost("1792x1024", "standard") == cost("1024x1024", "hd") == Decimal("0.08")
        assert cost("1024x1792", "hd") == Decimal("0.12")

    def test_the_image_estimate_is_of_the_size_asked_for(self) -> None:
        """A wide image request is estimated at the wide price (at standard quality)."""
        from events.campaign import GenerateImageRequested
        from saga.budget import CostControl

        control = CostControl(estimate_with={"imagegen": "azure-openai/dall-e-3"})
        wide = GenerateImageRequested(prompt="a bottle", size="1792x1024")
        assert control.estimate("imagegen", wide) == Decimal("0.08")
        square = GenerateImageRequested(prompt="a bottle")
        assert control.estimate("imagegen", square) == Decimal("0.04")
