"""The gateway's commands: API keys, the AsyncAPI document, and ``serve`` running the whole
embedded service behind HTTP in one process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from saga.sqlite_store import SqliteSagaStore
from service.gateway.auth import verify_api_key
from service.gateway_cli import app
from service.settings import REPO_ROOT
from tests.gateway.conftest import bearer, inquiry_body, sse

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("AIAPPS_STORE", f"sqlite:///{tmp_path}/aiapps.db")
    monkeypatch.setenv("AIAPPS_BLOBS", str(tmp_path / "blobs"))
    for service in ("language", "vision", "translation", "responder", "speech"):
        monkeypatch.setenv(f"AIAPPS_PROVIDERS__{service.upper()}", "fake")
    return tmp_path


def create_key(tenant: str = "acme") -> str:
    result = runner.invoke(app, ["keys", "create", "--tenant", tenant])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("aiapps_")
    return key


class TestKeys:
    def test_create_list_revoke(self, env: Path) -> None:
        """A created key is printed once and verifies against the store; the list shows ids
        and tenants, never keys; a revoked key no longer verifies."""
        key = create_key("acme")
        create_key("globex")

        async def check() -> str | None:
            store = SqliteSagaStore(env / "aiapps.db")
            await store.open()
            try:
                caller = await verify_api_key(store, key)
                return caller.tenant if caller else None
            finally:
                await store.close()

        assert asyncio.run(check()) == "acme"
        listed = runner.invoke(app, ["keys", "list", "--json"])
        assert listed.exit_code == 0
        keys = json.loads(listed.stdout)
        assert [k["tenant"] for k in keys] == ["acme", "globex"]
        assert all(k["active"] for k in keys)
        assert key not in listed.stdout
        assert key.split("_", 2)[2] not in listed.stdout
        only = json.loads(runner.invoke(app, ["keys", "list", "--json", "--tenant", "globex"])
                          .stdout)
        assert [k["tenant"] for k in only] == ["globex"]

        key_id = keys[0]["key_id"]
        revoked = runner.invoke(app, ["keys", "revoke", key_id])
        assert revoked.exit_code == 0, revoked.output
        assert asyncio.run(check()) is None
        again = runner.invoke(app, ["keys", "revoke", key_id])
        assert again.exit_code == 1
        assert "no active key" in again.output
        table = runner.invoke(app, ["keys", "list"])
        assert "revoked" in table.stdout

    def test_create_needs_a_lasting_store_and_a_good_tenant(
        self, env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        bad = runner.invoke(app, ["keys", "create", "--tenant", "no spaces!"])
        assert bad.exit_code == 2
        assert "tenant" in bad.output
        monkeypatch.setenv("AIAPPS_STORE", "memory://")
        memory = runner.invoke(app, ["keys", "create", "--tenant", "acme"])
        assert memory.exit_code == 2
        assert "AIAPPS_STORE" in memory.output


def test_asyncapi_command(env: Path) -> None:
    printed = runner.invoke(app, ["asyncapi"])
    assert printed.exit_code == 0
    document = json.loads(printed.stdout)
    assert document["asyncapi"] == "3.0.0"
    assert "ResponseReady" in document["channels"]
    written = runner.invoke(app, ["asyncapi", "--output", str(env / "bus.json")])
    assert written.exit_code == 0
    assert json.loads((env / "bus.json").read_text()) == document


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
async def test_serve_runs_the_whole_service(env: Path) -> None:
    """`serve --port P` on the embedded default: one process takes an inquiry over HTTP,
    runs the saga with its own coordinator and actors, streams the response, and stops
    cleanly on SIGTERM."""
    key = await asyncio.to_thread(create_key, "acme")  # the command runs its own loop
    port = free_port()
    log = env / "serve.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.gateway_cli", "serve", "--port", str(port),
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=env, stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            async with asyncio.timeout(60):
                while True:
                    assert proc.returncode is None, log.read_text()
                    try:
                        if (await client.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
            async with sse(client, key) as stream:
                posted = await client.post("/v1/inquiries", json=inquiry_body(),
                                           headers=bearer(key))
                assert posted.status_code == 202, posted.text
                event = await stream.next(30)
            inquiry_id = posted.json()["inquiry_id"]
            assert event.event == "ResponseReady"
            assert event.json()["correlationid"] == inquiry_id
            status = await client.get(f"/v1/inquiries/{inquiry_id}", headers=bearer(key))
            assert status.json()["status"] == "completed"
            # a chatbot still listening when the service stops: its stream is ended at once
            # (it reconnects elsewhere with Last-Event-ID), the stop does not wait for it
            async with sse(client, key) as listening:
                proc.send_signal(signal.SIGTERM)
                await listening.ended(10)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError("serve did not stop within 30 s of SIGTERM") from None
    assert code == 0, log.read_text()
