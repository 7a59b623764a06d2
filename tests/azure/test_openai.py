"""OpenAIResponder and the image generators through the openai SDK (AsyncAzureOpenAI and
AsyncOpenAI) against the loopback fake."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import SecretStr

from actors.blobstore import FileBlobStore
from actors.capabilities import ImageGenerator, Responder, ResponseQuery
from actors.errors import AuthError, PermanentError, ThrottledError, TransientError
from actors.providers.local.knowledge import KnowledgeBase
from actors.providers.openai_compat import (
    DEFAULT_SYSTEM_PROMPT,
    AzureImageGenerator,
    OpenAIConnection,
    OpenAIImageGenerator,
    OpenAIResponder,
    save_generated_image,
)
from actors.ratelimit import RateLimitInfo, collecting
from actors.throttle import LocalRateLimiter, Quota, ThrottledProvider
from events.common import ProviderInfo
from events.support import ImageFindings
from tests.azure.conftest import KEY
from tests.azure_fakes import Failure, FakeAzure, content_filter, drop, server_error, throttle

pytestmark = pytest.mark.azure

QUERY = ResponseQuery(
    message="My coffee machine arrived broken and damaged, the box was crushed.",
    customer_name="María",
    images=(ImageFindings(description="a label on a box", ocr_text="PEDIDO ORD-2024-58317\nHecho en UE"),),
)


def azure_connection(fake: FakeAzure, **kw: object) -> OpenAIConnection:
    return OpenAIConnection("azure", fake.url, SecretStr(KEY), "2024-10-21", **kw)  # type: ignore[arg-type]


@pytest.fixture
async def responder(fake: FakeAzure, kb: KnowledgeBase) -> AsyncIterator[OpenAIResponder]:
    r = OpenAIResponder(azure_connection(fake), "gpt-4o-mini", kb, min_score=0.1)
    yield r
    await r.aclose()


class TestAzureResponder:
    async def test_grounded_chat_completion(self, fake: FakeAzure, responder: OpenAIResponder) -> None:
        """Articles retrieved from the knowledge base go into the prompt and into ``sources``;
        token usage comes from the response."""
        fake.chat_reply = "Hello María, we are sorry your coffee machine arrived damaged."
        draft = await responder.respond(QUERY)
        assert isinstance(responder, Responder)
        assert draft.text == "Hello María, we are sorry your coffee machine arrived damaged."
        assert draft.provider.name == "azure-openai"
        assert draft.provider.model == "gpt-4o-mini"
        assert draft.sources[0].id == "KB-004"  # "Item arrived damaged or broken"
        assert 0 < draft.confidence <= 1
        [req] = fake.received("chat")
        assert (req.method, req.path) == ("POST", "/openai/deployments/gpt-4o-mini/chat/completions")
        assert req.query == {"api-version": "2024-10-21"}
        assert req.headers["api-key"] == KEY
        assert "Authorization" not in req.headers
        body = req.json()
        assert body["model"] == "gpt-4o-mini"
        assert (body["temperature"], body["max_tokens"]) == (0.2, 800)
        system, grounding, user = body["messages"]
        assert system == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
        assert grounding["role"] == "system"
        for source in draft.sources:
            assert f"[{source.id}]" in grounding["content"]
        assert user["role"] == "user"
        assert "Customer name: María" in user["content"]
        assert QUERY.message in user["content"]
        assert "caption: a label on a box" in user["content"]
        assert "PEDIDO ORD-2024-58317 / Hecho en UE" in user["content"]
        assert "Write the reply in English." in user["content"]
        words = sum(len(m["content"].split()) for m in body["messages"])
        assert draft.usage.input_tokens == words
        assert draft.usage.output_tokens == len(draft.text.split())

    async def test_a_query_may_ask_for_another_deployment(
        self, fake: FakeAzure, responder: OpenAIResponder
    ) -> None:
        """A query's ``model`` (a cheaper deployment, under a budget) is the one called and the
        one the result names, so it is priced at that model; the next query uses its own."""
        draft = await responder.respond(dataclasses.replace(QUERY, model="gpt-35-turbo"))
        assert draft.provider == ProviderInfo(name="azure-openai", model="gpt-35-turbo")
        usual = await responder.respond(QUERY)
        assert usual.provider == ProviderInfo(name="azure-openai", model="gpt-4o-mini")
        cheap, own = fake.received("chat")
        assert cheap.path == "/openai/deployments/gpt-35-turbo/chat/completions"
        assert cheap.json()["model"] == "gpt-35-turbo"
        assert own.path == "/openai/deployments/gpt-4o-mini/chat/completions"

    async def test_no_matching_article_means_low_confidence(self, fake: FakeAzure, kb: KnowledgeBase) -> None:
        r = OpenAIResponder(azure_connection(fake), "gpt-4o-mini", kb, min_score=0.99)
        try:
            draft = await r.respond(ResponseQuery(message="What is your view on medieval poetry?"))
        finally:
            await r.aclose()
        assert draft.sources == ()
        assert draft.confidence <= 0.2
        grounding = fake.received("chat")[0].json()["messages"][1]["content"]
        assert "No knowledge-base article matches" in grounding

    async def test_entra_id_token_provider(self, fake: FakeAzure, kb: KnowledgeBase) -> None:
        async def token() -> str:
            return "entra-token"

        fake.tokens = ("entra-token",)
        r = OpenAIResponder(
            OpenAIConnection("azure", fake.url, None, "2024-10-21", token_provider=token),
            "gpt-4o-mini", kb,
        )
        try:
            await r.respond(QUERY)
        finally:
            await r.aclose()
        [req] = fake.received("chat")
        assert req.headers["Authorization"] == "Bearer entra-token"
        assert "api-key" not in req.headers


class TestOpenAICompatible:
    async def test_base_url_and_bearer_key(self, fake: FakeAzure, kb: KnowledgeBase) -> None:
        r = OpenAIResponder(
            OpenAIConnection("openai", f"{fake.url}/v1", SecretStr(KEY)), "llama3.1:8b", kb,
            temperature=None, token_limit_param="max_completion_tokens", max_output_tokens=300,
        )
        try:
            draft = await r.respond(QUERY)
        finally:
            await r.aclose()
        assert draft.provider.name == "openai"
        assert draft.provider.model == "llama3.1:8b"
        [req] = fake.received("chat")
        assert req.path == "/v1/chat/completions"
        assert req.query == {}
        assert req.headers["Authorization"] == f"Bearer {KEY}"
        body = req.json()
        assert body["model"] == "llama3.1:8b"
        assert body["max_completion_tokens"] == 300
        assert "temperature" not in body
        assert "max_tokens" not in body


class TestErrors:
    async def test_429_is_throttled_with_retry_after_and_one_request(
        self, fake: FakeAzure, responder: OpenAIResponder
    ) -> None:
        fake.fail_next("chat", throttle("7"))
        with pytest.raises(ThrottledError) as caught:
            await responder.respond(QUERY)
        assert caught.value.retry_after == 7.0
        assert len(fake.received("chat")) == 1  # max_retries=0

    async def test_retry_after_ms_wins_and_is_capped(self, fake: FakeAzure, kb: KnowledgeBase) -> None:
        r = OpenAIResponder(azure_connection(fake, max_retry_after=2.0), "gpt-4o-mini", kb)
        fake.fail_next("chat", throttle("6", retry_after_ms="5520"))
        try:
            with pytest.raises(ThrottledError) as caught:
                await r.respond(QUERY)
        finally:
            await r.aclose()
        assert caught.value.retry_after == 2.0

    async def test_500_is_transient(self, fake: FakeAzure, responder: OpenAIResponder) -> None:
        fake.fail_next("chat", server_error(500))
        with pytest.raises(TransientError):
            await responder.respond(QUERY)
        assert len(fake.received("chat")) == 1

    async def test_content_filter_is_permanent(self, fake: FakeAzure, responder: OpenAIResponder) -> None:
        fake.fail_next("chat", content_filter())
        with pytest.raises(PermanentError, match="content filter") as caught:
            await responder.respond(QUERY)
        assert not caught.value.retryable
        assert type(caught.value) is PermanentError

    async def test_filtered_completion_is_permanent(
        self, fake: FakeAzure, responder: OpenAIResponder
    ) -> None:
        fake.finish_reason = "content_filter"
        fake.chat_reply = ""
        with pytest.raises(PermanentError, match="content_filter"):
            await responder.respond(QUERY)

    async def test_dropped_connection_is_transient(self, fake: FakeAzure, responder: OpenAIResponder) -> None:
        fake.fail_next("chat", drop())
        with pytest.raises(TransientError, match="connection"):
            await responder.respond(QUERY)
        assert len(fake.received("chat")) == 1

    async def test_wrong_key_is_auth(self, fake: FakeAzure, kb: KnowledgeBase) -> None:
        r = OpenAIResponder(
            OpenAIConnection("azure", fake.url, SecretStr("wrong"), "2024-10-21"), "gpt-4o-mini", kb
        )
        try:
            with pytest.raises(AuthError, match="401"):
                await r.respond(QUERY)
        finally:
            await r.aclose()


class TestImages:
    async def test_azure_image_generation_saved_to_blobs(self, fake: FakeAzure, tmp_path: Path) -> None:
        g = AzureImageGenerator(fake.url, "dall-e-3", api_key=KEY)
        try:
            assert isinstance(g, ImageGenerator)
            image = await g.generate("a coffee machine on a kitchen table")
        finally:
            await g.aclose()
        assert image.data == fake.image_bytes
        assert image.media_type == "image/png"
        assert image.revised_prompt == "A picture of a coffee machine on a kitchen table"
        assert image.usage.images == 1
        # priced by size and quality: the deployment's size, DALL-E's default quality
        assert (image.usage.image_size, image.usage.image_quality) == ("1024x1024", "standard")
        assert image.provider.name == "azure-openai"
        assert image.provider.model == "dall-e-3"
        [req] = fake.received("images")
        assert req.path == "/openai/deployments/dall-e-3/images/generations"
        assert req.query == {"api-version": "2024-10-21"}
        assert req.headers["api-key"] == KEY
        assert req.json() == {
            "prompt": "a coffee machine on a kitchen table", "model": "dall-e-3", "n": 1,
            "size": "1024x1024", "response_format": "b64_json",
        }
        ref = await save_generated_image(FileBlobStore(tmp_path), image)
        assert ref.media_type == "image/png"
        assert ref.size == len(image.data)
        assert ref.filename == "generated.png"

    async def test_openai_image_generation(self, fake: FakeAzure) -> None:
        g = OpenAIImageGenerator(f"{fake.url}/v1", "gpt-image-1", api_key=KEY, send_response_format=False)
        try:
            image = await g.generate("a label", size="512x512")
        finally:
            await g.aclose()
        assert image.provider.name == "openai"
        assert (image.usage.image_size, image.usage.image_quality) == ("512x512", None)
        [req] = fake.received("images")
        assert req.path == "/v1/images/generations"
        assert req.json() == {"prompt": "a label", "model": "gpt-image-1", "n": 1, "size": "512x512"}

    async def test_hd_quality_is_in_the_usage(self, fake: FakeAzure) -> None:
        """An HD deployment's images say so, and are priced as HD by the default table."""
        from events.common import ProviderInfo
        from saga.cost import PriceTable

        g = AzureImageGenerator(fake.url, "dall-e-3", api_key=KEY, size="1792x1024", quality="hd")
        try:
            image = await g.generate("a wide label")
        finally:
            await g.aclose()
        assert (image.usage.image_size, image.usage.image_quality) == ("1792x1024", "hd")
        dalle = ProviderInfo(name="azure-openai", model="dall-e-3")
        assert PriceTable().cost(dalle, image.usage) == Decimal("0.12")

    async def test_content_filter_is_permanent(self, fake: FakeAzure) -> None:
        g = AzureImageGenerator(fake.url, "dall-e-3", api_key=KEY)
        fake.fail_next("images", content_filter())
        try:
            with pytest.raises(PermanentError, match="content filter"):
                await g.generate("something")
        finally:
            await g.aclose()


