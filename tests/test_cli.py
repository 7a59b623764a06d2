"""The ai-apps command line, on fake providers and a SQLite store in a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app

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


def write_inquiry(folder: Path, **fields: object) -> Path:
    (folder / "photo.png").write_bytes(b"\x89PNG not really")
    body = {"inquiry_id": "cli-1", "customer": {"id": "c1", "name": "Ana"},
            "message": "Hola, necesito ayuda", "language": "es",
            "attachments": ["photo.png"], "voice_reply": True, **fields}
    path = folder / "inquiry.json"
    path.write_text(json.dumps(body))
    return path


class TestInquiryCommand:
    def test_prints_reply_voice_file_and_timeline(self, env: Path) -> None:
        """`ai-apps inquiry FILE` prints the reply, the voice file's path and the timeline."""
        result = runner.invoke(app, ["inquiry", str(write_inquiry(env))])
        assert result.exit_code == 0, result.output
        assert "ResponseReady" in result.output
        assert "[en>es] Re: [es>en] Hola, necesito ayuda" in result.output
        assert "voice reply:" in result.output
        for step in ("analyze_image[0]", "translate_in", "respond", "translate_out",
                     "synthesize_voice"):
            assert step in result.output

    def test_json_output_and_stored_timeline(self, env: Path) -> None:
        """--json gives the terminal event and timeline; `timeline ID --json` reads the same
        saga back from the store with its events in order."""
        result = runner.invoke(app, ["inquiry", str(write_inquiry(env)), "--json"])
        assert result.exit_code == 0, result.output
        (report,) = json.loads(result.output)
        assert report["type"] == "ResponseReady"
        assert Path(report["voice_file"]).is_file()
        assert next(r["step"] for r in report["timeline"]) == "analyze_image[0]"

        shown = runner.invoke(app, ["timeline", "cli-1", "--json"])
        assert shown.exit_code == 0, shown.output
        summary = json.loads(shown.output)
        assert summary["status"] == "completed"
        types = [e["type"] for e in summary["events"]]
        assert types[0] == "InquiryReceived"
        assert types[-1] == "ResponseReady"
        assert types.count("TranslateTextRequested") == 2

    @pytest.mark.parametrize(
        ("content", "message"),
        [("{oops", "not valid JSON"), ('{"customer": {"id": "c"}}', "invalid inquiry"),
         ('{"customer": {"id": "c"}, "message": "m", "attachments": ["nope.png"]}',
          "attachment not found")],
    )
    def test_bad_inquiry_file_says_what_to_fix(
        self, env: Path, content: str, message: str
    ) -> None:
        """A malformed file exits 2 with a message naming the problem."""
        path = env / "bad.json"
        path.write_text(content)
        result = runner.invoke(app, ["inquiry", str(path)])
        assert result.exit_code == 2
        assert message in result.output

    def test_timeline_of_unknown_saga(self, env: Path) -> None:
        """Asking for a saga that does not exist exits 1 and says so."""
        result = runner.invoke(app, ["timeline", "nope"])
        assert result.exit_code == 1
        assert "no saga 'nope'" in result.output


