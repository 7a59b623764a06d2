"""A loopback HTTP fake of the Azure AI REST APIs the adapters call, for the real SDK clients.

Routes (each answers like the real service, including its error bodies):

* Translator, API 2026-06-06 (azure-ai-translation-text 2.0.0): ``POST /translate``,
  ``GET /languages``;
* Image Analysis 4.0 (azure-ai-vision-imageanalysis 1.0.0):
  ``POST /computervision/imageanalysis:analyze``;
* Azure OpenAI: ``POST /openai/deployments/{dep}/chat/completions``,
  ``POST /openai/deployments/{dep}/images/generations``, ``GET /openai/models``;
* OpenAI-compatible: ``POST /v1/chat/completions``, ``POST /v1/images/generations``,
  ``GET /v1/models``;
* Speech voices list: ``GET /cognitiveservices/voices/list``.

Every request is recorded (:attr:`FakeAzure.requests`). :meth:`FakeAzure.fail_next` scripts
failures per route: 429 with ``Retry-After`` / ``retry-after-ms``, 5xx, Azure OpenAI's 400
``content_filter`` body, 401/403, or a dropped connection. :meth:`FakeAzure.rate_limit_next`
adds ``x-ratelimit-*`` headers to the next successful answers of a route, and the fake keeps
its word: after ``x-ratelimit-remaining-requests: 0`` with ``x-ratelimit-reset-requests``, a
request of that route before the reset gets a 429 (counted in :attr:`FakeAzure.rejected`).
With ``key`` set, a request without that key (``Ocp-Apim-Subscription-Key``, ``api-key`` or
``Authorization: Bearer``) gets the service's 401, as the real gateway does; ``tokens`` are
accepted bearer tokens (Entra ID).
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from PIL import Image

Route = Literal["translate", "languages", "analyze", "chat", "images", "models", "voices"]
ROUTES: tuple[Route, ...] = ("translate", "languages", "analyze", "chat", "images", "models", "voices")


@dataclass(frozen=True)
class Recorded:
    """One request the fake received."""

    route: Route
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Failure:
    """What a scripted request answers instead of success."""

    status: int = 500
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def throttle(retry_after: str | None = "7", retry_after_ms: str | None = None) -> Failure:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if retry_after_ms is not None:
        headers["retry-after-ms"] = retry_after_ms
    return Failure(
        429,
        {"error": {"code": "429", "message": "Requests to the operation have exceeded the rate "
                   f"limit of your current pricing tier. Please retry after {retry_after} seconds."}},
        headers,
    )


def _seconds(duration: str) -> float:
    """The fake's reading of a reset time: ``"750ms"``, ``"2s"`` or plain seconds."""
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    return float(duration.removesuffix("s"))


def server_error(status: int = 500) -> Failure:
    return Failure(status, {"error": {"code": "InternalServerError",
                                      "message": "The server had an error while processing your request."}})


def content_filter() -> Failure:
    """Azure OpenAI's 400 when the prompt trips the content filter (the real body's shape)."""
    return Failure(400, {"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
                   "management policy. Please modify your prompt and retry.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": False, "severity": "safe"},
                "jailbreak": {"filtered": False, "detected": False},
                "self_harm": {"filtered": False, "severity": "safe"},
                "sexual": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": True, "severity": "medium"},
            },
        },
    }})


def unauthorized() -> Failure:
    return Failure(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription "
                                   "key or wrong API endpoint. Make sure to provide a valid key for an "
                                   "active subscription and use a correct regional API endpoint for "
                                   "your resource."}})


def forbidden() -> Failure:
    return Failure(403, {"error": {"code": "403", "message": "Forbidden"}})


def drop() -> Failure:
    """Close the connection after reading the request, without answering."""
    return Failure(drop=True)


def bad_request(code: str | int, message: str, inner: str | None = None) -> Failure:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner is not None:
        error["innererror"] = {"code": inner, "message": message}
    return Failure(400, {"error": error})


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


_SPANISH_HINTS = ("ñ", "á", "é", "í", "ó", "ú", "¿", "¡", " el ", " la ", " que ", " y ", "hola")
_FRENCH_HINTS = ("ç", "è", "ê", " le ", " les ", " est ", "bonjour")


def guess_language(text: str) -> str:
    """The fake's language detection: good enough for test sentences."""
    lowered = f" {text.lower()} "
    if any(h in lowered for h in _SPANISH_HINTS):
        return "es"
    if any(h in lowered for h in _FRENCH_HINTS):
        return "fr"
    return "en"