class TestRateLimitHeaders:
    """The ``x-ratelimit-*`` headers, read through the SDK's raw responses, reach the
    throttle: a service that says nothing is left until a reset is not asked before it."""

    EXHAUSTED = {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "149000",
        "x-ratelimit-reset-requests": "800ms", "x-ratelimit-reset-tokens": "1s",
    }

    async def test_the_fake_keeps_its_word(self, fake: FakeAzure, responder: OpenAIResponder) -> None:
        """Without a throttle the second call comes too early and gets the 429."""
        fake.rate_limit_next("chat", self.EXHAUSTED)
        await responder.respond(QUERY)
        with pytest.raises(ThrottledError):
            await responder.respond(QUERY)
        assert fake.rejected["chat"] == 1

    async def test_remaining_zero_waits_for_the_reset_instead_of_a_429(
        self, fake: FakeAzure, responder: OpenAIResponder
    ) -> None:
        fake.rate_limit_next("chat", self.EXHAUSTED)
        wrapped = ThrottledProvider(responder, LocalRateLimiter(Quota()), deployment="gpt-4o-mini",
                                    max_wait=5)
        first = await wrapped.respond(QUERY)
        started = time.monotonic()
        second = await wrapped.respond(QUERY)
        waited = time.monotonic() - started
        assert second.text == first.text
        assert waited >= 0.75
        assert fake.rejected["chat"] == 0  # never asked before the reset
        assert len(fake.received("chat")) == 2
        assert (wrapped.stats.throttled, wrapped.stats.observed) == (0, 1)

    async def test_a_429_carries_its_headers(self, fake: FakeAzure, responder: OpenAIResponder) -> None:
        fake.fail_next("chat", Failure(429, {"error": {"code": "429", "message": "slow down"}}, {
            "Retry-After": "2", "retry-after-ms": "1500", "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "3s",
        }))
        with pytest.raises(ThrottledError) as caught:
            await responder.respond(QUERY)
        assert caught.value.retry_after == 1.5
        assert caught.value.rate_limit == RateLimitInfo(
            remaining_requests=0, reset_requests=3.0, retry_after=1.5
        )

    async def test_image_generation_reports_too(self, fake: FakeAzure) -> None:
        g = AzureImageGenerator(fake.url, "dall-e-3", api_key=KEY)
        fake.rate_limit_next("images", {"x-ratelimit-remaining-requests": "4",
                                        "x-ratelimit-reset-requests": "6s"})
        try:
            with collecting() as seen:
                await g.generate("a coffee machine")
        finally:
            await g.aclose()
        assert seen == [RateLimitInfo(remaining_requests=4, reset_requests=6.0)]
