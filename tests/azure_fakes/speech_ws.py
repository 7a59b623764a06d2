"""A loopback fake of the Azure Speech text-to-speech websocket, for the real Speech SDK.

What the SDK (azure-cognitiveservices-speech 1.53.0) does, and the fake answers:

1. ``GET /cognitiveservices/websocket/v1`` upgrade with subprotocol ``USP`` and the key in
   ``Ocp-Apim-Subscription-Key`` (or ``Authorization: Bearer``). The fake can refuse the
   handshake with a status (401, 429, 500 …): the SDK reports it as ``reason=Canceled`` with
   ``cancellation_details.error_code`` (``AuthenticationFailure``, ``TooManyRequests``,
   ``ServiceError`` …), it raises nothing.
2. Text frames ``Path: speech.config``, ``Path: synthesis.context`` (the output format, here
   ``raw-16khz-16bit-mono-pcm``), ``Path: ssml`` (the SSML), later ``Path: telemetry``. Each text
   frame is ``header: value`` lines, a blank line, then the body.
3. The fake answers ``Path:turn.start``, binary audio frames (2-byte big-endian header length,
   ``Path:audio`` headers, raw PCM), then ``Path:turn.end``. The SDK adds the RIFF header.

It can also close the socket after the SSML with a websocket close code (1007 → ``BadRequest``,
1011 → ``ServiceError``) or drop the TCP connection (→ ``ConnectionFailure``).

``GET /cognitiveservices/voices/list`` is served too (the REST call ``providers check`` uses).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy

SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Frame:
    """One text frame the SDK sent."""

    path: str
    headers: dict[str, str]
    body: str


@dataclass
class Session:
    """One websocket connection: the handshake headers and the text frames received."""

    path: str
    headers: CIMultiDictProxy[str]
    protocol: str | None = None
    frames: list[Frame] = field(default_factory=list)

    def frame(self, path: str) -> Frame:
        return next(f for f in self.frames if f.path == path)


@dataclass(frozen=True)
class SpeechFailure:
    handshake_status: int | None = None
    close_code: int | None = None
    close_reason: str = ""
    drop: bool = False


def _parse(message: str) -> Frame:
    head, _, body = message.partition("\r\n\r\n")
    headers: dict[str, str] = {}
    for line in head.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return Frame(headers.get("Path", ""), headers, body)


class FakeSpeech:
    """``async with FakeSpeech(key="k") as tts: tts.endpoint`` (a ``ws://`` URL)."""

    def __init__(self, *, key: str | None = None, seconds_per_char: float = 0.06) -> None:
        self.key = key
        self.seconds_per_char = seconds_per_char
        self.sessions: list[Session] = []
        self._script: list[SpeechFailure] = []
        self.voices: list[dict[str, Any]] = [
            {"ShortName": "es-ES-ElviraNeural", "Locale": "es-ES", "Gender": "Female"},
            {"ShortName": "en-US-JennyNeural", "Locale": "en-US", "Gender": "Female"},
        ]
        self.voice_list_requests: list[CIMultiDictProxy[str]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"ws://127.0.0.1:{self.port}/cognitiveservices/websocket/v1"

    @property
    def voices_list_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cognitiveservices/voices/list"

    def ssml(self, index: int = -1) -> str:
        """The SSML of a session (the last by default)."""
        return self.sessions[index].frame("ssml").body

    # -- scripting ------------------------------------------------------------------------------

    def refuse_next(self, status: int) -> None:
        """The next handshake answers ``status`` instead of upgrading."""
        self._script.append(SpeechFailure(handshake_status=status))

    def close_next(self, code: int, reason: str = "") -> None:
        """The next session is closed with a websocket close ``code`` after the SSML."""
        self._script.append(SpeechFailure(close_code=code, close_reason=reason))

    def drop_next(self) -> None:
        """The next session's TCP connection is dropped after the SSML."""
        self._script.append(SpeechFailure(drop=True))

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> FakeSpeech:
        app = web.Application()
        app.router.add_get("/cognitiveservices/websocket/v1", self._websocket)
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

    async def __aenter__(self) -> FakeSpeech:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- handlers -------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if self.key is None:
            return True
        if request.headers.get("Ocp-Apim-Subscription-Key") == self.key:
            return True
        return request.headers.get("Authorization", "").startswith("Bearer ")

    async def _voices(self, request: web.Request) -> web.StreamResponse:
        self.voice_list_requests.append(CIMultiDictProxy(CIMultiDict(request.headers)))
        if not self._authorized(request):
            return web.Response(status=401, text="")
        return web.json_response(self.voices)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        session = Session(request.path_qs, CIMultiDictProxy(CIMultiDict(request.headers)))
        self.sessions.append(session)
        failure = self._script.pop(0) if self._script else SpeechFailure()
        if failure.handshake_status is not None:
            return web.Response(status=failure.handshake_status, text="refused by the fake",
                                headers={"Retry-After": "3"})
        if not self._authorized(request):
            return web.Response(status=401, text="")
        ws = web.WebSocketResponse(protocols=("USP",))
        await ws.prepare(request)
        session.protocol = ws.ws_protocol
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            frame = _parse(message.data)
            session.frames.append(frame)
            if frame.path != "ssml":
                continue
            if failure.drop:
                assert request.transport is not None
                request.transport.close()
                return ws
            if failure.close_code is not None:
                await ws.close(code=failure.close_code, message=failure.close_reason.encode())
                return ws
            await self._speak(ws, frame)
        return ws

    async def _speak(self, ws: web.WebSocketResponse, ssml: Frame) -> None:
        request_id = ssml.headers.get("X-RequestId", "0" * 32)

        def text(path: str, body: str = "") -> str:
            return (f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
                    f"Path:{path}\r\n\r\n{body}")

        await ws.send_str(text("turn.start", '{"context":{"serviceTag":"fake"}}'))
        spoken = len(_visible_text(ssml.body))
        samples = max(int(SAMPLE_RATE * self.seconds_per_char * spoken), SAMPLE_RATE // 10)
        pcm = b"".join(
            struct.pack("<h", int(3000 * math.sin(2 * math.pi * 220 * i / SAMPLE_RATE)))
            for i in range(samples)
        )
        header = f"X-RequestId:{request_id}\r\nContent-Type:audio/x-wav\r\nPath:audio\r\n".encode()
        chunk = SAMPLE_RATE // 5 * 2  # 0.2 s of audio per frame
        for start in range(0, len(pcm), chunk):
            await ws.send_bytes(struct.pack(">H", len(header)) + header + pcm[start:start + chunk])
        await ws.send_str(text("turn.end"))


def _visible_text(ssml: str) -> str:
    out, inside = [], False
    for ch in ssml:
        if ch == "<":
            inside = True
        elif ch == ">":
            inside = False
        elif not inside:
            out.append(ch)
    return "".join(out).strip()