class TestRoles:
    def test_worker_needs_a_shared_bus(self, env: Path) -> None:
        """`ai-apps worker` on the in-process bus explains that it needs AIAPPS_BUS=amqp://."""
        result = runner.invoke(app, ["worker", "--actors", "translation"])
        assert result.exit_code == 2
        assert "AIAPPS_BUS=amqp://" in result.output

    def test_worker_help_lists_every_actor_and_the_ocr_alias(self, env: Path) -> None:
        """`ai-apps worker --help` names every actor the wiring knows, and `ocr`."""
        from service.wiring import ALL_SERVICES

        result = runner.invoke(app, ["worker", "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        for name in ALL_SERVICES:
            assert name in text
        assert "ocr = vision" in text

    @pytest.mark.parametrize("role", [["worker", "--actors", "ocr,nosuch"], ["coordinator"]])
    def test_configuration_errors_are_one_clean_line(
        self, env: Path, monkeypatch: pytest.MonkeyPatch, role: list[str]
    ) -> None:
        """A role whose configuration is wrong (an unknown actor; a store URL it cannot use)
        prints `error: …` and exits 2, without a traceback."""
        monkeypatch.setenv("AIAPPS_BUS", "amqp://guest:guest@127.0.0.1:1/")
        if role[0] == "coordinator":
            monkeypatch.setenv("AIAPPS_STORE", "mysql://nowhere/db")
        result = runner.invoke(app, role)
        assert result.exit_code == 2, result.output
        assert "error:" in result.output
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        expected = "unknown actors ['nosuch']" if role[0] == "worker" else "AIAPPS_STORE"
        assert expected in " ".join(result.output.split())


@pytest.mark.rabbitmq
class TestWorkerProcess:
    async def test_worker_runs_the_ocr_alias_with_translation(self, tmp_path: Path) -> None:
        """`ai-apps worker --actors ocr,translation`, the issue's own command, runs the vision
        actor (which does the OCR) and the translation actor until SIGTERM, then exits 0."""
        import os

        from service.processes import ProcessGroup

        group = ProcessGroup(
            tmp_path, os.environ.get("AIAPPS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
            f"sqlite:///{tmp_path}/store.db",
        )
        try:
            proc = group.spawn("worker", "worker", "--actors", "ocr,translation")
            await group.wait_consumers("actor.vision", 1, timeout=60)
            await group.wait_consumers("actor.translation", 1, timeout=10)
            assert await group.stop() == []
            assert proc.returncode == 0, group.log("worker")
        finally:
            await group.close()


@pytest.mark.rabbitmq
class TestDeadLetterCommands:
    def test_list_shows_the_oldest_up_to_its_limit_and_redrive_says_what_it_missed(
        self, env: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`dlq list --limit 2` shows the two oldest of three dead letters (and says more
        exist); `dlq redrive` of an unknown id exits 1 saying it was not found."""
        import asyncio
        import os
        import uuid

        from bus import RetryPolicy
        from bus.rabbitmq import RabbitMQTransport
        from events.errors import InvalidPayload
        from service.processes import delete_exchange
        from tests.conformance.transport import dead_letters_eventually, inquiry

        url = os.environ.get("AIAPPS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
        exchange = f"test-{uuid.uuid4().hex[:10]}"

        async def poison() -> None:
            async def handler(env: object) -> None:
                raise InvalidPayload("never valid")

            async with RabbitMQTransport(url, exchange=exchange, retry=RetryPolicy(
                    max_attempts=1)) as t:
                await t.subscribe("saga-coordinator", ["InquiryReceived"], handler,
                                  concurrency=1)
                for i in range(3):
                    await t.publish(inquiry(correlation=f"dead-{i}"))
                    await dead_letters_eventually(t, i + 1)

        monkeypatch.setenv("AIAPPS_BUS", url)
        monkeypatch.setenv("AIAPPS_BUS_EXCHANGE", exchange)
        try:
            asyncio.run(poison())
            listed = runner.invoke(app, ["dlq", "list", "--limit", "2", "--json"])
            assert listed.exit_code == 0, listed.output
            rows = json.loads(listed.stdout)
            assert [r["correlationid"] for r in rows] == ["dead-0", "dead-1"]
            assert "--limit N shows more" in listed.stderr
            missed = runner.invoke(app, ["dlq", "redrive", "no-such-id"])
            assert missed.exit_code == 1
            assert "re-driven: 0" in missed.output
            assert "1 of the ids not found" in missed.output
        finally:
            asyncio.run(delete_exchange(url, exchange))


class TestConsoleWidth:
    def test_piped_output_is_not_cut_to_80_columns(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Printed to a pipe (a CI log), tables get 120 columns; COLUMNS still wins."""
        from service.console import PIPED_WIDTH, console

        monkeypatch.delenv("COLUMNS", raising=False)
        assert console().width == PIPED_WIDTH == 120
        monkeypatch.setenv("COLUMNS", "90")
        assert console().width == 90