class FakeAzure:
    """The fake server. ``async with FakeAzure(key="k") as fake: fake.url …``."""

    def __init__(self, *, key: str | None = None, tokens: tuple[str, ...] = ()) -> None:
        self.key = key
        self.tokens = tokens
        self.requests: list[Recorded] = []
        self._script: dict[Route, list[Failure]] = {r: [] for r in ROUTES}
        # canned content
        self.translations: dict[tuple[str, str], str] = {}
        self.languages = ("en", "es", "fr", "de", "it", "pt", "nl", "ca")
        self.caption = "a label on a cardboard box"
        self.caption_confidence = 0.83
        self.tags: list[tuple[str, float]] = [("text", 0.99), ("label", 0.91), ("box", 0.42)]
        self.objects: list[str] = ["box"]
        self.ocr_lines: list[str] = ["PEDIDO ORD-2024-58317", "Cafetera Express 2000", "Hecho en UE"]
        self.chat_reply: str | Callable[[dict[str, Any]], str] = (
            "Thank you for contacting us. Our help article covers this."
        )
        self.finish_reason = "stop"
        self.image_bytes = _tiny_png()
        self.voices = [
            {"ShortName": "es-ES-ElviraNeural", "Locale": "es-ES", "Gender": "Female"},
            {"ShortName": "en-US-JennyNeural", "Locale": "en-US", "Gender": "Female"},
        ]
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._rate_headers: dict[Route, list[dict[str, str]]] = {r: [] for r in ROUTES}
        self._closed_until: dict[Route, float] = {}
        self.rejected: dict[Route, int] = dict.fromkeys(ROUTES, 0)
        """Requests answered 429 because they came before an announced reset."""

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeAzure:
        app = web.Application(client_max_size=32 * 1024 * 1024,
                              middlewares=[self._rate_limit_headers])
        app.router.add_post("/translate", self._translate)
        app.router.add_get("/languages", self._languages)
        app.router.add_post("/computervision/imageanalysis:analyze", self._analyze)
        app.router.add_post("/openai/deployments/{dep}/chat/completions", self._chat)
        app.router.add_post("/openai/deployments/{dep}/images/generations", self._images)
        app.router.add_get("/openai/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/images/generations", self._images)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/cognitiveservices/voices/list", self._voices)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeAzure:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- scripting --------------------------------------------------------------------------------

    def fail_next(self, route: Route, *failures: Failure) -> None:
        self._script[route].extend(failures)

    def rate_limit_next(self, route: Route, *headers: dict[str, str]) -> None:
        """Each of the next successful answers of ``route`` carries one of ``headers``."""
        self._rate_headers[route].extend(headers)

    def reset(self) -> None:
        self.requests.clear()
        for queue in self._script.values():
            queue.clear()
        for pending in self._rate_headers.values():
            pending.clear()
        self._closed_until.clear()

    def received(self, route: Route) -> list[Recorded]:
        return [r for r in self.requests if r.route == route]

    # -- plumbing ---------------------------------------------------------------------------------

    @web.middleware
    async def _rate_limit_headers(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        # the handler of route "chat" is _chat, and so on
        name = getattr(request.match_info.handler, "__name__", "").removeprefix("_")
        route = next((r for r in ROUTES if r == name), None)
        if route is None or response.status >= 400 or not self._rate_headers[route]:
            return response
        headers = self._rate_headers[route].pop(0)
        response.headers.update(headers)
        lowered = {k.lower(): v for k, v in headers.items()}
        reset = lowered.get("x-ratelimit-reset-requests")
        if lowered.get("x-ratelimit-remaining-requests") == "0" and reset is not None:
            self._closed_until[route] = time.monotonic() + _seconds(reset)
        return response

    async def _record(self, route: Route, request: web.Request) -> Recorded:
        body = await request.read()
        recorded = Recorded(
            route, request.method, request.path, dict(request.query),
            CIMultiDictProxy(CIMultiDict(request.headers)), body,
        )
        self.requests.append(recorded)
        return recorded

    def _authorized(self, request: web.Request, *, required: bool = True) -> bool:
        if self.key is None or not required:
            return True
        headers = request.headers
        if self.key in (headers.get("Ocp-Apim-Subscription-Key"), headers.get("api-key")):
            return True
        bearer = headers.get("Authorization", "")
        return bearer.startswith("Bearer ") and bearer[7:] in (self.key, *self.tokens)

    async def _prelude(
        self, route: Route, request: web.Request, *, auth: bool = True
    ) -> tuple[Recorded, web.StreamResponse | None]:
        """Record; then a scripted failure or the gateway's 401 if there is one."""
        recorded = await self._record(route, request)
        closed = self._closed_until.get(route, 0.0) - time.monotonic()
        if closed > 0:  # it said nothing is left until the reset, and means it
            self.rejected[route] += 1
            failure = throttle(retry_after=str(max(1, round(closed))))
            return recorded, web.json_response(
                failure.body, status=failure.status, headers=failure.headers
            )
        if self._script[route]:
            failure = self._script[route].pop(0)
            if failure.drop:
                assert request.transport is not None
                request.transport.close()
                raise web.HTTPInternalServerError()  # never delivered: the socket is closed
            return recorded, web.json_response(
                failure.body, status=failure.status, headers=failure.headers
            )
        if not self._authorized(request, required=auth):
            if route in ("translate", "languages"):
                body: dict[str, Any] = {"error": {"code": 401000, "message": "The request is not "
                                        "authorized because credentials are missing or invalid."}}
            else:
                body = unauthorized().body or {}
            return recorded, web.json_response(body, status=401)
        return recorded, None

    # -- Translator -------------------------------------------------------------------------------

    async def _translate(self, request: web.Request) -> web.StreamResponse:
        recorded, early = await self._prelude("translate", request)
        if early is not None:
            return early
        if recorded.query.get("api-version") != "2026-06-06":
            return web.json_response({"error": {"code": 400021, "message": "The API version "
                                      "parameter is missing or invalid."}}, status=400)
        value = []
        for item in recorded.json()["inputs"]:
            text = item["text"]
            source = item.get("language")
            translations = []
            for target in item["targets"]:
                language = target["language"]
                if language not in self.languages:
                    return web.json_response(
                        {"error": {"code": 400036, "message": "The target language is not valid."}},
                        status=400,
                    )
                src = source or guess_language(text)
                translated = self.translations.get((text, language), f"[{src}>{language}] {text}")
                translations.append(
                    {"language": language, "text": translated, "sourceCharacters": len(text)}
                )
            entry: dict[str, Any] = {"translations": translations}
            if source is None:
                entry["detectedLanguage"] = {"language": guess_language(text), "score": 0.97}
            value.append(entry)
        return web.json_response({"value": value})

    async def _languages(self, request: web.Request) -> web.StreamResponse:
        # the real endpoint needs no key
        _, early = await self._prelude("languages", request, auth=False)
        if early is not None:
            return early
        return web.json_response({"translation": {
            code: {"name": code, "nativeName": code, "dir": "ltr", "models": ["general"]}
            for code in self.languages
        }})

    # -- Image Analysis ---------------------------------------------------------------------------

    async def _analyze(self, request: web.Request) -> web.StreamResponse:
        recorded, early = await self._prelude("analyze", request)
        if early is not None:
            return early
        try:
            with Image.open(io.BytesIO(recorded.body)) as image:
                width, height = image.size
        except Exception:
            return web.json_response(bad_request("InvalidRequest", "Image format is not valid.",
                                                 "InvalidImageFormat").body, status=400)
        if width < 50 or height < 50:
            return web.json_response(bad_request("InvalidRequest", "Image size is too small.",
                                                 "InvalidImageSize").body, status=400)
        features = recorded.query.get("features", "").split(",")
        body: dict[str, Any] = {
            "modelVersion": "2023-10-01",
            "metadata": {"width": width, "height": height},
        }
        if "caption" in features:
            body["captionResult"] = {"text": self.caption, "confidence": self.caption_confidence}
        if "tags" in features:
            body["tagsResult"] = {"values": [{"name": n, "confidence": c} for n, c in self.tags]}
        if "objects" in features:
            body["objectsResult"] = {"values": [
                {"boundingBox": {"x": 10, "y": 10, "w": 30, "h": 30},
                 "tags": [{"name": name, "confidence": 0.8}]}
                for name in self.objects
            ]}
        if "read" in features:
            lines = []
            for i, text in enumerate(self.ocr_lines):
                y = 20 + 30 * i
                polygon = [{"x": 10, "y": y}, {"x": 200, "y": y}, {"x": 200, "y": y + 20},
                           {"x": 10, "y": y + 20}]
                words = [{"text": w, "boundingPolygon": polygon, "confidence": 0.9 + 0.01 * (j % 5)}
                         for j, w in enumerate(text.split())]
                lines.append({"text": text, "boundingPolygon": polygon, "words": words})
            body["readResult"] = {"blocks": [{"lines": lines}]}
        return web.json_response(body)

    # -- (Azure) OpenAI ---------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        recorded, early = await self._prelude("chat", request)
        if early is not None:
            return early
        payload = recorded.json()
        reply = self.chat_reply(payload) if callable(self.chat_reply) else self.chat_reply
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in payload["messages"])
        model = request.match_info.get("dep") or payload["model"]
        body: dict[str, Any] = {
            "id": f"chatcmpl-fake{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply},
                "finish_reason": self.finish_reason,
            }],
            "usage": {"prompt_tokens": prompt_words, "completion_tokens": len(reply.split()),
                      "total_tokens": prompt_words + len(reply.split())},
        }
        if "dep" in request.match_info:
            body["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": {}}]
        return web.json_response(body)

    async def _images(self, request: web.Request) -> web.StreamResponse:
        recorded, early = await self._prelude("images", request)
        if early is not None:
            return early
        payload = recorded.json()
        n = int(payload.get("n") or 1)
        data = [{"b64_json": base64.b64encode(self.image_bytes).decode(),
                 "revised_prompt": f"A picture of {payload['prompt']}"} for _ in range(n)]
        return web.json_response({"created": int(time.time()), "data": data})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._prelude("models", request)
        if early is not None:
            return early
        return web.json_response({"object": "list", "data": [
            {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
        ]})

    # -- Speech (REST part) -----------------------------------------------------------------------

    async def _voices(self, request: web.Request) -> web.StreamResponse:
        _, early = await self._prelude("voices", request)
        if early is not None:
            return early
        return web.json_response(self.voices)
