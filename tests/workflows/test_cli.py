"""`campaign` and `inspect` commands, on fake providers, with the example inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.settings import REPO_ROOT
from service.workflow_cli import app
from tests.workflows.harness import inspection_images

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("AIAPPS_STORE", "memory://")
    monkeypatch.setenv("AIAPPS_BLOBS", str(tmp_path / "blobs"))
    monkeypatch.setenv("AIAPPS_IMAGEGEN", "fake")
    monkeypatch.setenv("AIAPPS_FANOUT_LIMIT", "2")
    for service in ("language", "vision", "translation", "responder", "speech"):
        monkeypatch.setenv(f"AIAPPS_PROVIDERS__{service.upper()}", "fake")
    return tmp_path


def test_campaign_example_runs(env: Path) -> None:
    """The example campaign on fakes: the fake OCR reads no wordmark, so every language is
    scored below the threshold and says so; the files are listed; exit 1 is for failures only."""
    result = runner.invoke(app, ["campaign", str(REPO_ROOT / "examples/campaigns/aquapure.json"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["type"] == "CampaignReady"
    languages = {a["language"]: a for a in report["result"]["languages"]}
    assert set(languages) == {"en", "es", "fr", "de"}
    assert "wordmark 'AQUAPURE'" in languages["es"]["failure"]
    assert all(Path(p).is_file() for p in report["files"].values())
    assert "concept 2" in report["files"]


def test_inspect_prints_defects_and_fails(env: Path) -> None:
    """Inspecting the good and the defective photo prints FAIL, the defect's box and the
    documentation per language, and exits 1."""
    files = inspection_images().write_examples(env / "insp")
    criteria = json.loads(files["criteria"].read_text())
    del criteria["expected_label_text"]  # the fake OCR reads nothing
    files["criteria"].write_text(json.dumps(criteria))
    result = runner.invoke(app, ["inspect", str(files["good"]), str(files["defective"]),
                                 "--criteria", str(files["criteria"]), "--languages", "en,es"])
    assert result.exit_code == 1, result.output
    assert "FAIL overall score 0.50" in result.stdout
    assert "major surface at (" in result.stdout
    assert "documentation: es" in result.stdout
    assert "[en>es] Inspection" in result.stdout
    assert "card es image 2 defect 1" in result.stdout


def test_bad_input_says_what_to_fix(env: Path) -> None:
    (env / "bad.json").write_text(json.dumps({"product_name": "x"}))
    result = runner.invoke(app, ["campaign", str(env / "bad.json")])
    assert result.exit_code == 2
    assert "invalid campaign" in result.output



async def test_following_gives_up_at_the_timeout() -> None:
    """When the saga has no outcome in time, follow() raises instead of polling forever."""
    import asyncio
    import io
    from typing import Any, cast

    from rich.console import Console

    from service.workflow_cli import follow

    class Silent:
        class store:
            @staticmethod
            async def load(saga_id: str) -> None:
                return None

        async def wait(self, saga_id: str, timeout: float | None = None) -> Any:
            await asyncio.sleep(timeout or 0)
            raise TimeoutError

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            await follow(cast(Any, Silent()), "s-1", {"x": ("x", ("step",))}, 0.3,
                         console=Console(file=io.StringIO()))
