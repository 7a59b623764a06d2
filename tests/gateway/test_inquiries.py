"""Inquiries in over HTTP: accepted and published once, followed by status and events, each
tenant confined to its own, and every bad input answered with a 4xx that says what to fix."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from events import InquiryReceived, ResponseReady
from service.gateway import GatewaySettings
from service.gateway.fetch import UrlFetcher, address_problem, host_allowed
from service.testing import fake_settings
from service.wiring import Service
from tests.gateway.conftest import (
    Gateway,
    gateway_for,
    inquiry_body,
    noisy_png,
    png,
    serve_app,
)

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= set(body)
    text = json.dumps(body)
    for needle in needles:
        assert needle in text, f"{needle!r} not in {text}"
    return body


async def published(gw: Gateway) -> list[InquiryReceived]:
    await gw.service.settle()
    sagas = await gw.service.store.list_sagas(limit=1000)
    return [s.start.load() for s in sagas]  # type: ignore[misc]


class TestSubmit:
    async def test_accepted_published_and_answered(self, gateway: Gateway) -> None:
        """A JSON inquiry gets 202 with its id and status URL; the saga runs to a
        ResponseReady, and the status and events endpoints show it."""
        response = await gateway.post()
        assert response.status_code == 202, response.text
        accepted = response.json()
        inquiry_id = accepted["inquiry_id"]
        assert accepted["status_url"] == f"http://gateway/v1/inquiries/{inquiry_id}"
        assert response.headers["location"] == accepted["status_url"]
        assert accepted["stream_url"].endswith(f"/v1/responses/stream?inquiry_id={inquiry_id}")

        done = await gateway.service.wait(inquiry_id, timeout=10)
        assert isinstance(done.data, ResponseReady)
        assert done.tenant == "acme"
        await gateway.service.settle()

        status = await gateway.client.get(f"/v1/inquiries/{inquiry_id}", headers=gateway.auth())
        assert status.status_code == 200
        summary = status.json()
        assert summary["status"] == "completed"
        assert summary["tenant"] == "acme"
        assert summary["outcome"]["type"] == "ResponseReady"
        assert summary["outcome"]["data"]["text"] == done.data.text
        steps = {s["step"]: s["outcome"] for s in summary["steps"]}
        assert steps["respond"] == "succeeded"
        from service.timeline import saga_summary

        assert summary == saga_summary(await gateway.service.saga(inquiry_id))

        events = await gateway.client.get(f"/v1/inquiries/{inquiry_id}/events",
                                          headers=gateway.auth())
        assert events.status_code == 200
        types = [e["type"] for e in events.json()["events"]]
        assert types[0] == "InquiryReceived"
        assert types[-1] == "ResponseReady"
        assert "GenerateResponseRequested" in types

    async def test_status_before_the_saga_starts(self, tmp_path: Path) -> None:
        """The status URL answers at once, before a coordinator has started the saga (here
        there is none): status 'accepted'."""
        client_only = Service(fake_settings(tmp_path), coordinator=False, actors=[])
        async with gateway_for(tmp_path, service=client_only) as gw:
            response = await gw.post()
            inquiry_id = response.json()["inquiry_id"]
            status = await gw.client.get(f"/v1/inquiries/{inquiry_id}", headers=gw.auth())
            assert status.status_code == 200, status.text
            assert status.json()["status"] == "accepted"
            assert status.json()["steps"] == []
            other = await gw.client.get(f"/v1/inquiries/{inquiry_id}", headers=gw.auth("globex"))
            assert other.status_code == 404

    async def test_multipart_upload_is_stored_and_analyzed(self, gateway: Gateway) -> None:
        """A multipart inquiry with an image upload: the blob is stored, and the saga
        analyses it."""
        image = png()
        response = await gateway.client.post(
            "/v1/inquiries", headers=gateway.auth(),
            data={"inquiry": json.dumps(inquiry_body())},
            files=[("attachments", ("photo.png", image, "image/png"))],
        )
        assert response.status_code == 202, response.text
        inquiry_id = response.json()["inquiry_id"]
        await gateway.service.wait(inquiry_id, timeout=10)
        state = await gateway.service.saga(inquiry_id)
        inquiry = state.start.load()
        assert isinstance(inquiry, InquiryReceived)
        (ref,) = inquiry.attachments
        assert ref.media_type == "image/png"
        assert ref.filename == "photo.png"
        assert await gateway.service.blobs.get(ref) == image
        assert "analyze_image[0]" in state.steps

    async def test_api_key_in_x_api_key_header(self, gateway: Gateway) -> None:
        response = await gateway.client.post("/v1/inquiries", json=inquiry_body(),
                                             headers={"X-API-Key": gateway.keys["acme"]})
        assert response.status_code == 202


class TestIdempotency:
    async def test_same_key_twice_starts_one_saga(self, gateway: Gateway) -> None:
        """A retried webhook (same Idempotency-Key, same body) gets the same inquiry id and
        publishes once."""
        headers = {"Idempotency-Key": "ticket-1234"}
        first = await gateway.post(headers=headers)
        second = await gateway.post(headers=headers)
        assert first.status_code == second.status_code == 202
        assert first.json()["inquiry_id"] == second.json()["inquiry_id"]
        assert second.headers["idempotent-replayed"] == "true"
        assert second.json()["replayed"] is True
        assert len(await published(gateway)) == 1

    async def test_concurrent_retries_start_one_saga(self, gateway: Gateway) -> None:
        headers = {"Idempotency-Key": "burst"}
        responses = await asyncio.gather(*(gateway.post(headers=headers) for _ in range(5)))
        ids = {r.json()["inquiry_id"] for r in responses if r.status_code == 202}
        assert len(ids) == 1
        assert {r.status_code for r in responses} <= {202, 409}
        assert len(await published(gateway)) == 1

    async def test_same_key_other_body_is_refused(self, gateway: Gateway) -> None:
        headers = {"Idempotency-Key": "ticket-9"}
        assert (await gateway.post(headers=headers)).status_code == 202
        other = await gateway.post(inquiry_body(message="something else"), headers=headers)
        assert_problem(other, 422, "idempotency-key-reused", "different request")
        assert len(await published(gateway)) == 1

    async def test_keys_are_per_tenant(self, gateway: Gateway) -> None:
        headers = {"Idempotency-Key": "shared"}
        a = await gateway.post(headers=headers)
        b = await gateway.post(headers=headers, tenant="globex")
        assert a.json()["inquiry_id"] != b.json()["inquiry_id"]
        assert len(await published(gateway)) == 2

    async def test_failed_request_does_not_use_up_the_key(self, gateway: Gateway) -> None:
        """A request refused with a 4xx leaves its key free for a corrected retry."""
        headers = {"Idempotency-Key": "fix-me"}
        bad = await gateway.post(
            inquiry_body(attachments=[{"url": "http://127.0.0.1/x.png"}]), headers=headers
        )
        assert bad.status_code == 422
        assert (await gateway.post(headers=headers)).status_code == 202


class TestTenants:
    async def test_other_tenants_inquiry_is_not_found(self, gateway: Gateway) -> None:
        """globex's key gets 404 (not 403) for acme's inquiry, and its events."""
        inquiry_id = (await gateway.post()).json()["inquiry_id"]
        await gateway.service.wait(inquiry_id, timeout=10)
        for path in (f"/v1/inquiries/{inquiry_id}", f"/v1/inquiries/{inquiry_id}/events"):
            theirs = await gateway.client.get(path, headers=gateway.auth("globex"))
            assert_problem(theirs, 404, "no inquiry")
            missing = await gateway.client.get(path.replace(inquiry_id, "inq-nope"),
                                               headers=gateway.auth("globex"))
            assert missing.json()["detail"] == theirs.json()["detail"].replace(
                inquiry_id, "inq-nope")
            assert (await gateway.client.get(path, headers=gateway.auth())).status_code == 200

    @pytest.mark.parametrize("headers", [
        {}, {"Authorization": "Bearer aiapps_0123456789ab_" + "x" * 43},
        {"Authorization": "Bearer nonsense"}, {"X-API-Key": ""}, {"Authorization": "Basic Zm9v"},
    ])
    async def test_missing_or_wrong_key_is_401(
        self, gateway: Gateway, headers: dict[str, str]
    ) -> None:
        for method, path in (("POST", "/v1/inquiries"), ("GET", "/v1/inquiries/x"),
                             ("GET", "/v1/inquiries/x/events"),
                             ("GET", "/v1/responses/stream")):
            response = await gateway.client.request(method, path, headers=headers,
                                                    json=inquiry_body())
            body = assert_problem(response, 401, "API key")
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert body["type"] == "/problems/unauthorized"

    async def test_revoked_key_is_401(self, gateway: Gateway) -> None:
        from datetime import UTC, datetime

        key = gateway.keys["acme"]
        await gateway.service.store.revoke_api_key(key.split("_")[1], datetime.now(UTC))
        response = await gateway.post()
        assert_problem(response, 401, "revoked")
        assert 'error="invalid_token"' in response.headers["www-authenticate"]

    async def test_key_with_right_id_and_wrong_secret_is_401(self, gateway: Gateway) -> None:
        key = gateway.keys["acme"]
        forged = key[:-1] + ("A" if key[-1] != "A" else "B")
        response = await gateway.client.post("/v1/inquiries", json=inquiry_body(),
                                             headers={"Authorization": f"Bearer {forged}"})
        assert_problem(response, 401)


class TestBadInput:
    async def test_malformed_json(self, gateway: Gateway) -> None:
        response = await gateway.client.post(
            "/v1/inquiries", content=b'{"customer": {', headers={
                **gateway.auth(), "Content-Type": "application/json"})
        assert_problem(response, 400, "not valid JSON", "line 1")

    async def test_wrong_types_list_each_field(self, gateway: Gateway) -> None:
        response = await gateway.post({"customer": "ana", "message": 42, "voice_reply": "yes",
                                       "language": "English", "colour": "red"})
        body = assert_problem(response, 422)
        fields = {e["field"]: e for e in body["errors"]}
        assert set(fields) == {"customer", "message", "voice_reply", "language", "colour"}
        assert fields["message"]["pointer"] == "/message"
        assert "remove it" in fields["colour"]["detail"]
        assert "language code" in fields["language"]["detail"]

    async def test_missing_fields(self, gateway: Gateway) -> None:
        body = assert_problem(await gateway.post({"customer": {"id": "c"}}), 422,
                              "message: required")
        assert body["errors"][0]["pointer"] == "/message"

    async def test_not_an_object(self, gateway: Gateway) -> None:
        response = await gateway.client.post("/v1/inquiries", json=[1, 2],
                                             headers=gateway.auth())
        assert_problem(response, 422, "JSON object")

    async def test_unsupported_content_type(self, gateway: Gateway) -> None:
        response = await gateway.client.post("/v1/inquiries", content=b"hello",
                                             headers={**gateway.auth(),
                                                      "Content-Type": "text/plain"})
        assert_problem(response, 415, "application/json", "multipart/form-data")

    async def test_oversize_upload(self, tmp_path: Path) -> None:
        settings = GatewaySettings(max_upload_bytes=1000)
        async with gateway_for(tmp_path, settings) as gw:
            response = await gw.client.post(
                "/v1/inquiries", headers=gw.auth(), data={"inquiry": json.dumps(inquiry_body())},
                files=[("attachments", ("big.png", noisy_png(), "image/png"))],
            )
            assert_problem(response, 413, "big.png", "at most 1000")

    async def test_oversize_body(self, tmp_path: Path) -> None:
        settings = GatewaySettings(max_upload_bytes=1000, max_attachments=1,
                                   max_json_bytes=2048)
        async with gateway_for(tmp_path, settings) as gw:
            response = await gw.client.post(
                "/v1/inquiries", headers={**gw.auth(), "Content-Type": "application/json"},
                content=b"{" + b" " * 5000 + b"}",
            )
            assert_problem(response, 413)

            head = (
                b"--b\r\nContent-Disposition: form-data; name=\"inquiry\"\r\n\r\n"
                + json.dumps(inquiry_body()).encode()
                + b"\r\n--b\r\nContent-Disposition: form-data; name=\"attachments\"; "
                b"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n"
            )

            async def chunks() -> AsyncIterator[bytes]:
                yield head
                for _ in range(200):  # no Content-Length: counted as it arrives
                    yield b"x" * 1024

            headers = {**gw.auth(), "Content-Type": "multipart/form-data; boundary=b"}
            streamed = await gw.client.post("/v1/inquiries", content=chunks(), headers=headers)
            assert_problem(streamed, 413, "larger than")
            declared = await gw.client.post("/v1/inquiries", content=head + b"x" * 200_000,
                                            headers=headers)
            assert_problem(declared, 413, "200")

    async def test_non_image_upload(self, gateway: Gateway) -> None:
        """A text file declared as image/png is judged by its content and refused."""
        response = await gateway.client.post(
            "/v1/inquiries", headers=gateway.auth(), data={"inquiry": json.dumps(inquiry_body())},
            files=[("attachments", ("notes.png", b"just some notes", "image/png"))],
        )
        body = assert_problem(response, 415, "notes.png", "text/plain", "image/png")
        assert body["errors"][0]["field"] == "attachments"

    async def test_multipart_without_inquiry_part(self, gateway: Gateway) -> None:
        response = await gateway.client.post(
            "/v1/inquiries", headers=gateway.auth(),
            files=[("attachments", ("p.png", png(), "image/png"))],
        )
        assert_problem(response, 422, "'inquiry' part")

    async def test_multipart_with_bad_inquiry_json(self, gateway: Gateway) -> None:
        response = await gateway.client.post(
            "/v1/inquiries", headers=gateway.auth(), data={"inquiry": "{nope"},
        )
        assert_problem(response, 400, "'inquiry' part is not valid JSON")

    @pytest.mark.parametrize(("url", "needle"), [
        ("http://10.1.2.3/photo.png", "not allowed"),
        ("ftp://images.example.com/photo.png", "http://"),
        ("not a url", "http://"),
    ])
    async def test_url_not_fetched(self, gateway: Gateway, url: str, needle: str) -> None:
        response = await gateway.post(inquiry_body(attachments=[{"url": url}]))
        body = assert_problem(response, 422, needle)
        assert body["errors"][0]["field"] == "attachments.0.url"

    async def test_url_to_private_address(self, tmp_path: Path) -> None:
        """Allowed hosts that are, or resolve to, private addresses are refused before any
        connection is made."""

        async def resolver(host: str, port: int) -> list[str]:
            return {"images.example.com": ["192.168.1.20"],
                    "cdn.example.com": ["93.184.215.14", "127.0.0.1"]}[host]

        settings = GatewaySettings(allowed_url_hosts=["*.example.com", "127.0.0.1", "[::1]",
                                                      "169.254.169.254"])
        fetcher = UrlFetcher(settings, resolver=resolver)
        async with gateway_for(tmp_path, settings, fetcher=fetcher) as gw:
            for url, needle in (
                ("http://images.example.com/a.png", "a private address (192.168.1.20)"),
                ("http://cdn.example.com/a.png", "a loopback address (127.0.0.1)"),
                ("http://127.0.0.1:9/a.png", "a loopback address"),
                ("http://169.254.169.254/latest/meta-data", "link-local"),
            ):
                response = await gw.post(inquiry_body(attachments=[{"url": url}]))
                assert_problem(response, 422, needle, "public addresses")
            assert await published(gw) == []


class TestFetching:
    """Attachment URLs fetched from a loopback image server (private addresses allowed)."""

    @pytest.fixture
    async def images(self) -> AsyncIterator[tuple[str, list[str]]]:
        app = FastAPI()
        hosts: list[str] = []

        @app.get("/photo.png")
        async def photo(request: Request) -> Response:
            hosts.append(request.headers["host"])
            return Response(png("blue"), media_type="image/png")

        @app.get("/notes.txt")
        async def notes() -> Response:
            return Response(b"hello", media_type="text/plain")

        @app.get("/big.png")
        async def big() -> Response:
            return Response(noisy_png(), media_type="image/png")

        @app.get("/endless.png")
        async def endless() -> StreamingResponse:
            async def chunks() -> AsyncIterator[bytes]:
                yield noisy_png(100)
                for _ in range(100):
                    yield b"x" * 1000

            return StreamingResponse(chunks(), media_type="image/png")

        @app.get("/slow.png")
        async def slow() -> Response:
            await asyncio.sleep(3)
            return Response(png(), media_type="image/png")

        @app.get("/moved")
        async def moved() -> RedirectResponse:
            return RedirectResponse("/photo.png")

        @app.get("/away")
        async def away() -> RedirectResponse:
            return RedirectResponse("http://169.254.169.254/latest")

        async with serve_app(app) as url:
            yield url, hosts

    def settings(self, **overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "allowed_url_hosts": ["127.0.0.1", "images.test", "169.254.169.254"],
            "allow_private_urls": True, "fetch_timeout": 1.0, "fetch_max_bytes": 2000,
        }
        return GatewaySettings(**{**values, **overrides})

    async def test_fetched_stored_and_analyzed(
        self, tmp_path: Path, images: tuple[str, list[str]]
    ) -> None:
        url, _ = images
        async with gateway_for(tmp_path, self.settings()) as gw:
            response = await gw.post(inquiry_body(attachments=[
                {"url": f"{url}/photo.png"}, {"url": f"{url}/moved", "filename": "m.png"}]))
            assert response.status_code == 202, response.text
            inquiry_id = response.json()["inquiry_id"]
            await gw.service.wait(inquiry_id, timeout=10)
            inquiry = (await gw.service.saga(inquiry_id)).start.load()
            assert isinstance(inquiry, InquiryReceived)
            assert [a.filename for a in inquiry.attachments] == ["photo.png", "m.png"]
            assert all(a.media_type == "image/png" for a in inquiry.attachments)
            assert await gw.service.blobs.get(inquiry.attachments[0]) == png("blue")

    async def test_connects_to_the_checked_address(
        self, tmp_path: Path, images: tuple[str, list[str]]
    ) -> None:
        """The name is resolved once and the connection goes to that address, with the
        original Host header: a second DNS answer cannot redirect it (DNS rebinding)."""
        url, hosts = images
        port = url.rsplit(":", 1)[1]
        answers = iter([["127.0.0.1"], ["10.9.9.9"]])

        async def resolver(host: str, _: int) -> list[str]:
            return next(answers)

        fetcher = UrlFetcher(self.settings(), resolver=resolver)
        try:
            fetched = await fetcher.fetch(f"http://images.test:{port}/photo.png")
        finally:
            await fetcher.aclose()
        assert fetched.media_type == "image/png"
        assert hosts == [f"images.test:{port}"]

    @pytest.mark.parametrize(("path", "status", "needle"), [
        ("/notes.txt", 422, "text/plain"),
        ("/big.png", 422, "5008 bytes; at most 2000 bytes"),
        ("/endless.png", 422, "larger than 2000 bytes"),
        ("/slow.png", 422, "within 1 s"),
        ("/missing.png", 422, "answered 404"),
    ])
    async def test_refused(self, tmp_path: Path, images: tuple[str, list[str]], path: str,
                           status: int, needle: str) -> None:
        url, _ = images
        async with gateway_for(tmp_path, self.settings()) as gw:
            response = await gw.post(inquiry_body(attachments=[{"url": url + path}]))
            assert_problem(response, status, needle)

    async def test_redirect_target_is_checked(
        self, tmp_path: Path, images: tuple[str, list[str]]
    ) -> None:
        url, _ = images
        settings = self.settings(allowed_url_hosts=["127.0.0.1"])
        async with gateway_for(tmp_path, settings) as gw:
            response = await gw.post(inquiry_body(attachments=[{"url": f"{url}/away"}]))
            assert_problem(response, 422, "'169.254.169.254' is not allowed")


class TestRules:
    def test_host_patterns(self) -> None:
        assert host_allowed("cdn.example.com", ["*.example.com"])
        assert not host_allowed("example.com", ["*.example.com"])
        assert not host_allowed("evil-example.com", ["*.example.com"])
        assert host_allowed("IMAGES.test.", ["images.test"])
        assert host_allowed("anything.org", ["*"])
        assert not host_allowed("anything.org", [])

    @pytest.mark.parametrize(("address", "refused"), [
        ("8.8.8.8", None), ("127.0.0.2", "loopback"), ("10.0.0.1", "private"),
        ("172.16.5.4", "private"), ("192.168.0.1", "private"), ("169.254.169.254", "link-local"),
        ("::1", "loopback"), ("fe80::1", "link-local"), ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"), ("100.64.0.1", "non-public"),
        ("224.0.0.1", "multicast"), ("2606:4700::1111", None),
    ])
    def test_addresses(self, address: str, refused: str | None) -> None:
        problem = address_problem(address)
        if refused is None:
            assert problem is None
        else:
            assert problem is not None
            assert refused in problem
